"""Test harness: a librdkafka mock cluster, a throwaway PostgreSQL with the
extension preloaded, and an independent Kafka client (kafka-python) to read
back what reached the brokers."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import psycopg2
from kafka import KafkaConsumer, TopicPartition

HERE = os.path.dirname(os.path.abspath(__file__))
PG_BINDIR = subprocess.run(["pg_config", "--bindir"], capture_output=True,
                           text=True, check=True).stdout.strip()


def wait_until(predicate, timeout=60, interval=0.1, what="condition"):
    """Polls predicate until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class MockCluster:
    """test/mock_cluster: Kafka brokers on loopback that take fault commands."""

    def __init__(self, brokers=3):
        self.proc = subprocess.Popen(
            [os.path.join(HERE, "mock_cluster"), str(brokers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.bootstrap = self.proc.stdout.readline().strip()
        if not self.bootstrap:
            raise RuntimeError("mock cluster did not start")
        self.brokers = self.bootstrap.split(",")

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        reply = self.proc.stdout.readline().strip()
        if reply != "ok":
            raise RuntimeError(f"mock cluster: {line}: {reply}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """A PostgreSQL cluster in a temporary directory, run by the current
    (non-root) user, with kafka_producer preloaded."""

    def __init__(self, settings, preload=True):
        self.dir = tempfile.mkdtemp(prefix="kp_pg_")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgresql.log")
        self.port = free_port()
        self.dbname = "postgres"
        subprocess.run([os.path.join(PG_BINDIR, "initdb"), "-D", self.data,
                        "-A", "trust", "-U", "postgres", "--no-sync"],
                       check=True, capture_output=True)
        conf = {
            "port": self.port,
            "unix_socket_directories": f"'{self.dir}'",
            "listen_addresses": "''",
            "fsync": "off",
            "max_connections": 50,
            "log_line_prefix": "'%m [%p] %b '",
        }
        if preload:
            conf["shared_preload_libraries"] = "'kafka_producer'"
        conf.update(settings)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for name, value in conf.items():
                f.write(f"{name} = {value}\n")
        self.start()

    @classmethod
    def standby_of(cls, primary):
        """A streaming standby of primary, made with pg_basebackup -R."""
        standby = cls.__new__(cls)
        standby.dir = tempfile.mkdtemp(prefix="kp_standby_")
        standby.data = os.path.join(standby.dir, "data")
        standby.log = os.path.join(standby.dir, "postgresql.log")
        standby.port = free_port()
        standby.dbname = primary.dbname
        subprocess.run([os.path.join(PG_BINDIR, "pg_basebackup"), "-D", standby.data,
                        "-h", primary.dir, "-p", str(primary.port), "-U", "postgres",
                        "-R", "-X", "stream", "-c", "fast", "--no-sync"],
                       check=True, capture_output=True)
        with open(os.path.join(standby.data, "postgresql.conf"), "a") as f:
            f.write(f"port = {standby.port}\nunix_socket_directories = '{standby.dir}'\n")
        standby.start()
        return standby

    def pg_ctl(self, *args):
        subprocess.run([os.path.join(PG_BINDIR, "pg_ctl"), "-D", self.data,
                        "-l", self.log, "-w", *args],
                       check=True, capture_output=True)

    def start(self):
        self.pg_ctl("start")

    def stop(self, mode="fast"):
        self.pg_ctl("stop", "-m", mode)

    def destroy(self):
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def connect(self, autocommit=True):
        conn = psycopg2.connect(host=self.dir, port=self.port, user="postgres",
                                dbname=self.dbname)
        conn.autocommit = autocommit
        return conn

    def query(self, sql, args=None):
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def scalar(self, sql, args=None):
        return self.query(sql, args)[0][0]

    def worker_pid(self):
        rows = self.query("SELECT pid FROM pg_stat_activity "
                          "WHERE backend_type = 'kafka_producer' "
                          "AND datname = current_database()")
        return rows[0][0] if rows else None

    def wait_for_worker(self, timeout=60, other_than=None):
        def running():
            try:
                pid = self.worker_pid()
            except psycopg2.OperationalError:
                return None
            return pid if pid and pid != other_than else None
        return wait_until(running, timeout, what="the kafka_producer worker")

    def set_config(self, **settings):
        """ALTER SYSTEM for each setting (None resets it), then reload."""
        for name, value in settings.items():
            if value is None:
                self.query(f"ALTER SYSTEM RESET kafka.{name}")
            else:
                self.query(f"ALTER SYSTEM SET kafka.{name} = %s", (str(value),))
        self.query("SELECT pg_reload_conf()")

    def wait_until_final(self, topic, timeout=120):
        """Waits until no message of topic is pending; returns the counts."""
        def final():
            pending = self.scalar("SELECT count(*) FROM kafka.messages "
                                  "WHERE topic = %s AND status = 'pending'", (topic,))
            return pending == 0
        wait_until(final, timeout, what=f"messages of {topic} to be final")
        return dict(self.query("SELECT status, count(*) FROM kafka.messages "
                               "WHERE topic = %s GROUP BY status", (topic,)))

    def log_text(self):
        with open(self.log) as f:
            return f.read()


def huge_pages_in_use():
    """Whether any huge page is taken: PostgreSQL 15 does not say itself."""
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    total, free, reserved = (int(info[k]) for k in
                             ("HugePages_Total", "HugePages_Free", "HugePages_Rsvd"))
    return total - free + reserved > 0


def extension_server(kafka):
    """The server the tests run against: the extension created, sending to
    kafka, delivery records kept a day."""
    pg = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'",
                    "kafka.status_retention": "'1d'"})
    pg.query("CREATE EXTENSION kafka_producer")
    return pg


def bench_cluster(kafka, retention):
    """A cluster tuned for the benchmarks: room for a million rows without
    checkpoints in the middle of a measurement, and shared memory in huge
    pages where the kernel has them, since every new backend otherwise
    takes a page fault for each 4 kB of shared buffers it touches."""
    pg = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'",
                    "kafka.status_retention": f"'{retention}'",
                    "shared_buffers": "'1GB'", "max_wal_size": "'8GB'",
                    "checkpoint_timeout": "'30min'", "huge_pages": "'try'"})
    pg.query("CREATE EXTENSION kafka_producer")
    print("shared memory in huge pages:", "yes" if huge_pages_in_use() else
          "no (for steadier timings, as root: sysctl vm.nr_hugepages=600)", flush=True)
    return pg


def consume_all(bootstrap, topic):
    """Every record of every partition of topic, read from the beginning
    to the current end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","),
                             enable_auto_commit=False, group_id=None,
                             api_version=(2, 5, 0))
    try:
        partitions = wait_until(lambda: consumer.partitions_for_topic(topic),
                                30, what=f"metadata of {topic}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records = []
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(r for r in batch if r.offset < end[TopicPartition(topic, r.partition)])
        return records
    finally:
        consumer.close()


def replay_events(records, decode):
    """Applies change events, each partition in its order: returns the last
    image of each row by id, and how many events of each op there were.
    decode(record) gives an event's envelope; tombstones are skipped."""
    state, ops = {}, {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.value is None:
            continue
        event = decode(record)
        ops[event["op"]] = ops.get(event["op"], 0) + 1
        if event["op"] == "d":
            del state[event["before"]["id"]]
        elif event["op"] != "t":
            state[event["after"]["id"]] = event["after"]
    return state, ops


def terminate(pid, sig=signal.SIGTERM):
    os.kill(pid, sig)
