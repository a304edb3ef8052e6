"""End-to-end tests of kafka_send_avro(): every message read back from
Kafka is decoded with an independent Avro library (Debian's python3-avro)
using the schema kafka.schemas holds for its fingerprint, and compared with
the source row; fingerprints are recomputed from python3-avro's canonical
form."""

import datetime
import decimal
import io
import json
import uuid

import avro.io
import avro.schema

from avro_rows import assert_sent_rows_decode
from harness import consume_all, replay_events

CRC64_EMPTY = 0xc15d213aa4d7a795


def crc64_avro(data):
    """CRC-64-AVRO as the Avro specification gives it."""
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    fp = CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xff]
    return fp


def canonical_form(schema):
    """python3-avro's Parsing Canonical Form, with the specification's
    [PRIMITIVES] rule applied to logical types: python3-avro 1.11 writes
    {"type":"bytes"} where the specification (and Java) write "bytes"."""
    def primitive(node):
        if isinstance(node, dict):
            if set(node) == {"type"} and isinstance(node["type"], str):
                return node["type"]
            return {k: primitive(v) for k, v in node.items()}
        if isinstance(node, list):
            return [primitive(v) for v in node]
        return node
    return json.dumps(primitive(json.loads(schema.canonical_form)), separators=(",", ":"))


def decode(pg, message, subject):
    """The value of a single-object encoded message, with its schema."""
    assert message[:2] == b"\xc3\x01"
    fingerprint = message[2:10]
    schema_json = pg.scalar("SELECT schema::text FROM kafka.schemas "
                            "WHERE fingerprint = %s AND subject = %s", (fingerprint, subject))
    schema = avro.schema.parse(schema_json)
    assert crc64_avro(canonical_form(schema).encode()).to_bytes(8, "little") == fingerprint
    reader = avro.io.DatumReader(schema)
    return reader.read(avro.io.BinaryDecoder(io.BytesIO(message[10:])))


def test_rows_decode_with_python_avro(pg, kafka):
    assert_sent_rows_decode(pg, kafka, "avro_e2e",
                            lambda message, subject: decode(pg, message, subject))


def test_decimal_edges(pg, kafka):
    """Decimals of every sign and size round-trip exactly."""
    values = ["0", "-0.001", "0.001", "127", "128", "-128", "-129", "255", "256", "-32768",
              "99999999999999999999.999", "-99999999999999999999.999", "1.5", "-1.5"]
    pg.query("CREATE TYPE avro_money AS (amount numeric(23, 3))")
    pg.query("SELECT kafka_send_avro('avro_decimals', ROW(v::numeric)::avro_money) "
             "FROM unnest(%s::text[]) WITH ORDINALITY u(v, n) ORDER BY n", (values,))
    assert pg.wait_until_final("avro_decimals") == {"delivered": len(values)}
    records = sorted(consume_all(kafka.bootstrap, "avro_decimals"), key=lambda r: r.offset)
    by_partition = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(
            decode(pg, r.value, "avro_decimals-value")["amount"])
    decoded = sorted(v for vs in by_partition.values() for v in vs)
    assert decoded == sorted(decimal.Decimal(v).quantize(decimal.Decimal("0.001")) for v in values)


def test_published_changes_decode_and_replay(pg, kafka):
    """kafka_publish(format => 'avro'): every event decodes with python3-avro
    as Debezium's envelope, and replaying them gives the source table."""
    pg.query("""CREATE TABLE avro_changes (id int PRIMARY KEY, name text NOT NULL, ok boolean,
                price numeric(10, 2), at timestamptz, day date, ident uuid, raw bytea, tags text[])""")
    pg.query("SELECT kafka_publish('avro_changes', topic => 'avro_cdc_e2e', format => 'avro')")
    statements = [
        """INSERT INTO avro_changes
           SELECT i, 'name ' || i, i % 2 = 0, i * 1.25, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute 0.000001 second',
                  date '2024-01-01' + i, md5(i::text)::uuid, decode(md5(i::text), 'hex'),
                  ARRAY['t' || i, NULL]
             FROM generate_series(1, 200) i""",
        "UPDATE avro_changes SET price = NULL, name = name || '!' WHERE id % 4 = 0",
        "UPDATE avro_changes SET id = id + 1000 WHERE id % 10 = 1",
        "DELETE FROM avro_changes WHERE id % 7 = 0",
    ]
    # each in its own transaction, whose id every event of it carries, in
    # one session: its encoder's state outlives a statement
    conn = pg.connect(autocommit=True)
    cur = conn.cursor()
    txids = []
    for sql in statements:
        cur.execute(sql + "; SELECT txid_current()")
        txids.append(cur.fetchone()[0])
    conn.close()
    pg.wait_until_final("avro_cdc_e2e")
    events_per_txid = {}

    def decoded(record):
        event = decode(pg, record.value, "avro_cdc_e2e-value")
        assert event["source"]["table"] == "avro_changes"
        assert event["source"]["connector"] == "postgresql"
        assert event["source"]["snapshot"] == "false"
        txid = event["source"]["txId"]
        events_per_txid[txid] = events_per_txid.get(txid, 0) + 1
        image = event["after"] or event["before"]
        assert decode(pg, record.key, "avro_cdc_e2e-key") == {"id": image["id"]}
        return event

    state, ops = replay_events(consume_all(kafka.bootstrap, "avro_cdc_e2e"), decoded)
    assert events_per_txid == dict(zip(txids, [200, 50, 40, 28]))
    columns = ["id", "name", "ok", "price", "at", "day", "ident", "raw", "tags"]
    source = {}
    for row in pg.query(f"SELECT {', '.join(columns)} FROM avro_changes"):
        value = dict(zip(columns, row))
        value["at"] = value["at"].astimezone(datetime.timezone.utc)
        value["ident"] = str(value["ident"])
        value["raw"] = bytes(value["raw"])
        source[value["id"]] = value
    for value in state.values():
        value["ident"] = str(uuid.UUID(value["ident"]))
    # 200 inserts; 50 updates of id % 4 = 0; 20 key changes (id % 10 = 1), each
    # a delete and a create; 28 deleted rows with id % 7 = 0 among the ids then
    assert ops == {"c": 200 + 20, "u": 50, "d": 20 + 28}
    assert state == source


def test_partitioned_changes_name_their_partition(pg, kafka):
    """A partitioned table published in Avro: its partitions' events decode
    with the parent's schemas, source.partition naming the partition, and a
    row moved across partitions is a delete then a create; an ordinary
    table's events carry a null partition."""
    pg.query("CREATE TABLE avro_parted (id int PRIMARY KEY, v text) PARTITION BY LIST (id)")
    pg.query("CREATE TABLE avro_parted_odd PARTITION OF avro_parted FOR VALUES IN (1, 3)")
    pg.query("CREATE TABLE avro_parted_even (v text, id int NOT NULL)")
    pg.query("ALTER TABLE avro_parted ATTACH PARTITION avro_parted_even FOR VALUES IN (2, 4)")
    pg.query("SELECT kafka_publish('avro_parted', topic => 'avro_parted', format => 'avro')")
    pg.query("INSERT INTO avro_parted VALUES (1, 'one'), (2, 'two')")
    pg.query("UPDATE avro_parted SET id = 4 WHERE id = 1")
    pg.wait_until_final("avro_parted")
    events = [decode(pg, r.value, "avro_parted-value")
              for r in consume_all(kafka.bootstrap, "avro_parted") if r.value]
    assert sorted((e["op"], (e["after"] or e["before"])["id"], e["source"]["table"],
                   e["source"]["partition"]) for e in events) == [
        ("c", 1, "avro_parted", "avro_parted_odd"), ("c", 2, "avro_parted", "avro_parted_even"),
        ("c", 4, "avro_parted", "avro_parted_even"), ("d", 1, "avro_parted", "avro_parted_odd")]
    ordinary = decode(pg, consume_all(kafka.bootstrap, "avro_cdc_e2e")[0].value,
                      "avro_cdc_e2e-value")
    assert ordinary["source"]["partition"] is None
