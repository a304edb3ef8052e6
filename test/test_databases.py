"""Several databases on one server: a worker each, started by the launcher
as databases and the extension come and go, each with its own producer,
counters and shared-memory slot."""

import json
import os
import signal
import threading
import time
from collections import defaultdict

import psycopg2
import pytest

from harness import PgCluster, consume_all, wait_until
from workload import Workload, account, assert_clean


def header(record, name):
    values = [v for k, v in record.headers if k == name]
    return values[-1].decode() if values else None


def workers(cluster):
    """database -> pid of its kafka_producer worker; none while the server
    restarts"""
    try:
        return dict(cluster.query("SELECT datname, pid FROM pg_stat_activity "
                                  "WHERE backend_type = 'kafka_producer'"))
    except psycopg2.OperationalError:
        return {}


def private_memory_kb(pid):
    """Private resident memory of a process (shared memory left out)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = dict(line.split()[:2] for line in f if line.split()[0].endswith(":"))
    return int(fields["Private_Clean:"]) + int(fields["Private_Dirty:"])


def in_database(cluster, dbname):
    """The same cluster, connecting to dbname."""
    other = PgCluster.__new__(PgCluster)
    other.__dict__.update(cluster.__dict__)
    other.dbname = dbname
    return other


def create_databases(cluster, names):
    for name in names:
        cluster.query(f"CREATE DATABASE {name}")
        in_database(cluster, name).query("CREATE EXTENSION kafka_producer")
    wait_until(lambda: set(names) <= set(workers(cluster)), 30,
               what="a worker in each database")
    return [in_database(cluster, name) for name in names]


@pytest.fixture
def cluster(kafka):
    cluster = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'",
                         "kafka.status_retention": "'1d'"})
    yield cluster
    cluster.destroy()


def stats(db):
    return db.scalar("SELECT kafka_stats()->'kafka_producer'")


def test_three_databases_under_concurrent_load(cluster, kafka):
    """Three databases, each with 4 sessions of transactions (a quarter
    rolled back) at the same time: each database's messages reach Kafka
    once, in order per key, none rolled back; each worker counts only its
    own; kafka_send_sync, kafka_wait, kafka_flush and wait_on_commit reach
    each database's own worker."""
    names = ["multi_a", "multi_b", "multi_c"]
    dbs = create_databases(cluster, names)
    pids = workers(cluster)
    assert len({pids[name] for name in names}) == 3
    before_kb = {name: private_memory_kb(pids[name]) for name in names}

    loads = [Workload(db, f"topic_{name}", seed=i) for i, (name, db) in enumerate(zip(names, dbs))]
    threads = [threading.Thread(target=load.run, kwargs={"sessions": 4, "transactions": 40})
               for load in loads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, db, load in zip(names, dbs, loads):
        db.wait_until_final(load.topic)
        assert_clean(account(db, kafka.bootstrap, load, f"database {name}"))
        counters = stats(db)
        assert counters["worker_pid"] == pids[name]
        assert counters["delivered"] == len(load.committed)

    for name, db in zip(names, dbs):
        message_id, partition, offset = db.query(
            "SELECT id, \"partition\", \"offset\" FROM kafka_send_sync(%s, 'sync')",
            (f"topic_{name}",))[0]
        assert offset is not None
        waited = db.scalar("SELECT kafka_send(%s, 'waited')", (f"topic_{name}",))
        assert db.scalar("SELECT kafka_wait(%s, '30 seconds')", (waited,)) == "delivered"
        db.query("SELECT kafka_send(%s, 'flushed')", (f"topic_{name}",))
        assert db.scalar("SELECT kafka_flush('30 seconds')") is True
        conn = db.connect(autocommit=False)
        cur = conn.cursor()
        cur.execute("SET kafka.wait_on_commit = on")
        cur.execute("SELECT kafka_send(%s, 'on commit')", (f"topic_{name}",))
        on_commit = cur.fetchone()[0]
        conn.commit()
        conn.close()
        assert db.scalar("SELECT status FROM kafka.messages WHERE id = %s", (on_commit,)) == "delivered"

    for name in names:
        after_kb = private_memory_kb(pids[name])
        print(f"worker of {name}: private memory {before_kb[name]} kB at start, "
              f"{after_kb} kB after {len(loads[names.index(name)].committed)} messages")
    slot_bytes = cluster.scalar("SELECT size FROM pg_shmem_allocations WHERE name = 'kafka_producer'")
    print(f"shared memory for kafka.max_databases = 8 slots: {slot_bytes} bytes")


def test_same_ids_in_two_databases_on_one_topic(cluster, kafka):
    """Two databases send messages with the same ids and keys to one topic.
    The second's worker is held (a lock) while the first delivers, then
    killed: the restarted server's workers look for their unrecorded
    messages in Kafka, and the second must not take the first's records,
    which carry its ids, for its own.  Each database's messages arrive
    once, told apart by the database header."""
    first, second = create_databases(cluster, ["same_ids_a", "same_ids_b"])
    n = 3000
    send = "SELECT count(kafka_send('same_ids', i::text, key => (i %% 5)::text)) " \
           "FROM generate_series(1, %s) i"
    first.query(send, (n,))
    first.wait_until_final("same_ids")

    holder = second.connect(autocommit=False)
    holder.cursor().execute("LOCK TABLE kafka.delivery_hold IN ACCESS EXCLUSIVE MODE")
    second.query(send, (n,))
    time.sleep(1)
    assert stats(second)["sent"] == 0, "the second database's worker sent despite the lock"
    os.kill(workers(cluster)["same_ids_b"], signal.SIGKILL)
    holder.close()
    wait_until(lambda: "same_ids_b" in workers(cluster) and "same_ids_a" in workers(cluster),
               60, what="both workers after the crash restart")
    second.wait_until_final("same_ids")

    records = consume_all(kafka.bootstrap, "same_ids")
    by_database = defaultdict(list)
    for r in records:
        by_database[header(r, "kafka_producer.database")].append(r)
    for name, db in (("same_ids_a", first), ("same_ids_b", second)):
        values = sorted(int(r.value) for r in by_database[name])
        print(f"database {name}: {len(values)} records for {n} messages, "
              f"{len(set(values))} distinct")
        assert values == list(range(1, n + 1))
        places = {(r.partition, r.offset): r for r in by_database[name]}
        rows = db.query("SELECT id, status, \"partition\", \"offset\" "
                        "FROM kafka.messages WHERE topic = 'same_ids'")
        assert len(rows) == n
        # each message is recorded where its own record is
        for message_id, status, partition, offset in rows:
            assert status == "delivered"
            assert header(places[(partition, offset)], "kafka_producer.id") == str(message_id)


def test_databases_come_and_go(cluster, kafka):
    """With kafka.databases = '*', a database created after start is served
    within seconds of CREATE EXTENSION, without a restart; DROP EXTENSION
    ends its worker, CREATE EXTENSION brings it back; a plain DROP DATABASE
    succeeds while its worker runs; a database the setting stops naming
    loses its worker at the reload."""
    cluster.query("CREATE DATABASE later")
    later = in_database(cluster, "later")
    time.sleep(6)   # the launcher has looked at it, and found no extension
    assert "later" not in workers(cluster)
    start = time.monotonic()
    later.query("CREATE EXTENSION kafka_producer")
    message_id = later.scalar("SELECT kafka_send('come_and_go', 'served')")
    assert later.scalar("SELECT kafka_wait(%s, '60 seconds')", (message_id,)) == "delivered"
    print(f"CREATE EXTENSION to first delivery: {time.monotonic() - start:.2f} s")

    later.query("DROP EXTENSION kafka_producer")
    wait_until(lambda: "later" not in workers(cluster), 30, what="the worker to leave")
    later.query("CREATE EXTENSION kafka_producer")
    message_id = later.scalar("SELECT kafka_send('come_and_go', 'again')")
    assert later.scalar("SELECT kafka_wait(%s, '60 seconds')", (message_id,)) == "delivered"

    started = time.monotonic()
    cluster.query("DROP DATABASE later")
    print(f"DROP DATABASE with its worker running: {time.monotonic() - started:.2f} s")
    time.sleep(6)
    assert "later" not in workers(cluster)
    log = cluster.log_text()
    assert "FATAL" not in log and "ERROR" not in log

    kept, dropped = create_databases(cluster, ["kept", "unnamed"])
    cluster.set_config(databases="kept")
    wait_until(lambda: "unnamed" not in workers(cluster), 30, what="the reload to stop a worker")
    assert "kafka_producer stops serving database \"unnamed\"" in cluster.log_text()
    with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState,
                       match='does not serve database "unnamed"'):
        dropped.query("SELECT kafka_send('come_and_go', 'refused')")
    message_id = kept.scalar("SELECT kafka_send('come_and_go', 'kept')")
    assert kept.scalar("SELECT kafka_wait(%s, '60 seconds')", (message_id,)) == "delivered"


def test_limits_say_what_is_missing(kafka):
    """kafka.max_databases bounds the slots: one more CREATE EXTENSION
    fails with the limit named.  Too few max_worker_processes: the launcher
    says which database got no worker, and what to raise."""
    cluster = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'",
                         "kafka.max_databases": "2",
                         # the logical replication launcher, ours, one worker
                         "max_worker_processes": "3"})
    try:
        for name in ("limit_a", "limit_b", "limit_c"):
            cluster.query(f"CREATE DATABASE {name}")
        time.sleep(8)   # the launcher has looked for the extension in each
        in_database(cluster, "limit_a").query("CREATE EXTENSION kafka_producer")
        in_database(cluster, "limit_b").query("CREATE EXTENSION kafka_producer")
        wait_until(lambda: "could not start a worker for database" in cluster.log_text(), 30,
                   what="the launcher to run out of processes")
        assert "Raise max_worker_processes" in cluster.log_text()
        with pytest.raises(psycopg2.errors.ConfigurationLimitExceeded,
                           match="cannot serve another database") as refused:
            in_database(cluster, "limit_c").query("CREATE EXTENSION kafka_producer")
        assert "kafka.max_databases" in refused.value.diag.message_detail
    finally:
        cluster.destroy()
