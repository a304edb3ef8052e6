"""ALTER EXTENSION kafka_producer UPDATE from 0.1.0, the released version,
with messages pending, delivered and failed and a table published: all of
it is kept, and everything pending is delivered once."""

import psycopg2
import pytest

from harness import PgCluster, consume_all, wait_until
from test_faults import all_brokers


@pytest.fixture
def old_pg(kafka):
    cluster = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'",
                         "kafka.status_retention": "'1d'",
                         "kafka.message_timeout_ms": "2000"})
    cluster.query("CREATE EXTENSION kafka_producer VERSION '0.1.0'")
    yield cluster
    cluster.destroy()


SHAPE = """
SELECT pg_describe_object(d.classid, d.objid, 0),
       coalesce(p.proacl, c.relacl)::text, p.prosecdef, p.proconfig::text, md5(p.prosrc),
       (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' ||
                          attstorage::text || attcompression::text, ', ' ORDER BY attnum)
          FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped),
       c.reloptions::text
  FROM pg_depend d
  LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
  LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'kafka_producer')
   -- a published table's row filter: the extension's, but not its shape
   AND coalesce(p.proname NOT LIKE 'row\\_filter\\_%', true)
 ORDER BY 1"""


def statuses(pg, topic):
    return dict(pg.query("SELECT id, status FROM kafka.messages WHERE topic = %s", (topic,)))


def test_update_from_0_1_0_keeps_and_delivers_everything(old_pg, kafka):
    """The library refuses to write to 0.1.0's tables, whose shape it does
    not know, with a clear ERROR, and its worker waits; so the messages of
    0.1.0 are its rows, as 0.1.0 wrote them."""
    pg = old_pg
    with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState,
                       match='extension "kafka_producer" must be updated to version 0.2.0'):
        pg.query("SELECT kafka_send('upgrade', 'refused before the update')")
    wait_until(lambda: "waiting for ALTER EXTENSION kafka_producer UPDATE" in pg.log_text(),
               30, what="the worker to wait for the update")
    pg.query("INSERT INTO kafka.delivered (id, topic, key, \"partition\", \"offset\", attempts, "
             "  enqueued_at, delivered_at) "
             "SELECT nextval('kafka.message_id_seq'), 'upgrade', (i % 5)::text::bytea, i % 3, "
             "  i / 3, 1, now(), now() FROM generate_series(1, 100) i")
    delivered = 100
    pg.query("INSERT INTO kafka.failed (id, topic, key, value, attempts, error_code, error, "
             "  enqueued_at, failed_at) "
             "VALUES (nextval('kafka.message_id_seq'), 'upgrade', 'f', 'refused', 1, "
             "  'Local_MsgTimedOut', 'Local: Message timed out', now(), now())")
    pg.query("CREATE TABLE upgrade_orders (id int PRIMARY KEY, state text)")
    pg.query("SELECT kafka_publish('upgrade_orders', \"where\" => $$state <> 'draft'$$)")
    pg.query("CREATE ROLE upgrade_publisher")
    pg.query("GRANT EXECUTE ON FUNCTION kafka_publish(regclass, text, text, text[], text[], "
             "boolean, text, boolean, text) TO upgrade_publisher")
    before = statuses(pg, "upgrade")
    pg.query("INSERT INTO kafka.outbox (id, topic, key, value, enqueued_at) "
             "SELECT nextval('kafka.message_id_seq'), 'upgrade', (i % 5)::text::bytea, "
             "  i::text::bytea, now() FROM generate_series(101, 200) i")
    pending = 100
    pg.query("INSERT INTO kafka.outbox_batch (first_id, topic, keys, \"values\", enqueued_at) "
             "SELECT nextval('kafka.message_id_seq'), 'public.upgrade_orders', "
             "  ARRAY['{\"id\":1}'::bytea], ARRAY['{\"op\":\"c\"}'::bytea], now()")

    all_brokers(kafka, "down")
    try:
        pg.query("ALTER EXTENSION kafka_producer UPDATE")
        assert pg.scalar("SELECT extversion FROM pg_extension "
                         "WHERE extname = 'kafka_producer'") == "0.2.0"
        # the row filter now runs as the table's owner, with a fixed search_path
        assert pg.query("SELECT f.prosecdef, f.proconfig, f.proowner = c.relowner, "
                        "  EXISTS (SELECT FROM pg_depend d WHERE d.objid = f.oid AND d.deptype = 'e') "
                        "FROM kafka.publication p JOIN pg_proc f ON f.oid = p.row_filter_function "
                        "JOIN pg_class c ON c.oid = p.relid") == \
            [(True, ["search_path=pg_catalog, pg_temp"], True, True)]
        # the publication names its columns, for pg_dump
        assert pg.query("SELECT key_columns, columns FROM kafka.publication") == [(["id"], None)]
        # kafka_publish gained parameters, and kept its grants
        assert pg.scalar("SELECT has_function_privilege('upgrade_publisher', "
                         "'kafka_publish(regclass, text, text, text[], text[], boolean, text, "
                         "boolean, text, text, text[], text[])', 'EXECUTE')")
        pg.query("REVOKE ALL ON FUNCTION kafka_publish(regclass, text, text, text[], text[], "
                 "boolean, text, boolean, text, text, text[], text[]) FROM upgrade_publisher")
        # what was enqueued before has no role: only pg_monitor members see it
        assert pg.scalar("SELECT count(*) FROM kafka.messages WHERE enqueued_by IS NULL "
                         "AND topic = 'upgrade'") == len(before) + pending
        # the offsets 0.1.0 recorded are where a reconciliation starts
        assert pg.scalar("SELECT count(*) FROM kafka.recorded_offsets "
                         "WHERE topic = 'upgrade'") > 0
    finally:
        all_brokers(kafka, "up")

    # the updated extension is the one a fresh install makes
    fresh = PgCluster({"kafka.bootstrap_servers": f"'{kafka.bootstrap}'"})
    try:
        fresh.query("CREATE EXTENSION kafka_producer")
        assert pg.query(SHAPE) == fresh.query(SHAPE)
    finally:
        fresh.destroy()

    final = pg.wait_until_final("upgrade")
    assert final == {"delivered": delivered + pending, "failed": 1}
    after = statuses(pg, "upgrade")
    assert all(after[i] == status for i, status in before.items())
    assert pg.query("SELECT \"table\"::text, topic FROM kafka.publications") == \
        [("upgrade_orders", "public.upgrade_orders")]
    assert pg.scalar("SELECT kafka_retry_failed('upgrade')") == 1
    assert pg.wait_until_final("upgrade") == {"delivered": delivered + pending + 1}
    pg.wait_until_final("public.upgrade_orders")

    values = sorted(r.value for r in consume_all(kafka.bootstrap, "upgrade"))
    assert values == sorted([str(i).encode() for i in range(101, 201)] + [b"refused"])
    pg.query("INSERT INTO upgrade_orders VALUES (1, 'new'), (2, 'draft')")
    pg.wait_until_final("public.upgrade_orders")
    changes = consume_all(kafka.bootstrap, "public.upgrade_orders")
    assert len(changes) == 2
