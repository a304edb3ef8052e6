"""End-to-end tests of change publishing: the events kafka_publish() emits
are read back with kafka-python and replayed into a copy of the table,
which must then equal the source."""

import hashlib
import json
import random
import threading
import time
from collections import defaultdict

import psycopg2
import pytest

from harness import consume_all, replay_events, wait_until
from test_faults import all_brokers
from test_avro import decode as decode_avro
from workload import id_header

SOURCE = """CREATE TABLE replay_src (
    id int PRIMARY KEY, name text, qty int, price numeric(10, 2), tags text[],
    updated timestamptz, data jsonb, blob bytea)"""


def random_change(cur, rng, table="replay_src"):
    """One random insert, update (sometimes of the key) or delete."""
    id_ = rng.randint(1, 400)
    choice = rng.random()
    if choice < 0.4:
        cur.execute(f"INSERT INTO {table} (id, name, qty, price, tags, updated, data, blob) "
                    "VALUES (%s, %s, %s, %s, %s, now(), %s, %s) ON CONFLICT (id) DO NOTHING",
                    (id_, f"n{rng.random()}", rng.randint(-5, 5), round(rng.uniform(0, 1000), 2),
                     [f"t{rng.randint(0, 9)}", None], json.dumps({"r": rng.random()}),
                     bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))))
    elif choice < 0.75:
        cur.execute(f"UPDATE {table} SET qty = qty + 1, name = %s, updated = now() "
                    "WHERE id = %s", (f"u{rng.random()}", id_))
    elif choice < 0.85:
        cur.execute(f"UPDATE {table} SET id = %s WHERE id = %s "
                    f"AND NOT EXISTS (SELECT FROM {table} WHERE id = %s)",
                    (id_ + 1000, id_, id_ + 1000))
    else:
        cur.execute(f"DELETE FROM {table} WHERE id = %s", (id_,))


def session(pg, seed, changes, counts, table="replay_src"):
    rng = random.Random(seed)
    conn = pg.connect(autocommit=False)
    cur = conn.cursor()
    done = 0
    while done < changes:
        size = rng.randint(1, 5)
        try:
            for _ in range(size):
                random_change(cur, rng, table)
            if rng.random() < 0.2:
                conn.rollback()
                counts["rolled_back"] += size
            else:
                conn.commit()
                counts["committed"] += size
        except (psycopg2.errors.DeadlockDetected, psycopg2.errors.UniqueViolation,
                psycopg2.errors.SerializationFailure):
            # the last: a row another session moved to another partition
            conn.rollback()
            counts["rolled_back"] += size
        done += size
    conn.close()


def replay(pg, records, copy="replay_copy"):
    """Applies the events to copy, each partition in its order."""
    conn = pg.connect(autocommit=True)
    cur = conn.cursor()
    ops = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if r.value is None:
            continue
        event = json.loads(r.value)
        ops[event["op"]] = ops.get(event["op"], 0) + 1
        assert json.loads(r.key) == {"id": (event["after"] or event["before"])["id"]}
        if event["op"] in ("c", "r", "u"):
            cur.execute(f"""INSERT INTO {copy}
                           SELECT * FROM jsonb_populate_record(NULL::{copy}, %s::jsonb
                                         || jsonb_build_object('blob', decode(%s, 'base64')))
                           ON CONFLICT (id) DO UPDATE SET (name, qty, price, tags, updated, data, blob)
                             = (excluded.name, excluded.qty, excluded.price, excluded.tags,
                                excluded.updated, excluded.data, excluded.blob)""",
                        (json.dumps(event["after"]), event["after"]["blob"]))
        elif event["op"] == "d":
            cur.execute(f"DELETE FROM {copy} WHERE id = %s", (event["before"]["id"],))
    conn.close()
    return ops


def run_and_replay(pg, kafka, table, copy, topic, changes):
    """4 sessions of random changes to table, a fifth of their transactions
    rolled back; the events replayed into copy, which must equal table."""
    counts = {"committed": 0, "rolled_back": 0}
    threads = [threading.Thread(target=session, args=(pg, seed, changes, counts, table))
               for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = pg.wait_until_final(topic, timeout=300)
    assert set(final) == {"delivered"}
    records = consume_all(kafka.bootstrap, topic)
    ops = replay(pg, records, copy)
    columns = "id, name, qty, price, tags, updated, data, blob"
    missing = pg.scalar(f"SELECT count(*) FROM (SELECT {columns} FROM {table} EXCEPT "
                        f"SELECT {columns} FROM {copy}) d")
    extra = pg.scalar(f"SELECT count(*) FROM (SELECT {columns} FROM {copy} EXCEPT "
                      f"SELECT {columns} FROM {table}) d")
    rows = pg.scalar(f"SELECT count(*) FROM {table}")
    print(f"\n{table} replay: changes={counts['committed'] + counts['rolled_back']} "
          f"committed={counts['committed']} rolled_back={counts['rolled_back']} "
          f"events={sum(ops.values())} {ops} rows={rows} missing={missing} extra={extra}")
    assert (missing, extra) == (0, 0)
    assert rows > 0 and ops.get("d", 0) > 0 and ops.get("u", 0) > 0
    return records


def test_replay_equals_source(pg, kafka):
    pg.query(SOURCE)
    pg.query("CREATE TABLE replay_copy (LIKE replay_src INCLUDING ALL)")
    pg.query("SELECT kafka_publish('replay_src', topic => 'cdc_replay')")
    run_and_replay(pg, kafka, "replay_src", "replay_copy", "cdc_replay", 2500)


def test_partitioned_table(pg, kafka):
    """kafka_publish on a partitioned table publishes every partition under
    its options: one attached before publishing (its columns numbered
    otherwise, after a dropped one), one created after, one attached after
    with its columns in another order, and a sub-partitioned one.  An
    UPDATE that moves a row to another partition gives a delete (and its
    tombstone) then a create.  Events name the partitioned table in
    source.table, and the partition in source.partition.  The replay under
    4 sessions with rollbacks equals the source; a detached partition is no
    longer published; kafka_snapshot reads every partition; kafka_unpublish
    leaves no trigger behind."""
    pg.query(SOURCE.replace("replay_src", "part_src").replace(
        "blob bytea)", "blob bytea) PARTITION BY RANGE (id)"))
    pg.query("CREATE TABLE part_copy (LIKE part_src)")
    pg.query("ALTER TABLE part_copy ADD PRIMARY KEY (id)")
    pg.query("CREATE TABLE part_low (gone int, LIKE part_src)")
    pg.query("ALTER TABLE part_low DROP COLUMN gone")
    pg.query("ALTER TABLE part_src ATTACH PARTITION part_low FOR VALUES FROM (MINVALUE) TO (200)")
    pg.query("SELECT kafka_publish('part_src', topic => 'cdc_partitioned')")
    pg.query("CREATE TABLE part_mid PARTITION OF part_src FOR VALUES FROM (200) TO (1000)")
    pg.query("CREATE TABLE part_moved PARTITION OF part_src FOR VALUES FROM (1000) TO (MAXVALUE) "
             "PARTITION BY RANGE (id)")
    pg.query("CREATE TABLE part_moved_1 PARTITION OF part_moved FOR VALUES FROM (1000) TO (1200)")
    pg.query("CREATE TABLE part_moved_2 (blob bytea, data jsonb, updated timestamptz, tags text[], "
             "price numeric(10, 2), qty int, name text, id int NOT NULL)")
    pg.query("ALTER TABLE part_moved ATTACH PARTITION part_moved_2 FOR VALUES FROM (1200) TO (MAXVALUE)")

    records = run_and_replay(pg, kafka, "part_src", "part_copy", "cdc_partitioned", 1500)
    sources = {(json.loads(r.value)["source"]["table"], json.loads(r.value)["source"]["partition"])
               for r in records if r.value is not None}
    assert sources == {("part_src", name) for name in
                       ("part_low", "part_mid", "part_moved_1", "part_moved_2")}

    # a row moved to another partition: a delete and its tombstone, then a create
    pg.query("DELETE FROM part_src WHERE id IN (150, 250)")
    pg.query("INSERT INTO part_src (id, name) VALUES (150, 'mover')")
    pg.query("UPDATE part_src SET id = 250, name = 'moved' WHERE id = 150")
    pg.wait_until_final("cdc_partitioned")
    moved = sorted((r for r in consume_all(kafka.bootstrap, "cdc_partitioned")
                    if r.key in (b'{"id":150}', b'{"id":250}')), key=id_header)
    events = [(r.key, r.value and json.loads(r.value)["op"],
               r.value and json.loads(r.value)["source"]["partition"]) for r in moved]
    assert events[-3:] == [(b'{"id":150}', "d", "part_low"), (b'{"id":150}', None, None),
                           (b'{"id":250}', "c", "part_mid")]

    pg.query("ALTER TABLE part_src DETACH PARTITION part_mid")
    pg.query("INSERT INTO part_mid (id, name) VALUES (999, 'detached')")
    pg.query("INSERT INTO part_src (id, name) VALUES (1, 'attached') ON CONFLICT (id) DO NOTHING")
    rows = pg.scalar("SELECT count(*) FROM part_src")
    pg.query("SELECT kafka_snapshot('part_src')")
    assert wait_for_snapshot(pg, "part_src") == rows
    pg.wait_until_final("cdc_partitioned")
    after = consume_all(kafka.bootstrap, "cdc_partitioned")
    assert not [r for r in after if r.key == b'{"id":999}']
    snapshot = [json.loads(r.value) for r in after if r.value and json.loads(r.value)["op"] == "r"]
    assert len(snapshot) == rows
    assert "part_mid" not in {e["source"]["partition"] for e in snapshot}

    pg.query("TRUNCATE part_src")
    pg.wait_until_final("cdc_partitioned")
    last = consume_all(kafka.bootstrap, "cdc_partitioned")
    truncates = [json.loads(r.value) for r in last if r.value and json.loads(r.value)["op"] == "t"]
    assert [(e["source"]["table"], e["source"].get("partition")) for e in truncates] == \
        [("part_src", None)]

    pg.query("SELECT kafka_unpublish('part_src')")
    assert pg.scalar("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                     "WHERE c.relname LIKE 'part_%%' AND t.tgname LIKE 'kafka%%'") == 0


def wait_for_snapshot(pg, table, timeout=300):
    """Waits until the table's last snapshot is done; returns its rows."""
    def done():
        status, rows = pg.query("SELECT status, rows_done FROM kafka.snapshots "
                                "WHERE \"table\" = %s::regclass ORDER BY id DESC LIMIT 1",
                                (table,))[0]
        assert status in ("running", "done"), status
        return status == "done" and (rows,)
    return wait_until(done, timeout, what=f"the snapshot of {table}")[0]


def test_snapshot_then_changes(pg, kafka):
    """kafka_publish(snapshot => true) on a table with rows: every row as an
    "r" event, then the changes, and the replay equals the source."""
    pg.query("CREATE TABLE snap_src (id int PRIMARY KEY, v text)")
    pg.query("INSERT INTO snap_src SELECT i, 'v' || i FROM generate_series(1, 500) i")
    pg.query("SELECT kafka_publish('snap_src', topic => 'cdc_snapshot', snapshot => true)")
    wait_for_snapshot(pg, "snap_src")
    pg.query("UPDATE snap_src SET v = v || '!' WHERE id % 3 = 0")
    pg.query("DELETE FROM snap_src WHERE id % 7 = 0")
    pg.wait_until_final("cdc_snapshot")
    state, ops = replay_events(consume_all(kafka.bootstrap, "cdc_snapshot"),
                               lambda r: json.loads(r.value))
    assert ops == {"r": 500, "u": 500 // 3, "d": 500 // 7}
    assert {id_: row["v"] for id_, row in state.items()} == dict(pg.query("SELECT id, v FROM snap_src"))


def test_flat_masked_hashed_events(pg, kafka, settings):
    """envelope => 'row' sends the row alone with __op, __table,
    __source_ts_ms and __deleted (a delete: the row before it, then its
    tombstone); masked columns arrive as ****, hashed ones (key included)
    as SHA-256 of kafka.hash_salt and their text, NULL as NULL; in Avro
    too, as strings.  Hashing without a salt is refused."""
    pg.query("CREATE TABLE flat_src (id int PRIMARY KEY, email text, ssn text, qty int)")
    with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState,
                       match="kafka.hash_salt must be set"):
        pg.query("SELECT kafka_publish('flat_src', hash_columns => ARRAY['email'])")
    settings(hash_salt="pepper")
    wait_until(lambda: pg.scalar("SHOW kafka.hash_salt") == "pepper", 10, what="the reload")

    def sha(value):
        return hashlib.sha256(("pepper" + value).encode()).hexdigest()

    def expected(id_, email, qty, op):
        return {"id": sha(str(id_)), "email": email and sha(email), "ssn": "****" if id_ == 1 else None,
                "qty": qty, "__op": op, "__table": "flat_src", "__deleted": str(op == "d").lower()}

    for fmt in ("json", "avro"):
        topic = f"cdc_flat_{fmt}"
        pg.query("SELECT kafka_publish('flat_src', topic => %s, format => %s, envelope => 'row', "
                 "mask_columns => ARRAY['ssn'], hash_columns => ARRAY['id', 'email'])", (topic, fmt))
        pg.query("INSERT INTO flat_src VALUES (1, 'a@example.com', '123-45-6789', 5), (2, NULL, NULL, 7)")
        pg.query("UPDATE flat_src SET qty = 6 WHERE id = 1")
        pg.query("DELETE FROM flat_src WHERE id = 2")
        pg.query("TRUNCATE flat_src")
        pg.wait_until_final(topic)
        records = sorted(consume_all(kafka.bootstrap, topic), key=id_header)
        if fmt == "json":
            values = [r.value and json.loads(r.value) for r in records]
            keys = [json.loads(r.key) for r in records]
        else:
            values = [r.value and decode_avro(pg, r.value, f"{topic}-value") for r in records]
            keys = [decode_avro(pg, r.key, f"{topic}-key") for r in records]
        for value in values:
            if value:
                assert value.pop("__source_ts_ms") > 0
        assert values == [expected(1, "a@example.com", 5, "c"), expected(2, None, 7, "c"),
                          expected(1, "a@example.com", 6, "u"), expected(2, None, 7, "d"), None]
        assert keys == [{"id": sha(str(i))} for i in (1, 2, 1, 2, 2)]


def snapshot_writer(pg, table, seed, stop, counts):
    """Updates, deletes and inserts random rows of table until stop is set."""
    rng = random.Random(seed)
    conn = pg.connect(autocommit=True)
    cur = conn.cursor()
    while not stop.is_set():
        id_ = rng.randint(1, counts["rows"] + 1000)
        choice = rng.random()
        start = time.monotonic()
        if choice < 0.7:
            cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (id_,))
        elif choice < 0.85:
            cur.execute(f"DELETE FROM {table} WHERE id = %s", (id_,))
        else:
            cur.execute(f"INSERT INTO {table} VALUES (%s, 0) ON CONFLICT (id) DO NOTHING", (id_,))
        counts["latencies"].append(time.monotonic() - start)
    conn.close()


def snapshot_replay(pg, kafka, table, topic):
    """Replays the topic in id order; every row's snapshot event comes once
    at most, and the replay equals the table."""
    state, snapshots = {}, defaultdict(int)
    for r in sorted(consume_all(kafka.bootstrap, topic), key=id_header):
        if r.value is None:
            continue
        event = json.loads(r.value)
        row = event["after"] or event["before"]
        if event["op"] == "d":
            state.pop(row["id"], None)
        else:
            state[row["id"]] = row["v"]
        snapshots[row["id"]] += event["op"] == "r"
    assert max(snapshots.values()) == 1
    assert state == dict(pg.query(f"SELECT id, v FROM {table}"))
    return sum(snapshots.values())


def test_snapshot_in_chunks_while_writers_run(pg, kafka):
    """kafka_snapshot() of 30,000 rows while 4 sessions update, delete and
    insert random rows: the worker reads it a chunk at a time, writers are
    never held for the whole snapshot, each row's snapshot event comes at
    most once and never over a newer change, and the replay equals the
    table."""
    table, topic = "snap_live", "cdc_snap_live"
    pg.query(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
    pg.query(f"INSERT INTO {table} SELECT i, 0 FROM generate_series(1, 30000) i")
    pg.query(f"SELECT kafka_publish('{table}', topic => '{topic}')")
    stop = threading.Event()
    counts = {"rows": 30000, "latencies": []}
    writers = [threading.Thread(target=snapshot_writer, args=(pg, table, seed, stop, counts))
               for seed in range(4)]
    for w in writers:
        w.start()
    try:
        time.sleep(0.5)
        pg.query(f"SELECT kafka_snapshot('{table}')")
        rows = wait_for_snapshot(pg, table)
        time.sleep(0.5)
    finally:
        stop.set()
        for w in writers:
            w.join()
    pg.wait_until_final(topic, timeout=300)
    snapshotted = snapshot_replay(pg, kafka, table, topic)
    print(f"\nsnapshot of {rows} rows under {len(counts['latencies'])} concurrent changes: "
          f"{snapshotted} snapshot events, slowest write {max(counts['latencies']) * 1000:.0f} ms")
    assert snapshotted == rows


def test_snapshot_resumes_after_a_restart(pg, kafka):
    """A snapshot cut by a server restart goes on after its last chunk: each
    row is read once, and the replay equals the table.  With every broker
    down it pauses once 15,000 of its events are in flight, which is where
    the restart cuts it.  Canceling stops one; a chunk that fails fails its
    snapshot without stopping the next."""
    table, topic, rows = "snap_restart", "cdc_snap_restart", 40000
    pg.query(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
    pg.query(f"INSERT INTO {table} SELECT i, 0 FROM generate_series(1, {rows}) i")
    pg.query(f"SELECT kafka_publish('{table}', topic => '{topic}')")
    all_brokers(kafka, "down")
    try:
        pg.query(f"SELECT kafka_snapshot('{table}')")
        wait_until(lambda: pg.scalar("SELECT rows_done FROM kafka.snapshots "
                                     "WHERE \"table\" = %s::regclass", (table,)) >= 15000, 60,
                   what="the snapshot to pause with 15,000 events in flight")
        pg.stop()
        pg.start()
        done_before = pg.scalar("SELECT rows_done FROM kafka.snapshots "
                                "WHERE \"table\" = %s::regclass", (table,))
        assert done_before < rows
    finally:
        all_brokers(kafka, "up")
    assert wait_for_snapshot(pg, table) == rows
    assert pg.wait_until_final(topic, timeout=300) == {"delivered": rows}
    assert snapshot_replay(pg, kafka, table, topic) == rows
    print(f"\nsnapshot cut at {done_before} rows by a restart, resumed to {rows}")

    pg.query(f"SELECT kafka_snapshot('{table}', \"where\" => 'id > 0')")
    assert pg.scalar(f"SELECT kafka_snapshot_cancel('{table}')") == 1
    assert pg.query("SELECT status FROM kafka.snapshots WHERE \"table\" = %s::regclass "
                    "ORDER BY id DESC LIMIT 1", (table,)) == [("canceled",)]

    pg.query(f"SELECT kafka_snapshot('{table}', \"where\" => 'v / (id - 20000) > -1')")
    pg.query(f"SELECT kafka_snapshot('{table}', \"where\" => 'id <= 10')")
    assert wait_for_snapshot(pg, table) == 10
    assert pg.query("SELECT status, error FROM kafka.snapshots WHERE \"table\" = %s::regclass "
                    "ORDER BY id DESC LIMIT 1 OFFSET 1", (table,)) == [("failed", "division by zero")]


def test_schema_change_events_in_order(pg, kafka, settings):
    """ALTER TABLE of a published table puts an event on the database's
    schema-changes topic, with the DDL and the new columns, ordered by id
    between the data events before it and those after it, which carry the
    new column."""
    pg.query("CREATE TABLE ddl_src (id int PRIMARY KEY, v text)")
    pg.query("SELECT kafka_publish('ddl_src', topic => 'cdc_ddl')")
    pg.query("INSERT INTO ddl_src VALUES (1, 'before')")
    pg.query("ALTER TABLE ddl_src ADD COLUMN added int NOT NULL DEFAULT 7")
    pg.query("INSERT INTO ddl_src VALUES (2, 'after', 8)")
    pg.query("ALTER TABLE ddl_src RENAME COLUMN v TO renamed")
    pg.query("UPDATE ddl_src SET renamed = 'again' WHERE id = 1")
    pg.wait_until_final("cdc_ddl")
    pg.wait_until_final("postgres.schema_changes")
    records = sorted(consume_all(kafka.bootstrap, "cdc_ddl") +
                     [r for r in consume_all(kafka.bootstrap, "postgres.schema_changes")
                      if json.loads(r.value)["tableChanges"][0]["id"] == 'postgres.public.ddl_src'],
                     key=id_header)
    shape = []
    for r in records:
        event = json.loads(r.value)
        if "ddl" in event:
            table = event["tableChanges"][0]["table"]
            assert json.loads(r.key) == {"databaseName": "postgres"}
            shape.append(("ddl", event["ddl"].split()[3],
                          [c["name"] for c in table["columns"]], table["primaryKeyColumnNames"]))
        else:
            shape.append((event["op"], sorted(event["after"])))
    assert shape == [
        ("c", ["id", "v"]),
        ("ddl", "ADD", ["id", "v", "added"], ["id"]),
        ("c", ["added", "id", "v"]),
        ("ddl", "RENAME", ["id", "renamed", "added"], ["id"]),
        ("u", ["added", "id", "renamed"])]


CONNECT_TYPES = {"int16": int, "int32": int, "int64": int, "float": float, "double": float,
                 "boolean": bool, "string": str, "bytes": str}


def conforms(schema, value):
    """Whether value is what Kafka Connect's JsonConverter reads with
    schema (schemas.enable=true): every field present and of its type."""
    if value is None:
        return schema.get("optional", False)
    if schema["type"] == "struct":
        return isinstance(value, dict) and \
            set(value) <= {f["field"] for f in schema["fields"]} | {"partition"} and \
            all(conforms(f, value.get(f["field"])) for f in schema["fields"])
    if schema["type"] == "array":
        return isinstance(value, list) and all(conforms(schema["items"], v) for v in value)
    expected = CONNECT_TYPES[schema["type"]]
    return isinstance(value, expected) or (expected is float and isinstance(value, int))


def test_json_with_its_connect_schema(pg, kafka):
    """format => 'json_schema' writes keys and values as Kafka Connect's
    JsonConverter does with schemas.enable=true, with the types and names
    Debezium's PostgreSQL connector gives (decimal.handling.mode=string,
    time.precision.mode adaptive with time_format 'epoch'): every payload
    conforms to its schema, in the Debezium envelope and flat."""
    pg.query("""CREATE TABLE connect_src (id int PRIMARY KEY, name text NOT NULL, small smallint,
                big bigint, ratio real, score double precision, flag boolean, price numeric(10, 2),
                raw bytea, ident uuid, doc jsonb, day date, at_time time, stamp timestamp,
                stamptz timestamptz, tags text[])""")
    insert = """INSERT INTO connect_src VALUES (%s, 'n', 1, 2, 0.5, 1.5, true, 9.99, '\\x0102',
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '2024-01-02', '10:11:12',
                '2024-01-02 10:11:12.5', '2024-01-02 10:11:12.5+00', ARRAY['x', NULL])"""
    for envelope in ("debezium", "row"):
        topic = f"cdc_connect_{envelope}"
        pg.query("SELECT kafka_publish('connect_src', topic => %s, format => 'json_schema', "
                 "time_format => 'epoch', envelope => %s)", (topic, envelope))
        pg.query(insert, (1,))
        pg.query("UPDATE connect_src SET price = NULL, doc = NULL WHERE id = 1")
        pg.query("DELETE FROM connect_src WHERE id = 1")
        pg.wait_until_final(topic)
        records = [r for r in consume_all(kafka.bootstrap, topic) if r.value is not None]
        assert len(records) == 3
        for r in records:
            key, value = json.loads(r.key), json.loads(r.value)
            assert key["schema"] == {"type": "struct", "optional": False,
                                     "name": "postgres.public.connect_src.Key",
                                     "fields": [{"type": "int32", "optional": False, "field": "id"}]}
            assert key["payload"] == {"id": 1}
            assert conforms(key["schema"], key["payload"])
            assert conforms(value["schema"], value["payload"]), value
        schema = json.loads(records[0].value)["schema"]
        if envelope == "debezium":
            assert schema["name"] == "postgres.public.connect_src.Envelope"
            assert [f["field"] for f in schema["fields"]] == ["before", "after", "source", "op", "ts_ms"]
            source = schema["fields"][2]
            assert source["name"] == "io.debezium.connector.postgresql.Source"
            row = schema["fields"][1]
            assert row["name"] == "postgres.public.connect_src.Value" and row["optional"]
        else:
            row = schema
            assert [f["field"] for f in schema["fields"]][-4:] == \
                ["__op", "__table", "__source_ts_ms", "__deleted"]
        fields = {f["field"]: f for f in row["fields"]}
        semantic = {name: (f["type"], f.get("name")) for name, f in fields.items()}
        assert semantic["id"] == ("int32", None) and not fields["id"]["optional"]
        assert semantic["name"] == ("string", None) and not fields["name"]["optional"]
        assert semantic["small"] == ("int16", None)
        assert semantic["big"] == ("int64", None)
        assert semantic["ratio"] == ("float", None)
        assert semantic["score"] == ("double", None)
        assert semantic["flag"] == ("boolean", None)
        assert semantic["price"] == ("string", None)
        assert semantic["raw"] == ("bytes", None)
        assert semantic["ident"] == ("string", "io.debezium.data.Uuid")
        assert semantic["doc"] == ("string", "io.debezium.data.Json")
        assert semantic["day"] == ("int32", "io.debezium.time.Date")
        assert semantic["at_time"] == ("int64", "io.debezium.time.MicroTime")
        assert semantic["stamp"] == ("int64", "io.debezium.time.MicroTimestamp")
        assert semantic["stamptz"] == ("string", "io.debezium.time.ZonedTimestamp")
        assert fields["tags"]["type"] == "array" and fields["tags"]["items"]["type"] == "string"
        created = json.loads(records[0].value)["payload"]
        image = created["after"] if envelope == "debezium" else created
        assert image["doc"] == '{"a": [1, 2]}' and image["price"] == "9.99"
        assert image["day"] == 19724 and image["stamp"] == 1704190272500000
