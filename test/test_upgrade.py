"""ALTER EXTENSION kafka_producer UPDATE from 0.1.0, the released version,
with messages pending, delivered and failed and a table published: all of
it is kept, and everything pending is delivered once."""

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
       (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
          FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped)
  FROM pg_depend d
  LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
  LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'kafka_producer')
 ORDER BY 1"""


def statuses(pg, topic):
    return dict(pg.query("SELECT id, status FROM kafka.messages WHERE topic = %s", (topic,)))


def test_update_from_0_1_0_keeps_and_delivers_everything(old_pg, kafka):
    pg = old_pg
    delivered = pg.scalar("SELECT count(kafka_send('upgrade', i::text, key => (i % 5)::text)) "
                          "FROM generate_series(1, 100) i")
    pg.wait_until_final("upgrade")
    kafka.command("produce_errors INVALID_RECORD 1")
    failed = pg.scalar("SELECT kafka_send('upgrade', 'refused', key => 'f')")
    wait_until(lambda: statuses(pg, "upgrade")[failed] == "failed", 60, what="the failure")
    pg.query("CREATE TABLE upgrade_orders (id int PRIMARY KEY, state text)")
    pg.query("SELECT kafka_publish('upgrade_orders', \"where\" => $$state <> 'draft'$$)")
    pg.query("INSERT INTO upgrade_orders VALUES (1, 'new')")
    pg.wait_until_final("public.upgrade_orders")
    before = statuses(pg, "upgrade")

    all_brokers(kafka, "down")
    try:
        pending = pg.scalar("SELECT count(kafka_send('upgrade', i::text, key => (i % 5)::text)) "
                            "FROM generate_series(101, 200) i")
        pg.query("UPDATE upgrade_orders SET state = 'paid'")
        pg.query("ALTER EXTENSION kafka_producer UPDATE")
        assert pg.scalar("SELECT extversion FROM pg_extension "
                         "WHERE extname = 'kafka_producer'") == "0.2.0"
        # the row filter now runs as the table's owner, with a fixed search_path
        assert pg.query("SELECT f.prosecdef, f.proconfig, f.proowner = c.relowner "
                        "FROM kafka.publication p JOIN pg_proc f ON f.oid = p.row_filter_function "
                        "JOIN pg_class c ON c.oid = p.relid") == \
            [(True, ["search_path=pg_catalog, pg_temp"], True)]
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
    assert values == sorted([str(i).encode() for i in range(1, 201)] + [b"refused"])
    changes = consume_all(kafka.bootstrap, "public.upgrade_orders")
    assert len(changes) == 2
