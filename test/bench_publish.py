"""Benchmark: the cost of change publishing.  INSERT of N rows into a
published table next to the same INSERT into an unpublished one, then an
UPDATE of every row of each, in the same run; ratios of the medians.

The brokers are down while a statement is timed, so that the worker does
not drain events at the same time; the drain follows, untimed.

Run it as a non-root user once the extension is installed:
    /usr/bin/python3 test/bench_publish.py [N] [ROUNDS]
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import MockCluster, bench_cluster, wait_until  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3

TABLE = """CREATE TABLE {name} (id bigint PRIMARY KEY, name text NOT NULL, qty int,
    price numeric(10, 2), updated timestamptz NOT NULL)"""
INSERT = """INSERT INTO {name} SELECT i, 'name ' || i, i %% 100, (i %% 10000) / 100.0, now()
    FROM generate_series(1, %(n)s) i"""
UPDATE = "UPDATE {name} SET qty = qty + 1, updated = now() WHERE %(n)s > 0"


def timed(pg, sql):
    start = time.monotonic()
    pg.query(sql, dict(n=N))
    return time.monotonic() - start


def main():
    kafka = MockCluster(3)
    pg = bench_cluster(kafka, "0")
    try:
        for name in ("plain", "published"):
            pg.query(TABLE.format(name=name))
        pg.query("SELECT kafka_publish('published', topic => 'bench_cdc')")
        results = {"insert plain": [], "insert published": [],
                   "update plain": [], "update published": []}
        for _ in range(ROUNDS):
            for name in ("plain", "published"):
                pg.query(f"TRUNCATE {name}")
            wait_until(lambda: not pg.scalar("SELECT EXISTS (SELECT FROM kafka.outbox)"),
                       timeout=600, what="the previous round's events")
            pg.query("VACUUM kafka.outbox")
            pg.query("CHECKPOINT")
            for b in (1, 2, 3):
                kafka.command(f"down {b}")
            for statement in ("insert", "update"):
                sql = INSERT if statement == "insert" else UPDATE
                for name in ("plain", "published"):
                    results[f"{statement} {name}"].append(timed(pg, sql.format(name=name)))
            for b in (1, 2, 3):
                kafka.command(f"up {b}")
        print(f"\n{N} rows, {ROUNDS} rounds, medians")
        for statement in ("insert", "update"):
            plain = results[f"{statement} plain"]
            published = results[f"{statement} published"]
            print(f"{statement.upper():<7} published {statistics.median(published):7.2f} s  vs "
                  f"unpublished {statistics.median(plain):7.2f} s   ratio "
                  f"{statistics.median(published) / statistics.median(plain):4.2f}x   "
                  f"(published {min(published):.2f}..{max(published):.2f})")
    finally:
        pg.destroy()
        kafka.stop()


if __name__ == "__main__":
    main()
