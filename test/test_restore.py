"""pg_dump and pg_restore into a fresh cluster whose OIDs differ: every
published table keeps its topic, options and row filter, and the restored
copy sends none of the original's messages unless asked."""

import collections
import json
import os
import subprocess
import time

from harness import PG_BINDIR, PgCluster, consume_all
from test_faults import all_brokers
from workload import id_header


def cluster(kafka):
    pg = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'",
                    "kafka.status_retention": "'1d'"})
    pg.query("CREATE ROLE shop_owner")
    return pg


def insert_orders(pg, first, last):
    """Orders first..last; every fifth a draft, which the filter leaves out."""
    pg.query("INSERT INTO orders (id, region, status, secret) "
             "SELECT i, 'r' || i %% 3, CASE WHEN i %% 5 = 0 THEN 'draft' ELSE 'paid' END, 'x' "
             "FROM generate_series(%s, %s) i", (first, last))


def send(pg, first, last):
    pg.query("SELECT count(kafka_send('restore.sends', i::text, key => i::text)) "
             "FROM generate_series(%s, %s) i", (first, last))


def restore(dump, pg):
    subprocess.run([os.path.join(PG_BINDIR, "pg_restore"), "-j", "4", "--exit-on-error",
                    "-h", pg.dir, "-p", str(pg.port), "-U", "postgres", "-d", pg.dbname, dump],
                   check=True, capture_output=True)


def keys(records):
    return collections.Counter(r.key for r in records)


def test_restored_copy_publishes_by_name_and_holds_the_originals_messages(kafka, tmp_path):
    original = cluster(kafka)
    copy = None
    try:
        original.query("CREATE EXTENSION kafka_producer")
        # a dropped column: the restored table numbers its columns differently
        original.query("CREATE TABLE orders (id int PRIMARY KEY, dropped int, region text, "
                       "status text, secret text)")
        original.query("ALTER TABLE orders DROP COLUMN dropped")
        original.query("ALTER TABLE orders OWNER TO shop_owner")
        original.query("SELECT kafka_publish('orders', topic => 'restore.orders', "
                       "columns => ARRAY['id', 'region', 'status'], "
                       "\"where\" => $$status <> 'draft'$$)")
        insert_orders(original, 1, 50)
        send(original, 1, 50)
        original.wait_until_final("restore.orders")
        original.wait_until_final("restore.sends")

        all_brokers(kafka, "down")
        insert_orders(original, 51, 100)
        send(original, 51, 100)
        pending = original.scalar("SELECT count(*) FROM kafka.messages WHERE status = 'pending'")
        assert pending == 40 + 50
        dump = str(tmp_path / "original.dump")
        subprocess.run([os.path.join(PG_BINDIR, "pg_dump"), "-Fc", "-f", dump,
                        "-h", original.dir, "-p", str(original.port), "-U", "postgres",
                        original.dbname], check=True, capture_output=True)

        copy = cluster(kafka)
        for i in range(20):
            copy.query(f"CREATE TABLE filler_{i} (a int)")
        restore(dump, copy)
        assert copy.scalar("SELECT 'orders'::regclass::oid") != \
            original.scalar("SELECT 'orders'::regclass::oid")
        assert copy.scalar("SELECT attnum FROM pg_attribute WHERE attrelid = 'orders'::regclass "
                           "AND attname = 'status'") == 3
        assert copy.query("SELECT topic, columns, row_filter FROM kafka.publications") == \
            [("restore.orders", ["id", "region", "status"], "status <> 'draft'")]
        assert copy.scalar("SELECT count(*) FROM kafka.delivery_hold") == 1
        assert copy.scalar("SELECT count(*) FROM kafka.messages WHERE status = 'pending'") == \
            pending

        # the original delivers its messages; the copy holds the same ones
        all_brokers(kafka, "up")
        original.wait_until_final("restore.orders")
        original.wait_until_final("restore.sends")
        time.sleep(3)
        assert "kafka_producer holds delivery" in copy.log_text()
        assert copy.scalar("SELECT count(*) FROM kafka.messages WHERE status = 'pending'") == \
            pending
        assert max(keys(consume_all(kafka.bootstrap, "restore.sends")).values()) == 1
        assert max(keys(consume_all(kafka.bootstrap, "restore.orders")).values()) == 1

        # asked to, the copy discards the original's messages
        assert copy.scalar("SELECT kafka_discard()") == pending

        # the restored table publishes with its options and filter, as its owner
        insert_orders(copy, 101, 110)
        assert copy.scalar("SELECT count(*) FROM kafka.pending WHERE topic = 'restore.orders'") == 8
        event = json.loads(copy.scalar(
            "SELECT convert_from(value, 'UTF8') FROM kafka.pending "
            "WHERE topic = 'restore.orders' ORDER BY id DESC LIMIT 1"))
        assert event["after"] == {"id": 109, "region": "r1", "status": "paid"}
        assert copy.scalar("SELECT f.proowner::regrole::text FROM kafka.publication p "
                           "JOIN pg_proc f ON f.oid = p.row_filter_function") == "shop_owner"

        # and, resumed, delivers its own messages once
        copy.query("SELECT kafka_resume()")
        send(copy, 101, 110)
        copy.wait_until_final("restore.sends")
        copy.wait_until_final("restore.orders")
        sends = consume_all(kafka.bootstrap, "restore.sends")
        assert len(sends) == 110 and max(keys(sends).values()) == 1
        orders = consume_all(kafka.bootstrap, "restore.orders")
        assert len(orders) == 80 + 8 and max(keys(orders).values()) == 1
        ids = [id_header(r) for r in sends]
        assert len(set(ids)) == len(ids)
    finally:
        all_brokers(kafka, "up")
        original.destroy()
        if copy is not None:
            copy.destroy()
