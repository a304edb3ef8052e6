"""Benchmark: the cost of change publishing.  INSERT of N rows into a
table published as JSON, one published as Avro, and an unpublished one,
then an UPDATE of every row of each, in the same run; ratios of the
medians to the unpublished table.

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
TABLES = ("plain", "json", "avro")


def timed(pg, sql):
    start = time.monotonic()
    pg.query(sql, dict(n=N))
    return time.monotonic() - start


def main():
    kafka = MockCluster(3)
    pg = bench_cluster(kafka, "0")
    try:
        for name in TABLES:
            pg.query(TABLE.format(name=name))
        pg.query("SELECT kafka_publish('json', topic => 'bench_json')")
        pg.query("SELECT kafka_publish('avro', topic => 'bench_avro', format => 'avro')")
        results = {f"{statement} {name}": [] for statement in ("insert", "update")
                   for name in TABLES}
        for _ in range(ROUNDS):
            for name in TABLES:
                pg.query(f"TRUNCATE {name}")
            wait_until(lambda: not pg.scalar("SELECT EXISTS (SELECT FROM kafka.outbox)"),
                       timeout=600, what="the previous round's events")
            pg.query("VACUUM kafka.outbox")
            pg.query("CHECKPOINT")
            for b in (1, 2, 3):
                kafka.command(f"down {b}")
            for statement in ("insert", "update"):
                sql = INSERT if statement == "insert" else UPDATE
                for name in TABLES:
                    results[f"{statement} {name}"].append(timed(pg, sql.format(name=name)))
            for b in (1, 2, 3):
                kafka.command(f"up {b}")
        print(f"\n{N} rows, {ROUNDS} rounds, medians")
        for statement in ("insert", "update"):
            plain = statistics.median(results[f"{statement} plain"])
            for name in ("json", "avro"):
                published = results[f"{statement} {name}"]
                print(f"{statement.upper():<7} published as {name} {statistics.median(published):7.2f} s"
                      f"  vs unpublished {plain:7.2f} s   ratio "
                      f"{statistics.median(published) / plain:4.2f}x   "
                      f"({min(published):.2f}..{max(published):.2f})")
    finally:
        pg.destroy()
        kafka.stop()


if __name__ == "__main__":
    main()
