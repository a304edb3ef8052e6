"""Benchmark: how large the queue tables grow during a steady run, and
whether they shrink back.  TRANSACTIONS transactions of 10,000 messages of
80 bytes each at a steady RATE messages a second, kafka.status_retention =
30s, delivered to the mock cluster as they come; the sizes of kafka.outbox,
kafka.outbox_batch and kafka.delivered (heap and indexes) and their dead
rows are sampled every second, during the run and for the 45 s after it
(retention plus a prune).  Their live data is what the run holds at once:
the messages not yet delivered, and 30 s of delivery records.

Run it as a non-root user once the extension is installed:
    /usr/bin/python3 test/bench_bloat.py [TRANSACTIONS] [RATE]
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import MockCluster, bench_cluster  # noqa: E402

TRANSACTIONS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 15000
PER_TRANSACTION = 10000
TABLES = ("outbox", "outbox_batch", "delivered")

SIZES = """SELECT relname, pg_relation_size(relid), pg_indexes_size(relid), n_dead_tup
             FROM pg_stat_user_tables
            WHERE schemaname = 'kafka' AND relname = ANY(%s)"""


def sample(pg):
    return {name: (heap, index, dead) for name, heap, index, dead in
            pg.query(SIZES, (list(TABLES),))}


def mb(n):
    return f"{n / 1048576:6.1f} MB"


def main():
    kafka = MockCluster(3)
    # partitions enough to keep all messages: the mock keeps 5 MB of each
    kafka.command("create bench_bloat 16 1")
    pg = bench_cluster(kafka, "30s")
    samples = []
    sending = [True]

    def sampler():
        while sending[0]:
            samples.append((time.monotonic(), sample(pg)))
            time.sleep(1)
    try:
        pg.wait_for_worker()
        thread = threading.Thread(target=sampler)
        thread.start()
        start = time.monotonic()
        for i in range(TRANSACTIONS):
            pg.query("SELECT count(kafka_send('bench_bloat', repeat('v', 80), key => (g %% 1000)::text)) "
                     "FROM generate_series(1, %s) g", (PER_TRANSACTION,))
            pause = start + (i + 1) * PER_TRANSACTION / RATE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        sent_for = time.monotonic() - start
        pg.wait_until_final("bench_bloat", timeout=600)
        drained_at = time.monotonic()
        live_delivered = pg.scalar("SELECT avg(pg_column_size(d.*))::int FROM kafka.delivered d")
        time.sleep(45)
        sending[0] = False
        thread.join()
        final = sample(pg)
        total = TRANSACTIONS * PER_TRANSACTION
        print(f"\n{total:,} messages in {TRANSACTIONS} transactions over {sent_for:.0f} s "
              f"({total / sent_for:,.0f} msg/s), status_retention 30s")
        print(f"{'table':<14} {'peak heap':>10} {'peak indexes':>13} {'peak dead rows':>15} "
              f"{'after':>10} {'after, idx':>11}")
        for name in TABLES:
            during = [s[name] for t, s in samples if name in s]
            print(f"{name:<14} {mb(max(d[0] for d in during)):>10} "
                  f"{mb(max(d[1] for d in during)):>13} {max(d[2] for d in during):>15,} "
                  f"{mb(final[name][0]):>10} {mb(final[name][1]):>11}")
        print(f"live data at most: {RATE * 30:,} delivery records "
              f"({mb(RATE * 30 * (live_delivered or 80))} at {live_delivered or 80} B a row) "
              f"and the messages in flight; sampled until {time.monotonic() - drained_at:.0f} s "
              f"after the last delivery")
    finally:
        sending[0] = False
        pg.destroy()
        kafka.stop()


if __name__ == "__main__":
    main()
