"""End-to-end tests of per-topic settings: kafka_topic_config() applies a
topic's own acks and partitioner without restarting the worker."""

import zlib

from kafka.partitioner.default import murmur2

from harness import consume_all, wait_until

PARTITIONS = 4  # the mock cluster creates topics with 4 partitions
KEYS = [f"key-{i}" for i in range(40)]


def send_keyed(pg, kafka, topic):
    pg.query("SELECT kafka_send(%s, 'v', key => k) FROM unnest(%s::text[]) k", (topic, KEYS))
    assert pg.wait_until_final(topic) == {"delivered": len(KEYS)}
    return {r.key.decode(): r.partition for r in consume_all(kafka.bootstrap, topic)}


def test_partitioner_per_topic(pg, kafka):
    default = send_keyed(pg, kafka, "librdkafka_default")
    worker = pg.worker_pid()
    pg.query("""SELECT kafka_topic_config('java_compatible', '{"partitioner": "murmur2_random"}')""")
    java = send_keyed(pg, kafka, "java_compatible")
    # librdkafka's default partitioner hashes keys with CRC32; Java's, which
    # the topic asked for, with murmur2: the keys land where each predicts
    assert default == {k: zlib.crc32(k.encode()) % PARTITIONS for k in KEYS}
    assert java == {k: (murmur2(k.encode()) & 0x7fffffff) % PARTITIONS for k in KEYS}
    assert java != default
    # applied by rebuilding the producer, not by restarting the worker
    assert pg.worker_pid() == worker
    assert "restarting the Kafka producer" in pg.log_text()
    pg.query("SELECT kafka_topic_config('java_compatible', NULL)")


def offsets(pg, topic):
    return pg.query("SELECT \"offset\" IS NOT NULL FROM kafka.messages WHERE topic = %s "
                    "ORDER BY id", (topic,))


def test_fire_and_forget_per_topic(pg, kafka, settings):
    settings(enable_idempotence="off")
    # once a new session sees it, the postmaster has signalled the worker too
    wait_until(lambda: pg.scalar("SHOW kafka.enable_idempotence") == "off", 10,
               what="the reload")
    pg.query("""SELECT kafka_topic_config('topic_acks_0', '{"acks": "0"}')""")
    try:
        pg.query("SELECT kafka_send('topic_acks_0', 'no ack')")
        pg.query("SELECT kafka_send('topic_acks_all', 'ack')")
        assert pg.wait_until_final("topic_acks_0") == {"delivered": 1}
        assert pg.wait_until_final("topic_acks_all") == {"delivered": 1}
        # acks=0: the broker answers nothing, so no offset is known
        assert offsets(pg, "topic_acks_0") == [(False,)]
        assert offsets(pg, "topic_acks_all") == [(True,)]
    finally:
        pg.query("SELECT kafka_topic_config('topic_acks_0', NULL)")
    pg.query("SELECT kafka_send('topic_acks_0', 'acked again')")
    assert pg.wait_until_final("topic_acks_0") == {"delivered": 2}
    assert offsets(pg, "topic_acks_0") == [(False,), (True,)]
    # unkeyed, so possibly on two partitions: no order between them
    assert sorted(r.value for r in consume_all(kafka.bootstrap, "topic_acks_0")) == \
        [b"acked again", b"no ack"]
