"""End-to-end tests of Avro through a Confluent Schema Registry
(test/schema_registry.py): messages reach Kafka in Confluent's wire format
(magic byte 0, 4-byte big-endian schema id, Avro binary); each is decoded
with python3-avro using the schema the registry returns for its id, and
compared with its source row.  Evolution gets new ids, a refusal fails the
message with the registry's words, and a registry out of reach holds
messages back until it answers, without loss or duplicates."""

import io
import json
import time
import urllib.request

import avro.io
import avro.schema
import pytest

from avro_rows import assert_sent_rows_decode
from harness import consume_all, replay_events, wait_until
from schema_registry import SchemaRegistry


@pytest.fixture(scope="module")
def registry():
    server = SchemaRegistry()
    server.start()
    yield server
    server.stop()


def use_registry(pg, settings, url, **more):
    settings(schema_registry_url=url, **more)
    wait_until(lambda: pg.scalar("SHOW kafka.schema_registry_url") == url, 10,
               what="the reload")
    # the postmaster has signalled the worker; it reloads at its next loop
    time.sleep(0.5)


@pytest.fixture
def registered(pg, settings, registry):
    use_registry(pg, settings, registry.url)
    return registry


def registry_schema(url, schema_id):
    """The schema of an id, asked of the registry over HTTP."""
    with urllib.request.urlopen(f"{url}/schemas/ids/{schema_id}") as answer:
        return avro.schema.parse(json.load(answer)["schema"])


def schema_id(message):
    assert message[0] == 0, message[:10]
    return int.from_bytes(message[1:5], "big")


def decode(url, message, reader_schema=None):
    """A Confluent wire format message's value, and its schema id."""
    writer = registry_schema(url, schema_id(message))
    reader = avro.io.DatumReader(writer, reader_schema or writer)
    return reader.read(avro.io.BinaryDecoder(io.BytesIO(message[5:]))), schema_id(message)


def posts(registry, subject):
    return sum(1 for method, path in registry.requests
               if method == "POST" and path == f"/subjects/{subject}/versions")


def test_rows_in_confluent_wire_format(pg, kafka, registered):
    ids = {}

    def decode_noting_id(message, subject):
        value, schema_id = decode(registered.url, message)
        ids.setdefault(subject, set()).add(schema_id)
        return value

    assert_sent_rows_decode(pg, kafka, "registry_e2e", decode_noting_id)
    # registered once each, then taken from the worker's cache
    assert posts(registered, "registry_e2e-value") == 1
    assert posts(registered, "registry_e2e-key") == 1
    [value_id] = ids["registry_e2e-value"]
    assert len(ids["registry_e2e-key"]) == 1
    # the registry holds the schema kafka.schemas has
    stored = pg.scalar("SELECT schema FROM kafka.schemas WHERE subject = 'registry_e2e-value'")
    assert json.loads(registered.schema(value_id)) == stored


def test_other_bytes_are_sent_as_they_are(pg, kafka, registered):
    """Bytes that merely start like single-object Avro, with a fingerprint
    kafka.schemas does not hold, are not touched."""
    raw = b"\xc3\x01" + bytes(range(8)) + b"payload"
    pg.query("SELECT kafka_send('registry_raw', %s::bytea)", (raw,))
    assert pg.wait_until_final("registry_raw") == {"delivered": 1}
    assert [r.value for r in consume_all(kafka.bootstrap, "registry_raw")] == [raw]


def test_published_changes(pg, kafka, registered):
    pg.query("CREATE TABLE registry_changes (id int PRIMARY KEY, name text NOT NULL, qty int)")
    pg.query("SELECT kafka_publish('registry_changes', topic => 'registry_cdc', format => 'avro')")
    pg.query("INSERT INTO registry_changes SELECT i, 'n' || i, i FROM generate_series(1, 50) i")
    pg.query("UPDATE registry_changes SET qty = NULL WHERE id % 5 = 0")
    pg.query("DELETE FROM registry_changes WHERE id % 7 = 0")
    pg.wait_until_final("registry_cdc")

    def decoded(record):
        event, _ = decode(registered.url, record.value)
        key, _ = decode(registered.url, record.key)
        assert key == {"id": (event["after"] or event["before"])["id"]}
        return event

    state, ops = replay_events(consume_all(kafka.bootstrap, "registry_cdc"), decoded)
    assert ops == {"c": 50, "u": 10, "d": 7}
    assert state == {row[0]: dict(zip(("id", "name", "qty"), row))
                     for row in pg.query("SELECT id, name, qty FROM registry_changes")}


def test_evolution_and_refusal(pg, kafka, registered):
    """ADD COLUMN registers a new version that reads old messages; a change
    the registry finds incompatible fails the message with its words, and
    the message can be retried once the registry accepts it."""
    pg.query("CREATE TABLE registry_evolving (id int PRIMARY KEY, name text NOT NULL)")
    pg.query("INSERT INTO registry_evolving VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    send = "SELECT kafka_send_avro('registry_evo', t, key => t.id) FROM registry_evolving t WHERE id = %s"
    pg.query(send, (1,))
    pg.query("ALTER TABLE registry_evolving ADD COLUMN note text")
    pg.query("UPDATE registry_evolving SET note = 'added' WHERE id = 2")
    pg.query(send, (2,))
    assert pg.wait_until_final("registry_evo") == {"delivered": 2}
    first, second = sorted(consume_all(kafka.bootstrap, "registry_evo"),
                           key=lambda r: schema_id(r.value))
    (old, old_id), (new, new_id) = decode(registered.url, first.value), \
        decode(registered.url, second.value)
    assert old_id != new_id
    assert old == {"id": 1, "name": "one"}
    assert new == {"id": 2, "name": "two", "note": "added"}
    # the new schema reads the old message: the added column defaults to null
    reread, _ = decode(registered.url, first.value, registry_schema(registered.url, new_id))
    assert reread == {"id": 1, "name": "one", "note": None}

    # text to integer: no reader of the new schema can read the old data
    pg.query("ALTER TABLE registry_evolving ALTER COLUMN name TYPE int USING length(name)")
    refused = pg.scalar(send, (3,))
    assert pg.wait_until_final("registry_evo") == {"delivered": 2, "failed": 1}
    error = pg.scalar("SELECT error FROM kafka.messages WHERE id = %s", (refused,))
    assert error.startswith("SCHEMA_REGISTRY_REFUSED: HTTP 409: Schema being registered is "
                            "incompatible"), error

    registered.set_compatibility("NONE", subject="registry_evo-value")
    time.sleep(1.1)   # past the worker's memory of the refusal
    pg.query("SELECT kafka_retry(%s)", (refused,))
    assert pg.wait_until_final("registry_evo") == {"delivered": 3}
    third = [r for r in consume_all(kafka.bootstrap, "registry_evo")
             if schema_id(r.value) not in (old_id, new_id)]
    assert [decode(registered.url, r.value)[0] for r in third] == \
        [{"id": 3, "name": 5, "note": None}]


def test_unreachable_registry_holds_messages_back(pg, kafka, registered):
    """While the registry is down, and then while it answers 503, a message
    whose schema is not registered waits, and so does everything after it;
    then all arrive once, in order."""
    pg.query("CREATE TABLE registry_outage (id int PRIMARY KEY, at timestamptz)")
    registered.stop()
    try:
        pg.query("INSERT INTO registry_outage SELECT i, now() FROM generate_series(1, 20) i")
        # one partition, so that Kafka's offsets show the order
        pg.query("SELECT kafka_send_avro('registry_hold', t, partition => 0) "
                 "FROM registry_outage t ORDER BY id")
        pg.query("SELECT kafka_send('registry_hold', 'plain, after', partition => 0)")
        time.sleep(3)
        counts = dict(pg.query("SELECT status, count(*) FROM kafka.messages "
                               "WHERE topic = 'registry_hold' GROUP BY status"))
        assert counts == {"pending": 21}
        assert last_error(pg).startswith("schema registry: "), last_error(pg)
        assert "could not register an Avro schema of subject \"registry_hold-" in pg.log_text()
        registered.fail_next(3, status=503)
    finally:
        registered.start()
    assert pg.wait_until_final("registry_hold", timeout=60) == {"delivered": 21}
    records = sorted(consume_all(kafka.bootstrap, "registry_hold"), key=lambda r: r.offset)
    values = [decode(registered.url, r.value)[0]["id"] for r in records[:-1]]
    assert values == list(range(1, 21))
    assert records[-1].value == b"plain, after"


def test_oversized_answer_is_not_read(pg, kafka, registered):
    """An answer larger than any registry's (2 MB) is not read to its end:
    the registry counts as out of reach, and the message waits for it."""
    registered.fail_next(1, status=503, padding=2 * 1024 * 1024)
    pg.query("SELECT kafka_send_avro('registry_oversized', 7::bigint)")
    assert pg.wait_until_final("registry_oversized", timeout=60) == {"delivered": 1}
    assert "Failure writing output" in pg.log_text()


def last_error(pg):
    return pg.scalar("SELECT kafka_stats()")["kafka_producer"]["last_error"] or ""


def test_basic_auth(pg, kafka, settings):
    secured = SchemaRegistry(user="kafka", password="s3cret")
    secured.start()
    try:
        use_registry(pg, settings, secured.url)
        pg.query("SELECT kafka_send_avro('registry_auth', 42::bigint)")
        wait_until(lambda: "HTTP 401" in last_error(pg), 10,
                   what="the registry to turn the worker away")
        assert dict(pg.query("SELECT status, count(*) FROM kafka.messages "
                             "WHERE topic = 'registry_auth' GROUP BY status")) == {"pending": 1}
        use_registry(pg, settings, secured.url, schema_registry_user_info="kafka:s3cret")
        assert pg.wait_until_final("registry_auth") == {"delivered": 1}
        [record] = consume_all(kafka.bootstrap, "registry_auth")
        writer = avro.schema.parse(secured.schema(schema_id(record.value)))
        assert avro.io.DatumReader(writer).read(
            avro.io.BinaryDecoder(io.BytesIO(record.value[5:]))) == 42
    finally:
        secured.stop()


def test_basic_auth_from_netrc_file(pg, kafka, settings, tmp_path):
    """The credentials from a netrc file that only the server reads: no SQL
    role sees them."""
    secured = SchemaRegistry(user="kafka", password="s3cret")
    secured.start()
    try:
        netrc = tmp_path / "registry.netrc"
        netrc.write_text("machine 127.0.0.1 login kafka password s3cret\n")
        netrc.chmod(0o600)
        use_registry(pg, settings, secured.url, schema_registry_netrc_file=str(netrc))
        pg.query("SELECT kafka_send_avro('registry_netrc', 43::bigint)")
        assert pg.wait_until_final("registry_netrc") == {"delivered": 1}
        assert "s3cret" not in str(pg.query("SELECT name, setting FROM pg_settings "
                                            "WHERE name LIKE 'kafka.%'"))
    finally:
        secured.stop()


def test_slow_registry_stalls_nothing_else(pg, kafka, registered):
    """While a registration hangs for 8 s, the worker still answers
    kafka_send_sync of another topic and kafka_wait as quickly as usual; the
    Avro message, and those enqueued after it, go once the registry answers."""
    earlier = pg.scalar("SELECT kafka_send('registry_slow_plain', 'before')")
    assert pg.scalar("SELECT kafka_wait(%s, '30 seconds')", (earlier,)) == "delivered"
    registered.hang(8)
    try:
        pg.query("SELECT kafka_send_avro('registry_slow', 11::bigint)")
        wait_until(lambda: posts(registered, "registry_slow-value"), 10,
                   what="the registration to start")
        started = time.monotonic()
        latencies = []
        while time.monotonic() - started < 5:
            before = time.monotonic()
            assert pg.scalar("SELECT (kafka_send_sync('registry_slow_plain', 'x')).id") > 0
            assert pg.scalar("SELECT kafka_wait(%s, '30 seconds')", (earlier,)) == "delivered"
            latencies.append(time.monotonic() - before)
        print(f"while the registry hung: {len(latencies)} sync sends and waits, "
              f"slowest {max(latencies):.3f} s", flush=True)
        # an answer that waited for the registry would have taken 8 s
        assert max(latencies) < 4
        assert dict(pg.query("SELECT status, count(*) FROM kafka.messages "
                             "WHERE topic = 'registry_slow' GROUP BY status")) == {"pending": 1}
    finally:
        registered.hang(0)
    assert pg.wait_until_final("registry_slow") == {"delivered": 1}


def test_schema_change_the_registry_would_refuse_warns(pg, kafka, registered):
    """ALTER TABLE of a table published in Avro asks the registry whether
    it would take the new schemas: a compatible change passes quietly, an
    incompatible one is a WARNING naming the subject at the ALTER, not a
    failed message later."""
    pg.query("CREATE TABLE registry_ddl (id int PRIMARY KEY, name text NOT NULL)")
    pg.query("SELECT kafka_publish('registry_ddl', topic => 'registry_ddl', format => 'avro')")
    pg.query("INSERT INTO registry_ddl VALUES (1, 'one')")
    assert pg.wait_until_final("registry_ddl") == {"delivered": 1}
    conn = pg.connect()
    try:
        cur = conn.cursor()
        cur.execute("ALTER TABLE registry_ddl ADD COLUMN note text")
        assert not [n for n in conn.notices if "WARNING" in n]
        cur.execute("ALTER TABLE registry_ddl ALTER COLUMN name TYPE int USING length(name)")
        warnings = [n for n in conn.notices if "WARNING" in n]
        assert len(warnings) == 1, conn.notices
        assert 'would refuse the new schema of subject "registry_ddl-value"' in warnings[0]
    finally:
        conn.close()
