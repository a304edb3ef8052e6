"""Benchmark: the cost of change publishing.  INSERT of N rows into a
table published as JSON, one published as Avro, and an unpublished one,
then an UPDATE of every row of each, in the same run; the median over
rounds of each round's ratio to the unpublished table.

Each statement starts alike: the earlier events delivered and their
delivery records truncated (pruning them would compete), the outbox
tables vacuumed, a checkpoint taken; the brokers are down while it is
timed, so that the worker does not drain events at the same time.

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
    """The seconds sql took, and the bytes of WAL it wrote per row."""
    before = pg.scalar("SELECT pg_current_wal_insert_lsn()")
    start = time.monotonic()
    pg.query(sql, dict(n=N))
    seconds = time.monotonic() - start
    wal = pg.scalar("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (before,))
    return seconds, float(wal) / N


def timed_alone(pg, kafka, sql):
    """Times sql with the earlier events delivered, their delivery records
    gone, the outbox tables vacuumed and the brokers down, so that every
    statement starts alike and the worker's work does not compete with it."""
    wait_until(lambda: not pg.scalar("SELECT EXISTS (SELECT FROM kafka.pending)"),
               timeout=600, what="the earlier events")
    pg.query("TRUNCATE kafka.delivered")
    pg.query("VACUUM kafka.outbox")
    pg.query("VACUUM kafka.outbox_batch")
    pg.query("CHECKPOINT")
    for b in (1, 2, 3):
        kafka.command(f"down {b}")
    try:
        return timed(pg, sql)
    finally:
        for b in (1, 2, 3):
            kafka.command(f"up {b}")


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
        wal = {name: [] for name in results}
        for _ in range(ROUNDS):
            for name in TABLES:
                pg.query(f"TRUNCATE {name}")
            for statement in ("insert", "update"):
                sql = INSERT if statement == "insert" else UPDATE
                for name in TABLES:
                    seconds, wal_per_row = timed_alone(pg, kafka, sql.format(name=name))
                    results[f"{statement} {name}"].append(seconds)
                    wal[f"{statement} {name}"].append(wal_per_row)
        print(f"\n{N} rows, {ROUNDS} rounds, medians; a round's ratio pairs the statements "
              "timed in that round, so that the machine's drift between rounds cancels")
        for statement in ("insert", "update"):
            plain = results[f"{statement} plain"]
            for name in ("json", "avro"):
                published = results[f"{statement} {name}"]
                ratios = [p / q for p, q in zip(published, plain)]
                print(f"{statement.upper():<7} published as {name} {statistics.median(published):7.2f} s"
                      f"  vs unpublished {statistics.median(plain):7.2f} s   ratio "
                      f"{statistics.median(ratios):4.2f}x   ({min(ratios):.2f}..{max(ratios):.2f})")
        for statement in ("insert", "update"):
            print(f"WAL per row, {statement.upper():<7}" + ", ".join(
                f"{name} {statistics.median(wal[f'{statement} {name}']):.0f} B" for name in TABLES))
    finally:
        pg.destroy()
        kafka.stop()


if __name__ == "__main__":
    main()
