"""Per-key order under plain concurrency: many sessions committing small
transactions whose ids interleave, each session with keys of its own, so
that every key's messages must reach Kafka in the order they were sent."""

import time

import pytest

from harness import PgCluster
from test_faults import all_brokers
from workload import OwnKeysWorkload, account, assert_clean


@pytest.fixture(scope="module")
def pg(kafka):
    """A cluster of its own with fsync on: commits take as long as they do
    in production, so committing transactions overlap the worker's scans."""
    cluster = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'",
                         "kafka.status_retention": "'1d'", "fsync": "on"})
    cluster.query("CREATE EXTENSION kafka_producer")
    yield cluster
    cluster.destroy()


def test_concurrent_small_transactions_keep_key_order(pg, kafka):
    """3 rounds of 8 sessions x 200 transactions of 5-15 messages, 10%
    rolled back.  Without the committing-transaction registry, one round in
    about six put a key out of order."""
    workload = OwnKeysWorkload(pg, "order_concurrent", seed=14)
    for _ in range(3):
        workload.run(sessions=8, transactions=200, max_size=15, rollback_rate=0.1)
    pg.wait_until_final(workload.topic, timeout=300)
    counts = account(pg, kafka.bootstrap, workload, "concurrent small transactions")
    assert counts["committed"] > 40000 and counts["rolled_back"] > 0
    assert_clean(counts)


def test_concurrent_small_transactions_through_cluster_outage(pg, kafka):
    """The same workload with every broker down for 15 s in the middle."""
    workload = OwnKeysWorkload(pg, "order_outage", seed=15)
    workload.run(sessions=8, transactions=60, max_size=15, rollback_rate=0.1)
    all_brokers(kafka, "down")
    down_at = time.monotonic()
    try:
        workload.run(sessions=8, transactions=60, max_size=15, rollback_rate=0.1)
        time.sleep(max(0.0, 15 - (time.monotonic() - down_at)))
    finally:
        all_brokers(kafka, "up")
    workload.run(sessions=8, transactions=60, max_size=15, rollback_rate=0.1)
    pg.wait_until_final(workload.topic, timeout=300)
    counts = account(pg, kafka.bootstrap, workload, "concurrent small transactions, outage")
    # the mock cluster may store a request again that the brokers' going
    # down interrupted (README, Guarantees): duplicates counted, not failed
    assert_clean(counts, allow_duplicates=True)
