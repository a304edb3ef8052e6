"""End-to-end tests of kafka.wait_on_commit: COMMIT returns once Kafka has
acknowledged the transaction's messages, and says with a WARNING when it
could not wait for that (failure, timeout, cancel)."""

import threading

from harness import consume_all, wait_until


def committing(pg, topic, values, wait=True):
    """A connection that enqueued values in an open transaction."""
    conn = pg.connect(autocommit=False)
    cur = conn.cursor()
    cur.execute("SET kafka.wait_on_commit = %s", ("on" if wait else "off",))
    for value in values:
        cur.execute("SELECT kafka_send(%s, %s)", (topic, value))
    return conn


def statuses(pg, topic):
    return pg.query("SELECT status, \"offset\" IS NOT NULL FROM kafka.messages "
                    "WHERE topic = %s ORDER BY id", (topic,))


def warnings(conn):
    return [n for n in conn.notices if n.startswith("WARNING")]


def warm_up(pg, topic):
    """Delivers a first message, so that the topic exists."""
    pg.query("SELECT kafka_send(%s, 'warm-up')", (topic,))
    pg.wait_until_final(topic)


def commit_warns(pg, topic, value):
    """Commits value with wait_on_commit; returns the one WARNING it gave."""
    conn = committing(pg, topic, [value])
    conn.commit()
    notes = warnings(conn)
    conn.close()
    assert len(notes) == 1, notes
    return notes[0]


def test_commit_returns_after_acknowledgement(pg, kafka):
    warm_up(pg, "acked")
    conn = committing(pg, "acked", ["a", "b", "c"])
    conn.commit()
    # no waiting here: COMMIT already did
    assert statuses(pg, "acked") == [("delivered", True)] * 4
    assert warnings(conn) == []
    conn.close()
    assert sorted(r.value for r in consume_all(kafka.bootstrap, "acked")) == \
        [b"a", b"b", b"c", b"warm-up"]


def test_commit_warns_of_failure(pg, kafka):
    warm_up(pg, "refused_at_commit")
    kafka.command("produce_errors MSG_SIZE_TOO_LARGE 1")
    note = commit_warns(pg, "refused_at_commit", "too large")
    assert "1 Kafka message of the committed transaction failed" in note
    assert "MSG_SIZE_TOO_LARGE" in note
    assert statuses(pg, "refused_at_commit") == [("delivered", True), ("failed", False)]


def test_commit_stops_waiting_after_message_timeout(pg, kafka, settings):
    settings(message_timeout_ms=1500, max_attempts=0)
    warm_up(pg, "unacked")
    for broker in (1, 2, 3):
        kafka.command(f"down {broker}")
    try:
        note = commit_warns(pg, "unacked", "late")
        assert "did not acknowledge the committed transaction's messages" in note
        assert statuses(pg, "unacked")[1] == ("pending", False)
    finally:
        for broker in (1, 2, 3):
            kafka.command(f"up {broker}")
    assert pg.wait_until_final("unacked") == {"delivered": 2}


def test_cancel_ends_the_wait_not_the_transaction(pg, kafka):
    warm_up(pg, "canceled_wait")
    for broker in (1, 2, 3):
        kafka.command(f"down {broker}")
    try:
        conn = committing(pg, "canceled_wait", ["kept"])
        pid = conn.get_backend_pid()
        committer = threading.Thread(target=conn.commit)
        committer.start()
        wait_until(lambda: pg.scalar("SELECT wait_event FROM pg_stat_activity WHERE pid = %s",
                                     (pid,)) == "Extension", 30, what="COMMIT to wait")
        pg.query("SELECT pg_cancel_backend(%s)", (pid,))
        committer.join(30)
        assert not committer.is_alive()
        notes = warnings(conn)
        assert len(notes) == 1, notes
        assert "canceling wait for Kafka acknowledgement due to user request" in notes[0]
        # the session goes on, and the cancel did not leak into its next query
        conn.cursor().execute("SELECT 1")
        conn.close()
        assert statuses(pg, "canceled_wait")[1] == ("pending", False)
    finally:
        for broker in (1, 2, 3):
            kafka.command(f"up {broker}")
    assert pg.wait_until_final("canceled_wait") == {"delivered": 2}
