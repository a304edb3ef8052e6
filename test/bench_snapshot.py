"""Benchmark: a snapshot of a table of N rows read in the background while
4 sessions update random rows, one row per transaction.  Prints the
writers' latency (p50, p99, max) for WINDOW seconds without a snapshot,
then while the snapshot runs, the snapshot's rows per second, and checks
that the topic, read back with kcat and replayed in message id order,
equals the table.

Run it as a non-root user once the extension is installed:
    /usr/bin/python3 test/bench_snapshot.py [N] [WINDOW]
"""

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import MockCluster, bench_cluster, wait_until  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
WINDOW = float(sys.argv[2]) if len(sys.argv) > 2 else 15
TOPIC = "bench_snapshot"


def writer(pg, seed, stop, latencies):
    rng = random.Random(seed)
    conn = pg.connect(autocommit=True)
    cur = conn.cursor()
    while not stop.is_set():
        start = time.monotonic()
        cur.execute("UPDATE snap SET v = v + 1 WHERE id = %s", (rng.randint(1, N),))
        latencies.append(time.monotonic() - start)
    conn.close()


def run_writers(pg, during):
    """Runs 4 writers while during() runs; returns their latencies."""
    stop, latencies = threading.Event(), []
    threads = [threading.Thread(target=writer, args=(pg, seed, stop, latencies))
               for seed in range(4)]
    for t in threads:
        t.start()
    try:
        during()
    finally:
        stop.set()
        for t in threads:
            t.join()
    return latencies


def describe(latencies):
    ms = sorted(x * 1000 for x in latencies)
    return (f"{len(ms)} updates, p50 {statistics.median(ms):.2f} ms, "
            f"p99 {ms[int(len(ms) * 0.99)]:.2f} ms, max {ms[-1]:.1f} ms")


def replay(kafka):
    """The table the topic describes, its events applied in id order."""
    out = subprocess.run(["kcat", "-C", "-b", kafka.bootstrap, "-t", TOPIC, "-o", "beginning",
                          "-e", "-q", "-f", "%h\t%s\n"], check=True, capture_output=True,
                         text=True).stdout
    events = []
    for line in out.splitlines():
        headers, _, value = line.partition("\t")
        ids = [h.split("=", 1)[1] for h in headers.split(",") if h.startswith("kafka_producer.id=")]
        if value and ids:
            events.append((int(ids[0]), json.loads(value)))
    state = {}
    for _, event in sorted(events, key=lambda e: e[0]):
        row = event["after"] or event["before"]
        if event["op"] == "d":
            state.pop(row["id"], None)
        else:
            state[row["id"]] = row["v"]
    return state, sum(1 for _, e in events if e["op"] == "r")


def main():
    kafka = MockCluster(brokers=3)
    pg = bench_cluster(kafka, "1d")
    try:
        pg.query("CREATE TABLE snap (id int PRIMARY KEY, v int NOT NULL, pad text)")
        pg.query("INSERT INTO snap SELECT i, 0, repeat('x', 40) FROM generate_series(1, %s) i",
                 (N,))
        pg.query("VACUUM ANALYZE snap")
        # the mock keeps 5 MB a partition: enough partitions to read it all back
        kafka.command(f"create {TOPIC} 200 1")
        pg.query(f"SELECT kafka_publish('snap', topic => '{TOPIC}')")

        alone = run_writers(pg, lambda: time.sleep(WINDOW))
        pg.wait_until_final(TOPIC, timeout=600)
        timing = {}

        def snapshot():
            start = time.monotonic()
            pg.query("SELECT kafka_snapshot('snap')")
            wait_until(lambda: pg.scalar("SELECT status FROM kafka.snapshots") == "done",
                       3600, interval=0.05, what="the snapshot")
            timing["seconds"] = time.monotonic() - start

        during = run_writers(pg, snapshot)
        pg.wait_until_final(TOPIC, timeout=1800)
        state, snapshotted = replay(kafka)
        table = dict(pg.query("SELECT id, v FROM snap"))
        print(f"writers without a snapshot: {describe(alone)}")
        print(f"writers during the snapshot: {describe(during)}")
        print(f"snapshot of {N} rows: {timing['seconds']:.1f} s, "
              f"{N / timing['seconds']:,.0f} rows/s, {snapshotted} snapshot events")
        print(f"replay equals the table: {state == table} "
              f"({len(state)} rows replayed, {len(table)} in the table)")
        assert state == table and snapshotted == N
    finally:
        pg.destroy()
        kafka.stop()


if __name__ == "__main__":
    main()
