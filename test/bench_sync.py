"""Benchmark: kafka_send_sync() latency next to a bare librdkafka
produce-and-flush of one message (test/produce_flush), both to the same
mock cluster in the same run, one message at a time.

  bare      produce + rd_kafka_flush() in one C process, acks=all,
            idempotence on, linger.ms 0
  function  each call of kafka_send_sync() timed inside the server with
            clock_timestamp(): what the function adds, without the
            client's round trip
  client    each SELECT kafka_send_sync(...) timed by a psycopg2 client:
            what an application sees

Each round measures COUNT sends of each kind; the table gives the median
over the rounds of each percentile.

Run it as a non-root user once the extension is installed and
test/produce_flush is built:
    /usr/bin/python3 test/bench_sync.py [COUNT] [ROUNDS]
"""

import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import MockCluster, PgCluster  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
VALUE = "x" * 80

TIMED_IN_SERVER = """
CREATE FUNCTION timed_sync_sends(topic text, n integer) RETURNS SETOF double precision
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz;
BEGIN
    FOR i IN 1..n LOOP
        started := clock_timestamp();
        PERFORM kafka_send_sync(topic, repeat('x', 80), key => 'k');
        RETURN NEXT extract(epoch FROM clock_timestamp() - started) * 1e6;
    END LOOP;
END
$$"""


def percentiles(samples):
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]


def bare(bootstrap, topic):
    out = subprocess.run([os.path.join(HERE, "produce_flush"), bootstrap, topic, str(COUNT)],
                         check=True, capture_output=True, text=True).stdout
    return [float(line) for line in out.split()]


def in_server(pg, topic):
    return [r[0] for r in pg.query("SELECT * FROM timed_sync_sends(%s, %s)", (topic, COUNT))]


def from_client(pg, topic):
    conn = pg.connect()
    cur = conn.cursor()
    samples = []
    for _ in range(COUNT):
        started = time.perf_counter()
        cur.execute("SELECT kafka_send_sync(%s, %s, key => 'k')", (topic, VALUE))
        cur.fetchone()
        samples.append((time.perf_counter() - started) * 1e6)
    conn.close()
    return samples


def main():
    kafka = MockCluster(3)
    pg = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'"})
    try:
        pg.query("CREATE EXTENSION kafka_producer")
        pg.query(TIMED_IN_SERVER)
        # topics exist, connections are up: first sends are not measured
        pg.query("SELECT kafka_send_sync('sync_bench', 'warm-up')")
        results = {"bare": [], "function": [], "client": []}
        for _ in range(ROUNDS):
            results["bare"].append(percentiles(bare(kafka.bootstrap, "sync_bench")))
            results["function"].append(percentiles(in_server(pg, "sync_bench")))
            results["client"].append(percentiles(from_client(pg, "sync_bench")))
        print(f"\nlatency of one acknowledged message, {COUNT} sends x {ROUNDS} rounds, "
              "median over rounds, microseconds")
        base = [statistics.median(p[i] for p in results["bare"]) for i in (0, 1)]
        for name, rounds in results.items():
            p50, p99 = (statistics.median(p[i] for p in rounds) for i in (0, 1))
            print(f"{name:<10} p50 {p50:8.0f} us ({p50 / base[0]:4.2f}x)   "
                  f"p99 {p99:8.0f} us ({p99 / base[1]:4.2f}x)")
    finally:
        pg.destroy()
        kafka.stop()


if __name__ == "__main__":
    main()
