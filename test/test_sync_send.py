"""End-to-end tests of kafka_send_sync(): it sends at once, outside the
caller's transaction, returns Kafka's partition and offset, raises Kafka's
error, can be interrupted, and every outcome lands in kafka.messages."""

import re
import threading
import time

import psycopg2
import pytest

from harness import consume_all, terminate, wait_until


def send_sync(conn_or_pg, topic, value, **args):
    names = "".join(f", {name} => %({name})s" for name in args)
    sql = f"SELECT id, \"partition\", \"offset\" FROM kafka_send_sync(%(topic)s, %(value)s{names})"
    params = dict(topic=topic, value=value, **args)
    if hasattr(conn_or_pg, "query"):
        return conn_or_pg.query(sql, params)[0]
    cur = conn_or_pg.cursor()
    cur.execute(sql, params)
    return cur.fetchone()


def recorded(pg, message_id):
    """The message's row in kafka.messages, once the worker recorded it."""
    def row():
        rows = pg.query("SELECT status, \"partition\", \"offset\", error FROM kafka.messages "
                        "WHERE id = %s", (message_id,))
        return rows[0] if rows else None
    return wait_until(row, 30, what=f"message {message_id} in kafka.messages")


def failed_id(error):
    """The message id an ERROR of kafka_send_sync names."""
    match = re.match(r"could not deliver Kafka message (\d+): ", error.diag.message_primary)
    assert match, error.diag.message_primary
    return int(match.group(1))


def all_brokers(kafka, state):
    for broker in (1, 2, 3):
        kafka.command(f"{state} {broker}")


def test_returns_where_kafka_stored_it(pg, kafka):
    message_id, partition, offset = send_sync(pg, "sync_basic", "hello", key="k1",
                                              headers='{"h": "v"}')
    # acknowledged before the call returned: it is in Kafka now
    records = consume_all(kafka.bootstrap, "sync_basic")
    assert [(r.partition, r.offset, r.key, r.value, r.headers) for r in records] == \
        [(partition, offset, b"k1", b"hello",
          [("h", b"v"), ("kafka_producer.id", str(message_id).encode()),
           ("kafka_producer.database", b"postgres")])]
    assert recorded(pg, message_id) == ("delivered", partition, offset, None)


def test_large_message_travels_in_a_segment(pg, kafka):
    """Messages over the slot's 4 kB go through dynamic shared memory."""
    big = "".join(chr(97 + i % 26) for i in range(200000))
    ids = [send_sync(pg, "sync_large", value, key=key, headers='{"size": "%d"}' % len(value))[0]
           for value, key in ((big, "big"), ("x" * 3000, "k" * 1000))]
    records = consume_all(kafka.bootstrap, "sync_large")
    assert sorted((r.key, r.value, r.headers) for r in records) == sorted([
        (b"big", big.encode(), [("size", b"200000"), ("kafka_producer.id", str(ids[0]).encode()),
                                ("kafka_producer.database", b"postgres")]),
        (b"k" * 1000, b"x" * 3000, [("size", b"3000"), ("kafka_producer.id", str(ids[1]).encode()),
                                    ("kafka_producer.database", b"postgres")])])


def test_sent_even_if_the_caller_rolls_back(pg, kafka):
    conn = pg.connect(autocommit=False)
    message_id, partition, offset = send_sync(conn, "sync_rollback", "outside")
    conn.rollback()
    conn.close()
    assert [r.value for r in consume_all(kafka.bootstrap, "sync_rollback")] == [b"outside"]
    assert recorded(pg, message_id)[0] == "delivered"


def test_many_sessions_at_once(pg, kafka):
    results = []
    errors = []

    def session(n):
        try:
            conn = pg.connect()
            for i in range(40):
                results.append(send_sync(conn, "sync_concurrent", f"{n}-{i}", key=str(n)))
            conn.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(results) == 320
    assert len({(p, o) for _, p, o in results}) == 320
    stored = {(r.partition, r.offset): r.value for r in consume_all(kafka.bootstrap, "sync_concurrent")}
    assert len(stored) == 320
    assert {(p, o) for _, p, o in results} == set(stored)
    pg_counts = wait_until(lambda: pg.scalar(
        "SELECT count(*) FROM kafka.messages WHERE topic = 'sync_concurrent' "
        "AND status = 'delivered'") == 320 or None, 30, what="outcomes recorded")
    assert pg_counts


def test_refused_message_raises_kafka_error(pg, kafka):
    send_sync(pg, "sync_refused", "warm-up")
    kafka.command("produce_errors MSG_SIZE_TOO_LARGE 1")
    with pytest.raises(psycopg2.Error) as raised:
        send_sync(pg, "sync_refused", "refused")
    error = raised.value
    assert error.pgcode == "54000"
    assert "Broker: Message size too large" in error.diag.message_primary
    assert error.diag.message_detail == "Kafka error MSG_SIZE_TOO_LARGE."
    message_id = failed_id(error)
    status, _, _, kafka_error = recorded(pg, message_id)
    assert (status, kafka_error.split(":")[0]) == ("failed", "MSG_SIZE_TOO_LARGE")
    # a failed sync message keeps its payload and can be retried
    pg.query("SELECT kafka_retry(%s)", (message_id,))
    assert pg.wait_until_final("sync_refused") == {"delivered": 2}
    assert sorted(r.value for r in consume_all(kafka.bootstrap, "sync_refused")) == \
        [b"refused", b"warm-up"]


def test_cluster_down_gives_an_error_after_message_timeout(pg, kafka, settings):
    settings(message_timeout_ms=1500)
    send_sync(pg, "sync_down", "warm-up")
    all_brokers(kafka, "down")
    try:
        started = time.monotonic()
        with pytest.raises(psycopg2.Error) as raised:
            send_sync(pg, "sync_down", "never")
        waited = time.monotonic() - started
    finally:
        all_brokers(kafka, "up")
    assert raised.value.pgcode == "08006"
    assert "Local: Message timed out" in raised.value.diag.message_primary
    assert "status 'failed'" in raised.value.diag.message_hint
    assert waited < 30
    assert recorded(pg, failed_id(raised.value))[0] == "failed"


@pytest.mark.parametrize("interrupt", ["cancel", "statement_timeout"])
def test_interrupted_wait_still_records_the_outcome(pg, kafka, interrupt):
    topic = f"sync_{interrupt}"
    send_sync(pg, topic, "warm-up")
    all_brokers(kafka, "down")
    conn = pg.connect()
    try:
        if interrupt == "statement_timeout":
            conn.cursor().execute("SET statement_timeout = '700ms'")
            expected = "canceling statement due to statement timeout"
        else:
            pid = conn.get_backend_pid()
            threading.Timer(0.7, lambda: pg.query("SELECT pg_cancel_backend(%s)", (pid,))).start()
            expected = "canceling statement due to user request"
        with pytest.raises(psycopg2.errors.QueryCanceled) as raised:
            send_sync(conn, topic, "interrupted")
        assert raised.value.diag.message_primary == expected
        assert "was sent; its outcome will be recorded in kafka.messages" in raised.value.diag.context
        # the session goes on
        conn.cursor().execute("SELECT 1")
    finally:
        conn.close()
        all_brokers(kafka, "up")
    # librdkafka delivers it once the brokers are back, and the worker records it
    message_id = wait_until(lambda: pg.scalar(
        "SELECT max(id) FROM kafka.messages WHERE topic = %s AND status = 'delivered'",
        (topic,)) if pg.scalar("SELECT count(*) FROM kafka.messages WHERE topic = %s",
                               (topic,)) == 2 else None, 60, what="interrupted message recorded")
    assert message_id
    assert sorted(r.value for r in consume_all(kafka.bootstrap, topic)) == [b"interrupted", b"warm-up"]


def test_worker_stop_fails_the_waiting_send(pg, kafka):
    """A worker that stops while Kafka is unreachable answers the waiting
    session with an ERROR and records the message as failed, retryable."""
    send_sync(pg, "sync_worker_stop", "warm-up")
    all_brokers(kafka, "down")
    conn = pg.connect()
    raised = []

    def call():
        try:
            send_sync(conn, "sync_worker_stop", "stopped")
        except psycopg2.Error as e:
            raised.append(e)

    try:
        caller = threading.Thread(target=call)
        caller.start()
        pid = conn.get_backend_pid()
        wait_until(lambda: pg.scalar("SELECT wait_event FROM pg_stat_activity WHERE pid = %s",
                                     (pid,)) == "Extension", 30, what="the send to wait")
        worker = pg.worker_pid()
        terminate(worker)
        caller.join(60)
        assert not caller.is_alive()
        assert len(raised) == 1
        assert "Local: Purged" in raised[0].diag.message_primary
        pg.wait_for_worker(other_than=worker)
    finally:
        conn.close()
        all_brokers(kafka, "up")
    message_id = failed_id(raised[0])
    assert recorded(pg, message_id)[0] == "failed"
    pg.query("SELECT kafka_retry(%s)", (message_id,))
    assert pg.wait_until_final("sync_worker_stop") == {"delivered": 2}
    assert sorted(r.value for r in consume_all(kafka.bootstrap, "sync_worker_stop")) == \
        [b"stopped", b"warm-up"]
