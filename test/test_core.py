"""End-to-end tests of the core: what kafka_send() commits reaches Kafka,
read back with kafka-python, and kafka.messages tells its fate."""

import json
import signal
import threading
import time

import psycopg2
import pytest

from harness import PgCluster, consume_all, terminate, wait_until
from workload import Workload, account, assert_clean


def send(pg, topic, value, **args):
    names = "".join(f", {name} => %({name})s" for name in args)
    return pg.scalar(f"SELECT kafka_send(%(topic)s, %(value)s{names})",
                     dict(topic=topic, value=value, **args))


def message(pg, message_id):
    rows = pg.query("SELECT status, \"partition\", \"offset\", attempts, error "
                    "FROM kafka.messages WHERE id = %s", (message_id,))
    return rows[0] if rows else None


def test_quickstart(pg, kafka):
    """The README's quick start: a JSON message with a key, committed,
    arrives in Kafka; its row turns delivered with Kafka's partition and
    offset."""
    message_id = pg.scalar("""SELECT kafka_send('orders', '{"id":1}'::jsonb, key => '1')""")
    pg.wait_until_final("orders")
    status, partition, offset, attempts, error = message(pg, message_id)
    assert (status, attempts, error) == ("delivered", 1, None)

    records = [r for r in consume_all(kafka.bootstrap, "orders") if r.key == b"1"]
    assert len(records) == 1
    assert json.loads(records[0].value) == {"id": 1}
    assert (records[0].partition, records[0].offset) == (partition, offset)
    # the worker of a database without the extension left quietly, and
    # CREATE EXTENSION brought it back
    assert "FATAL" not in pg.log_text()
    assert not [line for line in pg.log_text().splitlines()
                if "kafka_producer launcher" in line and "ERROR" in line]


def test_id_header_named_by_setting_or_off(pg, kafka, settings):
    """kafka.id_header names the header that carries the message id, and
    kafka.database_header the one that carries its database's name; empty
    turns them off."""
    settings(id_header="msg-id", database_header="msg-db")
    wait_until(lambda: pg.scalar("SHOW kafka.database_header") == "msg-db", what="the reload")
    named = send(pg, "id_header", "named")
    pg.wait_until_final("id_header")
    settings(id_header="", database_header="")
    wait_until(lambda: pg.scalar("SHOW kafka.database_header") == "", what="the reload")
    send(pg, "id_header", "none")
    pg.wait_until_final("id_header")
    headers = {r.value: r.headers for r in consume_all(kafka.bootstrap, "id_header")}
    assert headers == {b"named": [("msg-id", str(named).encode()), ("msg-db", b"postgres")],
                       b"none": []}


def test_properties_file_reaches_the_producer(pg, kafka, settings, tmp_path):
    """kafka.producer_properties_file: properties only the server reads,
    applied on reload; SHOW and pg_settings give its path, never them."""
    path = tmp_path / "kafka.properties"
    path.write_text("# the producer's name, as the brokers see it\nclient.id = from-file\n")
    settings(producer_properties_file=str(path))
    wait_until(lambda: pg.scalar("SELECT kafka_stats()->>'client_id'") == "from-file", 60,
               what="the producer to take the file's client.id")
    send(pg, "properties_file", "v")
    assert pg.wait_until_final("properties_file") == {"delivered": 1}
    settings(producer_properties_file=None)
    wait_until(lambda: pg.scalar("SELECT kafka_stats()->>'client_id'") == "kafka_producer", 60,
               what="the producer to drop the file's client.id")


def test_rollback_sends_nothing(pg, kafka):
    conn = pg.connect(autocommit=False)
    cur = conn.cursor()
    cur.execute("SELECT kafka_send('rollback', 'rolled back')")
    conn.rollback()
    cur.execute("SELECT kafka_send('rollback', 'kept')")
    cur.execute("SAVEPOINT s")
    cur.execute("SELECT kafka_send('rollback', 'undone in savepoint')")
    cur.execute("ROLLBACK TO SAVEPOINT s")
    conn.commit()
    conn.close()
    assert pg.wait_until_final("rollback") == {"delivered": 1}
    assert [r.value for r in consume_all(kafka.bootstrap, "rollback")] == [b"kept"]


def test_encodings_headers_partition_tombstone(pg, kafka):
    ids = [
        send(pg, "shapes", b"\x00\xffraw", key=b"\x01"),
        send(pg, "shapes", "grüße", key="text"),
        pg.scalar("SELECT kafka_send('shapes', '{\"b\": [1, 2], \"a\": null}'::jsonb)"),
        pg.scalar("SELECT kafka_send('shapes', NULL::text, key => 'gone')"),
        send(pg, "shapes", "to partition 2", partition=2,
             headers=json.dumps({"trace-id": "abc", "empty": None})),
    ]
    pg.wait_until_final("shapes")
    records = {(r.partition, r.offset): r for r in consume_all(kafka.bootstrap, "shapes")}
    by_value = {r.value: r for r in records.values()}
    assert by_value[b"\x00\xffraw"].key == b"\x01"
    assert by_value["grüße".encode()].key == b"text"
    assert json.loads(by_value[b'{"a": null, "b": [1, 2]}'].value) == {"a": None, "b": [1, 2]}
    assert by_value[None].key == b"gone"
    routed = by_value[b"to partition 2"]
    assert routed.partition == 2
    assert sorted(routed.headers) == [("empty", None), ("kafka_producer.database", b"postgres"),
                                      ("kafka_producer.id", str(ids[4]).encode()),
                                      ("trace-id", b"abc")]
    for message_id in ids:
        status, partition, offset, _, _ = message(pg, message_id)
        assert status == "delivered"
        assert (partition, offset) in records


def test_concurrent_sessions_with_rollbacks(pg, kafka):
    """Four sessions, a quarter of their transactions rolled back: every
    committed message exactly once, nothing rolled back, per-key order."""
    workload = Workload(pg, "concurrent", keys=20)
    workload.run(sessions=4, transactions=60, max_size=25, rollback_rate=0.25)
    pg.wait_until_final("concurrent")
    counts = account(pg, kafka.bootstrap, workload, "concurrent sessions")
    assert counts["committed"] > 1000 and counts["rolled_back"] > 0
    assert counts["delivered"] == counts["committed"]
    assert_clean(counts)


def test_one_large_transaction(pg, kafka):
    pg.query("SELECT kafka_send('large', i::text, key => (i % 100)::text) "
             "FROM generate_series(1, 50000) i")
    assert pg.wait_until_final("large") == {"delivered": 50000}
    records = consume_all(kafka.bootstrap, "large")
    assert sorted(int(r.value) for r in records) == list(range(1, 50001))
    per_key = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        per_key.setdefault(r.key, []).append(int(r.value))
    assert all(v == sorted(v) for v in per_key.values())


def test_batch_rows_sized_by_what_they_compress_to(pg, kafka):
    """Messages that compress well share rows of more than a page of raw
    bytes; incompressible ones get rows that fit in a page as they are.
    Neither goes to TOAST, and every message arrives once."""
    conn = pg.connect(autocommit=False)
    cur = conn.cursor()
    # seen before commit, by the transaction that wrote them
    cur.execute("SELECT count(kafka_send('rows_alike', repeat('{\"name\": \"alike\"}', 5), "
                "key => i::text)) FROM generate_series(1, 3000) i")
    cur.execute("SELECT count(kafka_send('rows_noise', (SELECT decode(string_agg(md5(random()::text "
                "|| i || g), ''), 'hex') FROM generate_series(1, 8) g), key => i::text)) "
                "FROM generate_series(1, 3000) i")
    cur.execute("""SELECT topic, max(raw), max(stored) FROM (
                       SELECT topic, (SELECT sum(octet_length(v)) FROM unnest("values") v) AS raw,
                              pg_column_size("values") AS stored
                         FROM kafka.outbox_batch) r GROUP BY topic""")
    rows = {r[0]: r[1:] for r in cur.fetchall()}
    cur.execute("SELECT pg_relation_size(reltoastrelid) FROM pg_class "
                "WHERE oid = 'kafka.outbox_batch'::regclass")
    toast = cur.fetchone()[0]
    conn.commit()
    conn.close()
    assert rows["rows_alike"][0] > 8192 > rows["rows_alike"][1], rows
    assert rows["rows_noise"][0] < 7600, rows
    assert toast == 0
    for topic in ("rows_alike", "rows_noise"):
        assert pg.wait_until_final(topic) == {"delivered": 3000}
        keys = sorted(int(r.key) for r in consume_all(kafka.bootstrap, topic))
        assert keys == list(range(1, 3001))


def test_outage_keeps_messages_pending_then_delivers_in_order(pg, kafka, settings):
    """All brokers down longer than message_timeout_ms: attempts fail with
    a transient error, the messages stay pending and are sent again, in
    order, once the cluster is back."""
    settings(message_timeout_ms=1500, max_attempts=0)
    workload = Workload(pg, "outage", keys=10, seed=2)
    workload.run(sessions=2, transactions=5, max_size=10, rollback_rate=0.2)
    pg.wait_until_final("outage")
    for broker in (1, 2, 3):
        kafka.command(f"down {broker}")
    try:
        workload.run(sessions=2, transactions=20, max_size=10, rollback_rate=0.2)
        wait_until(lambda: pg.scalar(
            "SELECT count(*) FROM kafka.messages WHERE topic = 'outage' "
            "AND status = 'pending' AND attempts >= 1 AND error LIKE '\\_MSG_TIMED_OUT:%%'"),
            60, what="transient failures to be recorded")
        assert pg.scalar("SELECT count(*) FROM kafka.messages "
                         "WHERE topic = 'outage' AND status = 'failed'") == 0
    finally:
        for broker in (1, 2, 3):
            kafka.command(f"up {broker}")
    pg.wait_until_final("outage")
    counts = account(pg, kafka.bootstrap, workload, "broker outage")
    assert counts["delivered"] == counts["committed"]
    assert_clean(counts)


def test_attempts_exhausted_then_retried(pg, kafka, settings):
    settings(message_timeout_ms=500, max_attempts=2)
    for broker in (1, 2, 3):
        kafka.command(f"down {broker}")
    try:
        message_id = send(pg, "exhausted", "v", key="k")
        wait_until(lambda: message(pg, message_id)[0] == "failed", 60,
                   what="the message to fail")
        status, _, _, attempts, error = message(pg, message_id)
        assert attempts == 2
        assert error.startswith("_MSG_TIMED_OUT: ")
        assert pg.scalar("SELECT value FROM kafka.failed WHERE id = %s",
                         (message_id,)).tobytes() == b"v"
    finally:
        for broker in (1, 2, 3):
            kafka.command(f"up {broker}")
    assert pg.scalar("SELECT kafka_retry_failed('exhausted')") == 1
    assert pg.wait_until_final("exhausted") == {"delivered": 1}
    assert [r.value for r in consume_all(kafka.bootstrap, "exhausted")] == [b"v"]


@pytest.mark.parametrize("error", ["MSG_SIZE_TOO_LARGE", "INVALID_RECORD"])
def test_permanent_error_fails_exactly_those_then_retry(pg, kafka, error):
    """A non-retriable error from the broker marks the affected message
    failed with Kafka's error; kafka_retry() later delivers it."""
    topic = f"refused_{error.lower()}"
    first = send(pg, topic, "before", key="k")
    pg.wait_until_final(topic)
    kafka.command(f"produce_errors {error} 1")
    refused = send(pg, topic, "refused", key="k")
    wait_until(lambda: message(pg, refused)[0] != "pending", 60,
               what="the refused message")
    status, _, _, attempts, text = message(pg, refused)
    assert (status, attempts) == ("failed", 1)
    assert text.startswith(f"{error}: Broker: ")
    counters = pg.scalar("SELECT kafka_stats()->'kafka_producer'")
    assert counters["last_error"] == f"{text} (message {refused})"
    assert counters["failed"] >= 1 and counters["delivered"] >= 1
    after = send(pg, topic, "after", key="k")
    pg.wait_until_final(topic)
    assert message(pg, first)[0] == "delivered"
    assert message(pg, after)[0] == "delivered"

    pg.query("SELECT kafka_retry(%s)", (refused,))
    pg.wait_until_final(topic)
    assert message(pg, refused)[0] == "delivered"
    values = [r.value for r in sorted(consume_all(kafka.bootstrap, topic),
                                      key=lambda r: r.offset)]
    assert values == [b"before", b"after", b"refused"]


def test_permanent_error_fails_the_messages_of_a_batch_row(pg, kafka):
    """Messages enqueued together share a kafka.outbox_batch row.  Refused
    for good, each is failed at the first refusal with its attempt counted,
    as a message of a row of its own is, and none is sent again (a version
    of the row-version check sent them again and delivered them)."""
    topic = "refused_batched"
    send(pg, topic, "before", key="k")
    pg.wait_until_final(topic)
    kafka.command("produce_errors MSG_SIZE_TOO_LARGE 1")
    conn = pg.connect(autocommit=False)
    cur = conn.cursor()
    cur.execute("SELECT kafka_send(%s, 'refused ' || i, key => 'k') "
                "FROM generate_series(1, 10) i", (topic,))
    cur.execute("SELECT count(*) FROM kafka.outbox_batch WHERE topic = %s", (topic,))
    assert cur.fetchone()[0] == 1
    conn.commit()
    conn.close()
    assert pg.wait_until_final(topic) == {"delivered": 1, "failed": 10}
    assert pg.query("SELECT DISTINCT attempts FROM kafka.failed WHERE topic = %s",
                    (topic,)) == [(1,)]
    assert [r.value for r in consume_all(kafka.bootstrap, topic)] == [b"before"]


def test_unauthorized_topic_fails_until_retried(pg, kafka):
    """TOPIC_AUTHORIZATION_FAILED fails the message (librdkafka also fails
    the topic's next messages until it refreshes metadata); once the topic
    is usable again, kafka_retry_failed() delivers what failed."""
    topic = "unauthorized"
    send(pg, topic, "before")
    pg.wait_until_final(topic)
    kafka.command("produce_errors TOPIC_AUTHORIZATION_FAILED 1")
    refused = send(pg, topic, "refused")
    wait_until(lambda: message(pg, refused)[0] == "failed", 60,
               what="the refused message")
    assert message(pg, refused)[4] == \
        "TOPIC_AUTHORIZATION_FAILED: Broker: Topic authorization failed"

    def retried_and_delivered():
        pg.query("SELECT kafka_retry_failed(%s)", (topic,))
        pg.wait_until_final(topic)
        return pg.scalar("SELECT count(*) FROM kafka.messages WHERE topic = %s "
                         "AND status = 'failed'", (topic,)) == 0
    wait_until(retried_and_delivered, 60, interval=1, what="a successful retry")
    values = sorted(r.value for r in consume_all(kafka.bootstrap, topic))
    assert values == [b"before", b"refused"]


def test_worker_restarts_after_sigterm_and_sigkill(pg, kafka):
    """The worker stops on SIGTERM after flushing and is started again; a
    SIGKILL makes PostgreSQL restart all backends.  Nothing is lost, and
    nothing sent twice: the new worker finds what Kafka holds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        topic = f"restart_{sig.name.lower()}"
        workload = Workload(pg, topic, keys=10, seed=sig)
        runner = threading.Thread(target=workload.run,
                                  kwargs=dict(sessions=2, transactions=40, max_size=50))
        runner.start()
        time.sleep(0.5)
        old = pg.worker_pid()
        terminate(old, sig)
        runner.join()
        pg.wait_for_worker(other_than=old)
        pg.wait_until_final(topic)
        counts = account(pg, kafka.bootstrap, workload, f"worker {sig.name}")
        assert counts["lost"] == 0 and counts["leaked"] == 0
        assert counts["out_of_order"] == 0 and counts["status_mismatch"] == 0
        assert counts["duplicated"] == 0


def test_reload_mid_drain(pg, kafka, settings):
    """Changed producer settings rebuild the producer without losing or
    duplicating a message."""
    pg.query("SELECT kafka_send('reload', i::text, key => (i % 7)::text) "
             "FROM generate_series(1, 100000) i")
    settings(linger_ms=50, compression_type="lz4", acks="1", enable_idempotence="off")
    time.sleep(0.3)
    settings(linger_ms=0, compression_type="zstd", acks="all", enable_idempotence="on")
    assert pg.wait_until_final("reload") == {"delivered": 100000}
    values = [int(r.value) for r in consume_all(kafka.bootstrap, "reload")]
    assert sorted(values) == list(range(1, 100001))
    assert "restarting the Kafka producer" in pg.log_text()


def test_delivered_rows_pruned_after_retention(pg, settings):
    message_id = send(pg, "pruned", "v")
    pg.wait_until_final("pruned")
    settings(status_retention=0)
    wait_until(lambda: message(pg, message_id) is None, 60,
               what="the delivered row to be pruned")


def test_requires_preloading(kafka):
    cluster = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'"},
                        preload=False)
    try:
        with pytest.raises(psycopg2.Error) as error:
            cluster.query("CREATE EXTENSION kafka_producer")
        assert error.value.pgcode == "55000"
        assert "must be loaded via shared_preload_libraries" in str(error.value)
    finally:
        cluster.destroy()


def notified_ids(conn, status, timeout=30):
    """Ids announced with the given status on kafka_delivery so far."""
    ids = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.poll()
        while conn.notifies:
            note = conn.notifies.pop(0)
            kind, _, ranges = note.payload.partition(":")
            assert kind in ("delivered", "failed"), note.payload
            if kind != status:
                continue
            for part in ranges.split(","):
                first, _, last = part.partition("-")
                ids.update(range(int(first), int(last or first) + 1))
        if ids:
            return ids
        time.sleep(0.05)
    return ids


def test_notify_and_wait(pg, kafka):
    """The worker announces outcomes on channel kafka_delivery; kafka_wait()
    returns a message's final status."""
    listener = pg.connect()
    listener.cursor().execute("LISTEN kafka_delivery")
    conn = pg.connect(autocommit=False)
    cur = conn.cursor()
    cur.execute("SELECT kafka_send('notified', v::text) FROM generate_series(1, 50) v")
    ids = [row[0] for row in cur.fetchall()]
    conn.commit()
    assert pg.scalar("SELECT kafka_wait(%s, '30 seconds')", (ids[-1],)) == "delivered"
    announced = set()
    while not set(ids) <= announced:
        more = notified_ids(listener, "delivered")
        assert more, "no notification for delivered messages"
        announced |= more

    kafka.command("produce_errors MSG_SIZE_TOO_LARGE 1")
    refused = send(pg, "notified", "refused")
    assert pg.scalar("SELECT kafka_wait(%s, '30 seconds')", (refused,)) == "failed"
    assert refused in notified_ids(listener, "failed")
    listener.close()
    conn.close()


def test_flush_waits_for_this_sessions_messages(pg):
    conn = pg.connect()
    cur = conn.cursor()
    cur.execute("SELECT kafka_flush('1 second')")
    assert cur.fetchone()[0] is True
    for _ in range(5):
        cur.execute("SELECT kafka_send('flushed', v::text) FROM generate_series(1, 2000) v")
    cur.execute("SELECT kafka_flush('60 seconds')")
    assert cur.fetchone()[0] is True
    assert pg.scalar("SELECT count(*) FROM kafka.messages WHERE topic = 'flushed' "
                     "AND status = 'delivered'") == 10000
    conn.close()


def test_broker_discovery_from_one_bootstrap_broker(pg, kafka, settings):
    """Given only the first broker, the producer discovers all three, shows
    them in kafka_brokers(), and keeps delivering when that broker is down."""
    settings(bootstrap_servers=kafka.brokers[0], statistics_interval_ms=200)
    topic = "discovery"
    kafka.command(f"create {topic} 4 3")
    first = send(pg, topic, "first")
    assert pg.scalar("SELECT kafka_wait(%s, '30 seconds')", (first,)) == "delivered"

    def all_brokers_known():
        rows = pg.query("SELECT id, host || ':' || port FROM kafka_brokers()")
        return rows if len(rows) == 3 else None
    brokers = wait_until(all_brokers_known, 30, what="three discovered brokers")
    assert pg.scalar("SELECT kafka_stats()->'client_id'") == "kafka_producer"
    assert [b[0] for b in brokers] == [1, 2, 3]
    assert sorted(b[1] for b in brokers) == sorted(kafka.brokers)
    leaders = wait_until(lambda: pg.query("SELECT \"partition\", leader FROM kafka_topics() "
                                          "WHERE topic = %s", (topic,)), 30,
                         what="the topic's partitions")
    assert [p for p, _ in leaders] == [0, 1, 2, 3]
    assert all(leader in (1, 2, 3) for _, leader in leaders)

    kafka.command("down 1")
    try:
        for partition in range(4):
            kafka.command(f"leader {topic} {partition} {2 + partition % 2}")
        pg.query("SELECT kafka_send(%s, v::text) FROM generate_series(1, 100) v", (topic,))
        assert pg.wait_until_final(topic) == {"delivered": 101}
    finally:
        kafka.command("up 1")
    assert len(consume_all(kafka.bootstrap, topic)) == 101


def test_fire_and_forget_acks_0(pg, kafka, settings):
    """acks = 0: the worker does not wait for the broker; the message counts
    as delivered once written to the socket, with no offset known."""
    settings(acks="0", enable_idempotence="off")
    message_id = send(pg, "fire_and_forget", "v", key="k")
    assert pg.scalar("SELECT kafka_wait(%s, '30 seconds')", (message_id,)) == "delivered"
    status, partition, offset, _, _ = message(pg, message_id)
    assert offset is None and partition is not None
    assert [r.value for r in consume_all(kafka.bootstrap, "fire_and_forget")] == [b"v"]


def test_database_created_after_start(kafka):
    """kafka.database (the old spelling of kafka.databases) names a database
    that does not exist yet: the launcher says so once and waits quietly,
    starting no worker, then serves it once it and the extension are
    created."""
    cluster = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'",
                         "kafka.database": "'created_later'"})
    try:
        wait_until(lambda: "waiting for database \"created_later\"" in cluster.log_text(),
                   30, what="the worker to wait for the database")
        time.sleep(12)
        log = cluster.log_text()
        assert log.count("waiting for database") == 1
        assert "kafka.database names it" in log
        assert "FATAL" not in log
        cluster.query("CREATE DATABASE created_later")
        cluster.dbname = "created_later"
        cluster.query("CREATE EXTENSION kafka_producer")
        message_id = cluster.scalar("SELECT kafka_send('created_later', 'v')")
        assert cluster.scalar("SELECT kafka_wait(%s, '60 seconds')", (message_id,)) == "delivered"
    finally:
        cluster.destroy()


def test_delivery_records_found_by_id_in_summarized_ranges(pg):
    """kafka.delivered's BRIN index gets only the rows holding each heap
    page's least and greatest values: delivery records written into block
    ranges already summarized, in space that deleted records left, are
    still found through it."""
    def send(n):
        first = pg.scalar("SELECT min(kafka_send('brin_pages', 'v', key => i::text)) "
                          "FROM generate_series(1, %s) i", (n,))
        pg.wait_until_final("brin_pages")
        return first
    send(20000)
    pg.query("SELECT brin_summarize_new_values('kafka.delivered_brin')")
    summarized_pages = pg.scalar("SELECT pg_relation_size('kafka.delivered') / 8192")
    pg.query("DELETE FROM kafka.delivered WHERE topic = 'brin_pages' AND id % 2 = 0")
    pg.query("VACUUM kafka.delivered")
    first_new = send(10000)
    assert pg.scalar("SELECT count(*) FROM kafka.delivered WHERE id >= %s "
                     "AND (ctid::text::point)[0] < %s", (first_new, summarized_pages)) > 1000, \
        "the new records should reuse the summarized pages"
    conn = pg.connect()
    try:
        cur = conn.cursor()
        for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
            cur.execute(f"SET {setting} = off")
        # each new id looked up on its own, through the index
        lookup = ("SELECT count(*) FROM generate_series(%s::bigint, %s) g "
                  "JOIN kafka.delivered d ON d.id = g")
        cur.execute("EXPLAIN " + lookup, (first_new, first_new + 9999))
        assert "delivered_brin" in " ".join(r[0] for r in cur.fetchall())
        cur.execute(lookup, (first_new, first_new + 9999))
        assert cur.fetchone()[0] == 10000
    finally:
        conn.close()


def test_message_changed_while_its_send_fails(pg, kafka):
    """Kafka refuses a message for good while its row is UPDATEd: the
    refusal concerns the version that was sent, so the new version is sent
    and delivered, not moved to kafka.failed unsent."""
    def refused():
        return pg.scalar("SELECT (kafka_stats()->'kafka_producer'->>'failed')::int")

    refused_before = refused()
    # long enough for the UPDATE to come before the refusal
    for broker in (1, 2, 3):
        kafka.command(f"rtt {broker} 2000")
    try:
        kafka.command("produce_errors MSG_SIZE_TOO_LARGE 1")
        sent = pg.scalar("SELECT kafka_send('changed_in_flight', 'first', "
                         "headers => '{\"h\": \"1\"}')")
        wait_until(lambda: pg.scalar("SELECT (kafka_stats()->'kafka_producer'->>'in_flight')::int")
                   == 1, 30, what="the message to be in flight")
        pg.query("UPDATE kafka.outbox SET value = 'changed' WHERE id = %s", (sent,))
        wait_until(lambda: refused() == refused_before + 1, 30,
                   what="the refusal to be recorded")
    finally:
        for broker in (1, 2, 3):
            kafka.command(f"rtt {broker} 0")
        kafka.command("clear_errors")
    assert pg.wait_until_final("changed_in_flight") == {"delivered": 1}
    assert [r.value for r in consume_all(kafka.bootstrap, "changed_in_flight")] == [b"changed"]
    assert pg.scalar("SELECT count(*) FROM kafka.failed WHERE id = %s", (sent,)) == 0


def test_outbox_rewritten_while_in_flight(pg, kafka):
    """VACUUM FULL moves the rows of messages already handed to librdkafka:
    their deliveries are still recorded, each message once (every old
    position is gone or holds another message).  A row UPDATEd while in
    flight is a message not sent yet: it is sent after the old version.
    Messages with headers are a row each in kafka.outbox, the others share
    rows of kafka.outbox_batch: both tables are rewritten."""
    for broker in (1, 2, 3):
        kafka.command(f"down {broker}")
    try:
        conn = pg.connect(autocommit=False)
        conn.cursor().execute("SELECT kafka_send('rewrite', 'rolled back ' || i) "
                              "FROM generate_series(1, 3000) i")
        conn.rollback()
        conn.close()
        first = pg.scalar("SELECT min(kafka_send('rewrite', 'kept ' || i, key => (i % 7)::text, "
                          "headers => '{\"h\": \"1\"}')) FROM generate_series(1, 500) i")
        pg.query("SELECT kafka_send('rewrite', 'batched ' || i, key => (i % 7)::text) "
                 "FROM generate_series(1, 500) i")
        assert pg.scalar("SELECT count(*) FROM kafka.outbox_batch") > 0
        wait_until(lambda: pg.scalar("SELECT (kafka_stats()->'kafka_producer'->>'in_flight')::int")
                   == 1000, 30, what="the messages to be in flight")
        pg.query("UPDATE kafka.outbox SET value = 'changed' WHERE id = %s", (first + 10,))
        pg.query("VACUUM FULL kafka.outbox")
        pg.query("VACUUM FULL kafka.outbox_batch")
    finally:
        for broker in (1, 2, 3):
            kafka.command(f"up {broker}")
    assert pg.wait_until_final("rewrite") == {"delivered": 1000}
    values = sorted(r.value.decode() for r in consume_all(kafka.bootstrap, "rewrite"))
    assert values == sorted([f"kept {i}" for i in range(1, 501)] +
                            [f"batched {i}" for i in range(1, 501)] + ["changed"])
    assert pg.scalar("""SELECT count(*) FROM kafka.messages m
                         WHERE topic = 'rewrite' AND "offset" IS NULL""") == 0
