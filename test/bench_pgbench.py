"""Benchmark: what an application with many sessions committing small
transactions sees.  pgbench, 8 clients on 2 threads, fsync on, each
transaction 3 kafka_send() calls of an 80-byte value with a key, against
the same transaction doing 3 INSERTs of the same rows into a plain table
with a bigserial key; the two alternate, ROUNDS times each, in the same
run, which goes first alternating too, with the worker delivering to the
mock cluster meanwhile and done before the next run starts.  Prints each
round's tps and the median ratio.

Run it as a non-root user once the extension is installed:
    /usr/bin/python3 test/bench_pgbench.py [SECONDS] [ROUNDS]
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import PG_BINDIR, MockCluster, bench_cluster  # noqa: E402

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3

SEND = """\\set k random(1, 1000)
BEGIN;
SELECT kafka_send('bench_pgbench', repeat('v', 80), key => :k::text);
SELECT kafka_send('bench_pgbench', repeat('v', 80), key => :k::text);
SELECT kafka_send('bench_pgbench', repeat('v', 80), key => :k::text);
COMMIT;
"""
INSERT = """\\set k random(1, 1000)
BEGIN;
INSERT INTO plain_sends (topic, key, value) VALUES ('bench_pgbench', convert_to(:k::text, 'UTF8'), convert_to(repeat('v', 80), 'UTF8'));
INSERT INTO plain_sends (topic, key, value) VALUES ('bench_pgbench', convert_to(:k::text, 'UTF8'), convert_to(repeat('v', 80), 'UTF8'));
INSERT INTO plain_sends (topic, key, value) VALUES ('bench_pgbench', convert_to(:k::text, 'UTF8'), convert_to(repeat('v', 80), 'UTF8'));
COMMIT;
"""


def pgbench(pg, script):
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write(script)
        f.flush()
        out = subprocess.run([os.path.join(PG_BINDIR, "pgbench"), "-n", "-c", "8", "-j", "2",
                              "-T", str(SECONDS), "-f", f.name, "-h", pg.dir, "-p", str(pg.port),
                              "-U", "postgres", pg.dbname],
                             check=True, capture_output=True, text=True).stdout
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))


def sends_then_drained(pg):
    """The kafka_send run's tps, once the worker has delivered all of it:
    what it has left must not slow the next run down."""
    tps = pgbench(pg, SEND)
    pg.wait_until_final("bench_pgbench", timeout=600)
    return tps


def main():
    kafka = MockCluster(brokers=3)
    pg = bench_cluster(kafka, "1min")
    try:
        pg.query("ALTER SYSTEM SET fsync = on")
        pg.query("ALTER SYSTEM SET synchronous_commit = on")
        pg.query("SELECT pg_reload_conf()")
        pg.query("CREATE TABLE plain_sends (id bigserial PRIMARY KEY, topic text NOT NULL, "
                 "key bytea, value bytea, enqueued_at timestamptz NOT NULL DEFAULT now())")
        ratios = []
        for r in range(ROUNDS):
            # either may go first: the machine's drift within a round cancels
            if r % 2 == 0:
                plain = pgbench(pg, INSERT)
                sends = sends_then_drained(pg)
            else:
                sends = sends_then_drained(pg)
                plain = pgbench(pg, INSERT)
            ratios.append(sends / plain)
            print(f"round {r + 1}: kafka_send {sends:,.0f} tps, plain INSERT {plain:,.0f} tps, "
                  f"ratio {sends / plain:.2f}", flush=True)
        print(f"median ratio over {ROUNDS} rounds of {SECONDS} s: {statistics.median(ratios):.2f} "
              f"(8 clients, 2 threads, 3 messages or rows a transaction, fsync on)")
    finally:
        pg.destroy()
        kafka.stop()


if __name__ == "__main__":
    main()
