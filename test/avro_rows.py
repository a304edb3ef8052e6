"""A table with every type kafka_send_avro() supports, its rows, and what
python3-avro should decode for each: shared by the Avro tests with and
without a schema registry."""

import datetime
import json
import uuid

from harness import consume_all

TABLE = """CREATE TABLE {name} (
    id bigint PRIMARY KEY, small smallint NOT NULL, flag boolean, ratio real,
    score double precision, price numeric(12, 3), amount numeric, label text,
    code varchar(10), payload bytea, ident uuid, day date, at_time time,
    stamp timestamp, stamptz timestamptz, doc jsonb, feeling avro_mood,
    tags text[], counts int[])"""

ROWS = """INSERT INTO {name}
SELECT i, (i % 100)::smallint, CASE WHEN i % 3 = 0 THEN NULL ELSE i % 2 = 0 END,
       i / 7.0, i * 1.25e10, round((i * 1234.5678) - 500000, 3),
       CASE WHEN i % 4 = 0 THEN NULL ELSE (i::numeric ^ 7) / 3 END,
       'row ' || i || ' ünïcødé', left(md5(i::text), 10),
       CASE WHEN i % 5 = 0 THEN NULL ELSE decode(md5(i::text), 'hex') END,
       md5(i::text)::uuid, date '2000-01-01' + i * 37, time '00:00:00.000001' + i * interval '17 minutes 3.5 seconds',
       timestamp '1969-12-31 23:00:00' + i * interval '1 day 1.000001 second',
       timestamptz '2024-03-31 01:59:59.999999+00' + i * interval '1 hour',
       jsonb_build_object('i', i, 'list', jsonb_build_array(i, 'x')),
       (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::avro_mood,
       CASE WHEN i % 6 = 0 THEN NULL ELSE ARRAY['a' || i, NULL, 'b'] END,
       ARRAY[i, -i]
  FROM generate_series(1, 300) i"""

COLUMNS = ["id", "small", "flag", "ratio", "score", "price", "amount", "label", "code",
           "payload", "ident", "day", "at_time", "stamp", "stamptz", "doc", "feeling",
           "tags", "counts"]


def expected(row):
    """The Avro value python3-avro should decode for a source row (psycopg2 types)."""
    value = dict(zip(COLUMNS, row))
    utc = datetime.timezone.utc
    value["amount"] = None if value["amount"] is None else str(value["amount"])
    value["payload"] = None if value["payload"] is None else bytes(value["payload"])
    value["ident"] = str(value["ident"])
    value["stamp"] = value["stamp"].replace(tzinfo=utc)
    value["stamptz"] = value["stamptz"].astimezone(utc)
    value["doc"] = json.dumps(value["doc"], separators=(", ", ": "))
    return value


def normalized(value):
    """python3-avro's decoded value, comparable with expected()."""
    value = dict(value)
    value["ident"] = str(uuid.UUID(value["ident"]))
    value["doc"] = json.dumps(json.loads(value["doc"]), separators=(", ", ": "))
    return value


def want_ratio(row):
    return row[COLUMNS.index("ratio")]


def create_source(pg, name):
    """Creates table name with 300 rows of every supported type."""
    pg.query("DO $$ BEGIN CREATE TYPE avro_mood AS ENUM ('sad', 'ok', 'happy'); "
             "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    pg.query(TABLE.format(name=name))
    pg.query(ROWS.format(name=name))
    return {row[0]: row for row in pg.query(f"SELECT {', '.join(COLUMNS)} FROM {name}", None)}


def assert_decodes_to_source(value, source_row):
    """value, decoded by python3-avro, equals the source row."""
    value = normalized(value)
    want = expected(source_row)
    # real is single precision: compare it as such
    assert abs(value.pop("ratio") - want.pop("ratio")) <= abs(want_ratio(source_row)) * 1e-6
    assert value == want, {k: (value[k], want[k]) for k in want if value[k] != want[k]}


def assert_sent_rows_decode(pg, kafka, topic, decode):
    """Sends the 300 rows of every supported type to topic with
    kafka_send_avro() and checks that each message, keyed by id, decodes
    to its source row: decode(message, subject) gives a decoded datum."""
    table = topic + "_source"
    source = create_source(pg, table)
    pg.query(f"SELECT kafka_send_avro('{topic}', t, key => t.id) FROM {table} t")
    assert pg.wait_until_final(topic) == {"delivered": 300}

    records = consume_all(kafka.bootstrap, topic)
    assert len(records) == 300
    for record in records:
        key = decode(record.key, topic + "-key")
        assert_decodes_to_source(decode(record.value, topic + "-value"), source[key])
