"""The cost of one scrape of kafka.health and of kafka.topic_backlog on a
backlog of N pending messages (default 10,000,000, in 20 topics), against
the baseline of a plain count(*) of the outbox, measured in the same run.

    /usr/bin/python3 test/bench_health.py [N]
"""

import statistics
import sys
import time

from harness import PgCluster


def timed(pg, query, runs=5):
    conn = pg.connect()
    try:
        cur = conn.cursor()
        times = []
        for _ in range(runs):
            start = time.monotonic()
            cur.execute(query)
            cur.fetchall()
            times.append(time.monotonic() - start)
        return statistics.median(times)
    finally:
        conn.close()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    # no broker: everything stays pending
    pg = PgCluster({"kafka.bootstrap_servers": "'127.0.0.1:9'", "shared_buffers": "'1GB'",
                    "max_wal_size": "'8GB'", "checkpoint_timeout": "'30min'"})
    try:
        pg.query("CREATE EXTENSION kafka_producer")
        pg.query("INSERT INTO kafka.outbox (id, topic, key, value, enqueued_at, enqueued_by) "
                 "SELECT i, 'topic_' || (i %% 20), ('k' || (i %% 1000))::bytea, "
                 "repeat('v', 80)::bytea, now(), 'postgres'::regrole "
                 "FROM generate_series(1, %s) i", (n,))
        pg.query("SELECT setval('kafka.message_id_seq', %s)", (n,))
        pg.query("VACUUM ANALYZE kafka.outbox")
        baseline = timed(pg, "SELECT count(*) FROM kafka.outbox")
        health = timed(pg, "SELECT * FROM kafka.health")
        topics = timed(pg, "SELECT * FROM kafka.topic_backlog", runs=3)
        print(f"{n} pending messages: count(*) {baseline * 1000:.1f} ms (baseline); "
              f"kafka.health {health * 1000:.1f} ms ({health / baseline:.3f}x); "
              f"kafka.topic_backlog {topics * 1000:.1f} ms ({topics / baseline:.2f}x)",
              flush=True)
    finally:
        pg.destroy()


if __name__ == "__main__":
    main()
