"""What an operator meets: a served database dropped while its worker
waits on unreachable brokers, and the in-flight gauge during an outage."""

import decimal
import os
import re

import psycopg2
import pytest
import yaml

from harness import PgCluster, consume_all, wait_until
from test_faults import all_brokers, in_flight
from workload import id_header


def sent(pg):
    return pg.scalar("SELECT (kafka_stats()->'kafka_producer'->>'sent')::bigint")


def test_drop_database_force_while_brokers_are_down(kafka):
    """With every broker down, 1,000 messages sit in librdkafka: kafka_stats()
    shows them in flight, and DROP DATABASE ... WITH (FORCE) of the served
    database succeeds at once: the worker leaves without its shutdown wait,
    which would outlast DROP's own 5 s wait for the sessions it ended."""
    cluster = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'",
                         "kafka.database": "'dropme'",
                         "kafka.shutdown_timeout_ms": "10000"})
    try:
        cluster.query("CREATE DATABASE dropme")
        cluster.dbname = "dropme"
        cluster.query("CREATE EXTENSION kafka_producer")
        cluster.wait_for_worker()
        # a producer that starts reconciles with Kafka before it sends: let it
        first = cluster.scalar("SELECT kafka_send('dropme', 'first')")
        assert cluster.scalar("SELECT kafka_wait(%s, '60 seconds')", (first,)) == "delivered"
        all_brokers(kafka, "down")
        cluster.query("SELECT count(kafka_send('dropme', i::text)) FROM generate_series(1, 1000) i")
        wait_until(lambda: sent(cluster) == 1001, 30, what="the messages to be handed over")
        # no report comes while the brokers are down: the gauge follows the handover
        assert in_flight(cluster) == 1000
        cluster.dbname = "postgres"
        cluster.query("DROP DATABASE dropme WITH (FORCE)")
        assert "kafka_producer worker shutting down with 1000 messages in flight" in \
            cluster.log_text()
    finally:
        all_brokers(kafka, "up")
        cluster.destroy()


def health(pg, column):
    return pg.scalar(f"SELECT {column} FROM kafka.health")


def test_worker_vacuums_the_queue_tables(pg):
    """With autovacuum off for them, the worker VACUUMs kafka.outbox and
    kafka.outbox_batch itself once it has deleted 20,000 of their rows:
    their dead rows do not pile up between autovacuum's visits."""
    tables = "('outbox', 'outbox_batch')"
    for table in ("outbox", "outbox_batch"):
        pg.query(f"ALTER TABLE kafka.{table} SET (autovacuum_enabled = false)")
    try:
        before = pg.query(f"SELECT relname, vacuum_count FROM pg_stat_user_tables "
                          f"WHERE schemaname = 'kafka' AND relname IN {tables} ORDER BY 1")
        # with headers, a message is a kafka.outbox row of its own
        pg.query("SELECT count(kafka_send('ops_vacuum', i::text, headers => '{\"h\": \"1\"}')) "
                 "FROM generate_series(1, 25000) i")
        pg.wait_until_final("ops_vacuum")

        def vacuumed():
            after = pg.query(f"SELECT relname, vacuum_count FROM pg_stat_user_tables "
                             f"WHERE schemaname = 'kafka' AND relname IN {tables} ORDER BY 1")
            return all(a[1] > b[1] for a, b in zip(after, before))
        wait_until(vacuumed, 30, what="the worker to vacuum the queue tables")
        # the statistics of deletes may arrive after those of the VACUUM
        wait_until(lambda: pg.scalar("SELECT n_dead_tup FROM pg_stat_user_tables "
                                     "WHERE schemaname = 'kafka' AND relname = 'outbox'") < 20000,
                   30, what="kafka.outbox's dead rows to be vacuumed")
    finally:
        for table in ("outbox", "outbox_batch"):
            pg.query(f"ALTER TABLE kafka.{table} RESET (autovacuum_enabled)")


def test_bounded_backlog_through_an_outage(pg, kafka, settings):
    """kafka.max_pending_messages = 3000 with every broker down: kafka_send
    in transactions of 100 warns past 80 % and fails cleanly once the
    backlog would pass 3,000, the limit and the backlog in the detail (at
    the call that would pass it, though its statement writes the messages
    at its end), and
    so does a write to a published table; nothing committed is lost, and
    once Kafka is back and the backlog drains, sending works again."""
    topic = "ops_backlog"
    pg.query("CREATE TABLE ops_backlog_published (id int PRIMARY KEY)")
    pg.query("SELECT kafka_publish('ops_backlog_published')")
    wait_until(lambda: health(pg, "pending") == 0, 60, what="an empty backlog")
    settings(max_pending_messages=3000)
    wait_until(lambda: pg.scalar("SHOW kafka.max_pending_messages") == "3000", 10,
               what="the reload")
    all_brokers(kafka, "down")
    conn = pg.connect()
    committed = 0
    refused = None
    try:
        for _ in range(40):
            try:
                conn.cursor().execute(
                    "SELECT count(kafka_send(%s, i::text, key => (i %% 10)::text)) "
                    "FROM generate_series(1, 100) i", (topic,))
            except psycopg2.errors.ProgramLimitExceeded as error:
                refused = error
                break
            committed += 100
        assert refused is not None, "the backlog was never refused"
        assert committed == 3000
        assert refused.diag.message_detail == (
            "kafka.max_pending_messages allows 3000 messages; 3000 are pending, "
            "and this transaction would add 1.")
        assert sum("near kafka.max_pending_messages" in n for n in conn.notices) == 1
        with pytest.raises(psycopg2.errors.ProgramLimitExceeded):
            pg.query("INSERT INTO ops_backlog_published VALUES (1)")
        assert health(pg, "pending") == 3000
        assert health(pg, "oldest_pending_age > '0'")
    finally:
        conn.close()
        all_brokers(kafka, "up")
    assert pg.wait_until_final(topic, timeout=120) == {"delivered": committed}
    records = consume_all(kafka.bootstrap, topic)
    assert len(records) == committed
    assert len({id_header(r) for r in records}) == committed
    wait_until(lambda: health(pg, "pending") == 0, 60, what="the backlog to drain")
    pg.query("INSERT INTO ops_backlog_published VALUES (1)")
    assert pg.scalar("SELECT kafka_send(%s, 'after')", (topic,)) > 0
    pg.query("SELECT kafka_unpublish('ops_backlog_published')")
    pg.query("DROP TABLE ops_backlog_published")


MONITORING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "monitoring")


def test_exporter_queries_and_alert_rules(pg):
    """Each query of docs/monitoring/postgres_exporter.yaml runs and returns
    exactly its metrics' columns, numbers but for labels; the alert rules
    use only metrics the file defines."""
    with open(os.path.join(MONITORING, "postgres_exporter.yaml")) as f:
        spec = yaml.safe_load(f)
    defined = set()
    for namespace, query in spec.items():
        conn = pg.connect()
        try:
            cur = conn.cursor()
            cur.execute(query["query"])
            columns = [d.name for d in cur.description]
            rows = cur.fetchall()
        finally:
            conn.close()
        usage = {name: m["usage"] for metric in query["metrics"] for name, m in metric.items()}
        assert set(columns) == set(usage), namespace
        for row in rows:
            for column, value in zip(columns, row):
                if usage[column] != "LABEL":
                    assert isinstance(value, (int, float, decimal.Decimal)), (namespace, column)
        defined |= {f"{namespace}_{c}" for c, u in usage.items() if u != "LABEL"}
    with open(os.path.join(MONITORING, "alerts.yml")) as f:
        rules = yaml.safe_load(f)["groups"][0]["rules"]
    for rule in rules:
        used = set(re.findall(r"kafka_producer\w*", rule["expr"]))
        assert used and used <= defined, rule["alert"]
