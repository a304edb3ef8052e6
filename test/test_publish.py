"""End-to-end tests of change publishing: the events kafka_publish() emits
are read back with kafka-python and replayed into a copy of the table,
which must then equal the source."""

import json
import random
import threading

import psycopg2

from harness import consume_all, replay_events

SOURCE = """CREATE TABLE replay_src (
    id int PRIMARY KEY, name text, qty int, price numeric(10, 2), tags text[],
    updated timestamptz, data jsonb, blob bytea)"""


def random_change(cur, rng):
    """One random insert, update (sometimes of the key) or delete."""
    id_ = rng.randint(1, 400)
    choice = rng.random()
    if choice < 0.4:
        cur.execute("INSERT INTO replay_src VALUES (%s, %s, %s, %s, %s, now(), %s, %s) "
                    "ON CONFLICT (id) DO NOTHING",
                    (id_, f"n{rng.random()}", rng.randint(-5, 5), round(rng.uniform(0, 1000), 2),
                     [f"t{rng.randint(0, 9)}", None], json.dumps({"r": rng.random()}),
                     bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))))
    elif choice < 0.75:
        cur.execute("UPDATE replay_src SET qty = qty + 1, name = %s, updated = now() "
                    "WHERE id = %s", (f"u{rng.random()}", id_))
    elif choice < 0.85:
        cur.execute("UPDATE replay_src SET id = %s WHERE id = %s "
                    "AND NOT EXISTS (SELECT FROM replay_src WHERE id = %s)",
                    (id_ + 1000, id_, id_ + 1000))
    else:
        cur.execute("DELETE FROM replay_src WHERE id = %s", (id_,))


def session(pg, seed, changes, counts):
    rng = random.Random(seed)
    conn = pg.connect(autocommit=False)
    cur = conn.cursor()
    done = 0
    while done < changes:
        size = rng.randint(1, 5)
        try:
            for _ in range(size):
                random_change(cur, rng)
            if rng.random() < 0.2:
                conn.rollback()
                counts["rolled_back"] += size
            else:
                conn.commit()
                counts["committed"] += size
        except (psycopg2.errors.DeadlockDetected, psycopg2.errors.UniqueViolation):
            conn.rollback()
            counts["rolled_back"] += size
        done += size
    conn.close()


def replay(pg, records):
    """Applies the events to replay_copy, each partition in its order."""
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
            cur.execute("""INSERT INTO replay_copy
                           SELECT * FROM jsonb_populate_record(NULL::replay_copy, %s::jsonb
                                         || jsonb_build_object('blob', decode(%s, 'base64')))
                           ON CONFLICT (id) DO UPDATE SET (name, qty, price, tags, updated, data, blob)
                             = (excluded.name, excluded.qty, excluded.price, excluded.tags,
                                excluded.updated, excluded.data, excluded.blob)""",
                        (json.dumps(event["after"]), event["after"]["blob"]))
        elif event["op"] == "d":
            cur.execute("DELETE FROM replay_copy WHERE id = %s", (event["before"]["id"],))
    conn.close()
    return ops


def test_replay_equals_source(pg, kafka):
    pg.query(SOURCE)
    pg.query("CREATE TABLE replay_copy (LIKE replay_src INCLUDING ALL)")
    pg.query("SELECT kafka_publish('replay_src', topic => 'cdc_replay')")
    counts = {"committed": 0, "rolled_back": 0}
    threads = [threading.Thread(target=session, args=(pg, seed, 2500, counts))
               for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = pg.wait_until_final("cdc_replay", timeout=300)
    assert set(final) == {"delivered"}
    ops = replay(pg, consume_all(kafka.bootstrap, "cdc_replay"))
    missing = pg.scalar("SELECT count(*) FROM (SELECT * FROM replay_src EXCEPT "
                        "SELECT * FROM replay_copy) d")
    extra = pg.scalar("SELECT count(*) FROM (SELECT * FROM replay_copy EXCEPT "
                      "SELECT * FROM replay_src) d")
    rows = pg.scalar("SELECT count(*) FROM replay_src")
    print(f"\ncdc replay: changes={counts['committed'] + counts['rolled_back']} "
          f"committed={counts['committed']} rolled_back={counts['rolled_back']} "
          f"events={sum(ops.values())} {ops} rows={rows} missing={missing} extra={extra}")
    assert (missing, extra) == (0, 0)
    assert rows > 0 and ops.get("d", 0) > 0 and ops.get("u", 0) > 0


def test_snapshot_then_changes(pg, kafka):
    """kafka_publish(snapshot => true) on a table with rows: every row as an
    "r" event, then the changes, and the replay equals the source."""
    pg.query("CREATE TABLE snap_src (id int PRIMARY KEY, v text)")
    pg.query("INSERT INTO snap_src SELECT i, 'v' || i FROM generate_series(1, 500) i")
    pg.query("SELECT kafka_publish('snap_src', topic => 'cdc_snapshot', snapshot => true)")
    pg.query("UPDATE snap_src SET v = v || '!' WHERE id % 3 = 0")
    pg.query("DELETE FROM snap_src WHERE id % 7 = 0")
    pg.wait_until_final("cdc_snapshot")
    state, ops = replay_events(consume_all(kafka.bootstrap, "cdc_snapshot"),
                               lambda r: json.loads(r.value))
    assert ops == {"r": 500, "u": 500 // 3, "d": 500 // 7}
    assert {id_: row["v"] for id_, row in state.items()} == dict(pg.query("SELECT id, v FROM snap_src"))
