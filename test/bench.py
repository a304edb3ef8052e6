"""Benchmark: enqueue and drain throughput, each next to a baseline measured
in the same run on the same machine, and the write cost per message.

  enqueue   SELECT kafka_send(...) FROM generate_series(1, N) in one
            transaction  vs  INSERT of the same rows into a plain table
  drain     N committed messages until all are delivered  vs  kcat
            producing the same N messages to the same mock cluster with
            the same acks, compression and linger, and the same two
            headers every record of ours carries (kafka.id_header and
            kafka.database_header, values of the same lengths); kcat
            without headers is printed beside it, since headers alone
            cost librdkafka about as much as the rest of a small message
  id header the drain with the id header (kafka.id_header) vs without,
            in turns within each round
  WAL       bytes written per message by the enqueue and by the drain
  latency   commit -> delivered, p50 and p99, at a steady 1,000 msg/s, for
            several kafka.linger_ms values
  memory    the worker's private RSS before, during and after the drains

Run it as a non-root user once the extension is installed:
    /usr/bin/python3 test/bench.py [N] [ROUNDS]
"""

import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import MockCluster, bench_cluster, wait_until  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
VALUE = "x" * 80

PLAIN_INSERT = """INSERT INTO bench_plain (topic, key, value)
    SELECT %(topic)s, convert_to((i %% 1000)::text, 'UTF8'), convert_to(%(value)s, 'UTF8')
      FROM generate_series(1, %(n)s) i"""
KAFKA_SEND = """SELECT count(kafka_send(%(topic)s, %(value)s, key => (i %% 1000)::text))
      FROM generate_series(1, %(n)s) i"""


def timed(fn):
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def wal_bytes(pg, fn):
    before = pg.scalar("SELECT pg_current_wal_lsn()")
    fn()
    return pg.scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (before,))


def notified_count(payload):
    """How many ids a kafka_delivery payload such as 'delivered:3,5-9' names."""
    count = 0
    for part in payload.split(":", 1)[1].split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def drain(pg, topic):
    """Enqueues N messages in one transaction; returns the seconds from its
    commit until the last is delivered, and the WAL the drain wrote.  The
    end is seen by LISTEN kafka_delivery: polling the tables would compete
    with the worker for the CPU."""
    listener = pg.connect()
    listener.autocommit = True
    listener.cursor().execute("LISTEN kafka_delivery")
    pg.query(KAFKA_SEND, dict(topic=topic, value=VALUE, n=N))
    committed = time.monotonic()
    before = pg.scalar("SELECT pg_current_wal_lsn()")
    delivered = 0
    while delivered < N:
        if select.select([listener], [], [], 600) == ([], [], []):
            raise TimeoutError(f"the drain: {delivered} of {N} delivered")
        listener.poll()
        while listener.notifies:
            note = listener.notifies.pop(0)
            assert note.payload.startswith("delivered:"), note.payload
            delivered += notified_count(note.payload)
    seconds = time.monotonic() - committed
    listener.close()
    wal = pg.scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (before,))
    recorded = pg.scalar("SELECT count(*) FROM kafka.delivered WHERE topic = %s", (topic,))
    assert recorded == N, f"{recorded} of {N} delivered"
    return seconds, wal


def rss_kb(pid):
    """Private resident memory: shared buffers the worker touched are left out."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def steady_latency(pg, topic, rate=1000, seconds=10):
    """Sends rate messages a second, each in its own transaction; returns
    p50 and p99 of delivered_at - enqueued_at in milliseconds."""
    conn = pg.connect()
    cur = conn.cursor()
    # the topic's creation delays its first messages: not what is measured
    cur.execute("SELECT kafka_send(%s, 'warm-up')", (topic,))
    pg.wait_until_final(topic)
    cur.execute("TRUNCATE kafka.delivered")
    start = time.monotonic()
    for i in range(rate * seconds):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cur.execute("SELECT kafka_send(%s, %s, key => %s)", (topic, VALUE, str(i % 100)))
    conn.close()
    pg.wait_until_final(topic)
    return pg.query("""SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                              percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
                         FROM (SELECT extract(epoch FROM delivered_at - enqueued_at) * 1000 AS ms
                                 FROM kafka.delivered WHERE topic = %s) d""", (topic,))[0]


def kcat_produce(bootstrap, topic, path, headers=()):
    subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", topic, "-K:", "-l",
                    "-X", "acks=all", "-X", "linger.ms=5", "-X", "enable.idempotence=true",
                    "-X", "compression.type=none"]
                   + [arg for header in headers for arg in ("-H", header)] + [path], check=True)


def our_headers(pg):
    """The headers of one of our records, for kcat to carry alike: an id as
    long as the drain's longest and the database's name."""
    return (f"kafka_producer.id={'9' * len(str(N))}",
            f"kafka_producer.database={pg.dbname}")


def paired_ratio(ours, base):
    """The median of the rounds' ratios: each round's two figures were
    measured moments apart, so a machine whose speed drifts moves both."""
    return statistics.median(o / b for o, b in zip(ours, base))


def row(name, ours, base, unit="s"):
    ratio = statistics.median(ours) / statistics.median(base)
    print(f"{name:<34} {statistics.median(ours):8.3f} {unit}  vs {statistics.median(base):8.3f} {unit}"
          f"   ratio {ratio:5.2f}x, paired {paired_ratio(ours, base):5.2f}x   "
          f"(ours {min(ours):.3f}..{max(ours):.3f}, baseline {min(base):.3f}..{max(base):.3f})")


def main():
    kafka = MockCluster(3)
    pg = bench_cluster(kafka, "1h")
    try:
        pg.query("CREATE TABLE bench_plain (id bigserial PRIMARY KEY, topic text NOT NULL, "
                 "key bytea, value bytea, enqueued_at timestamptz NOT NULL DEFAULT now())")
        lines = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        for i in range(1, N + 1):
            lines.write(f"{i % 1000}:{VALUE}\n")
        lines.close()

        worker = pg.wait_for_worker()
        rss = {"before": rss_kb(worker), "during": 0}
        enqueue, insert, drains, kcats, bare_kcats, bare_drains = [], [], [], [], [], []
        enqueue_wal, insert_wal, drain_wal = [], [], []
        for r in range(ROUNDS):
            # enqueue while all brokers are down, so that only the enqueue is timed
            insert_wal.append(wal_bytes(pg, lambda: insert.append(timed(
                lambda: pg.query(PLAIN_INSERT, dict(topic="plain", value=VALUE, n=N))))))
            pg.query("TRUNCATE bench_plain")
            for b in (1, 2, 3):
                kafka.command(f"down {b}")
            enqueue_wal.append(wal_bytes(pg, lambda: enqueue.append(timed(
                lambda: pg.query(KAFKA_SEND, dict(topic=f"enq{r}", value=VALUE, n=N))))))
            for b in (1, 2, 3):
                kafka.command(f"up {b}")
            wait_until(lambda: not pg.scalar("SELECT EXISTS (SELECT FROM kafka.pending)"),
                       timeout=600, what="the enqueue benchmark's messages")
            pg.query("CHECKPOINT")

            kcats.append(timed(lambda: kcat_produce(kafka.bootstrap, f"kcat{r}", lines.name,
                                                    our_headers(pg))))
            bare_kcats.append(timed(lambda: kcat_produce(kafka.bootstrap, f"kcatbare{r}", lines.name)))
            sampling = [True]

            def sample():
                while sampling[0]:
                    rss["during"] = max(rss["during"], rss_kb(worker))
                    time.sleep(0.1)
            sampler = threading.Thread(target=sample)
            sampler.start()
            # with and without the id header, in turns, in the same round
            for header in (("kafka_producer.id", "") if r % 2 == 0 else ("", "kafka_producer.id")):
                pg.set_config(id_header=header)
                wait_until(lambda: pg.scalar("SHOW kafka.id_header") == header,
                           what="the reload")
                seconds, wal = drain(pg, f"drain{r}{'h' if header else ''}")
                (drains if header else bare_drains).append(seconds)
                if header:
                    drain_wal.append(wal)
                pg.query("TRUNCATE kafka.delivered")
                pg.query("VACUUM kafka.outbox, kafka.outbox_batch")
            pg.set_config(id_header=None)
            sampling[0] = False
            sampler.join()
        os.unlink(lines.name)
        rss["after"] = rss_kb(worker)

        latencies = {}
        for linger in (0, 5, 50):
            pg.set_config(linger_ms=linger)
            time.sleep(1)
            latencies[linger] = steady_latency(pg, f"latency{linger}")

        print(f"\n{N} messages of {len(VALUE)} bytes with keys, {ROUNDS} rounds, medians")
        row("enqueue: kafka_send vs INSERT", enqueue, insert)
        row("drain: to delivered vs kcat", drains, kcats)
        for name, base in (("same headers", kcats), ("no headers", bare_kcats)):
            print(f"{'drain vs kcat, ' + name:<34} {N / statistics.median(drains):8.0f} msg/s vs "
                  f"{N / statistics.median(base):8.0f} msg/s  = "
                  f"{statistics.median(base) / statistics.median(drains):.2f}x kcat's, paired "
                  f"{1 / paired_ratio(drains, base):.2f}x")
        print(f"{'drain: id header vs none':<34} {statistics.median(drains):8.3f} s  vs "
              f"{statistics.median(bare_drains):8.3f} s  = the header costs "
              f"{100 * (1 - statistics.median(bare_drains) / statistics.median(drains)):.1f} % "
              f"of the drain's throughput")
        print(f"{'WAL per message: enqueue':<34} {statistics.median(enqueue_wal) / N:8.0f} B"
              f"  vs {statistics.median(insert_wal) / N:8.0f} B (INSERT)")
        print(f"{'WAL per message: drain':<34} {statistics.median(drain_wal) / N:8.0f} B")
        for linger, (p50, p99) in latencies.items():
            print(f"{'latency at 1,000 msg/s, linger ' + str(linger) + ' ms':<34} "
                  f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
        print(f"{'worker private RSS':<34} before {rss['before'] / 1024:.1f} MB, during drains "
              f"(max) {rss['during'] / 1024:.1f} MB, after {rss['after'] / 1024:.1f} MB")
    finally:
        pg.destroy()
        kafka.stop()


if __name__ == "__main__":
    main()
