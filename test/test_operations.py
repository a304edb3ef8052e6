"""What an operator meets: a served database dropped while its worker
waits on unreachable brokers, and the in-flight gauge during an outage."""

from harness import PgCluster, wait_until
from test_faults import all_brokers, in_flight


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
