-- kafka_send_avro(): rows as Avro messages in single-object encoding, with
-- schemas derived from the row type and kept in kafka.schemas.

SELECT create_every_type();
ALTER TABLE every_type ALTER COLUMN small SET NOT NULL, ADD COLUMN "Mixed Case" int;

SELECT last_value - (NOT is_called)::int AS start FROM kafka.message_id_seq \gset
INSERT INTO every_type VALUES
	(1, 2, 3, true, 1.5, 2.25, 12345678.91, 3.14159265358979323846264338327950288, 'text ü', 'varchar',
	 'c', '\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '13:14:15.123456',
	 '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.123456+02', '{"a": [1, 2]}', '{"b":1}',
	 'happy', '{x,NULL,z}', 7),
	(2, -1, NULL, NULL, NULL, NULL, -0.01, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
	 NULL, NULL, NULL, NULL, NULL, NULL, NULL);
SELECT kafka_send_avro('avro_rows', t, key => t.id) - :start AS n FROM every_type t ORDER BY id;

-- the schema, stored once per subject under the fingerprint the messages carry
SELECT subject, jsonb_pretty(schema) FROM kafka.schemas ORDER BY subject;
SELECT subject, encode(fingerprint, 'hex') FROM kafka.schemas ORDER BY subject;
SELECT id - :start AS n, encode(substring(value from 1 for 10), 'hex') AS header,
	   encode(substring(value from 11), 'hex') AS avro_value,
	   encode(key, 'hex') AS avro_key
  FROM kafka.pending WHERE id > :start AND topic = 'avro_rows' ORDER BY id;
SELECT count(*) AS messages_with_a_stored_schema
  FROM kafka.pending o JOIN kafka.schemas s
    ON s.fingerprint = substring(o.value from 3 for 8) AND s.subject = 'avro_rows-value'
 WHERE o.id > :start;

-- a new column is a new schema, found by its own fingerprint
ALTER TABLE every_type ADD COLUMN added text;
SELECT kafka_send_avro('avro_rows', t) > 0 AS sent FROM every_type t WHERE id = 2;
SELECT count(*) AS schema_versions FROM kafka.schemas WHERE subject = 'avro_rows-value';
SELECT schema->'fields'->-1 AS added_field FROM kafka.schemas
 WHERE subject = 'avro_rows-value' ORDER BY created_at DESC, schema::text DESC LIMIT 1;

-- a rolled-back first use stores no schema, and the next use stores it
BEGIN;
CREATE TYPE point2 AS (x int, y int);
SELECT kafka_send_avro('avro_points', ROW(1, 2)::point2) > 0 AS sent;
ROLLBACK;
CREATE TYPE point2 AS (x int, y int);
SELECT kafka_send_avro('avro_points', ROW(1, 2)::point2) > 0 AS sent;
SELECT subject, schema FROM kafka.schemas WHERE subject LIKE 'avro_points%';

-- an untyped literal is a string, as for kafka_send()
SELECT kafka_send_avro('avro_points', ROW(3, 4)::point2, key => 'k') > 0 AS sent;
SELECT schema FROM kafka.schemas WHERE subject = 'avro_points-key';

-- a value larger than the encoder's 64 kB scratch buffer, measured first
SELECT kafka_send_avro('avro_big', repeat('x', 100000)) AS id \gset
SELECT length(value) AS len, encode(substring(value from 11 for 3), 'hex') AS length_varint,
	   length(replace(convert_from(substring(value from 14), 'UTF8'), 'x', '')) AS not_x
  FROM kafka.pending WHERE id = :id;

-- a schema stored by a subtransaction that rolled back is stored again
CREATE TYPE point3 AS (x int, y int, z int);
BEGIN;
SAVEPOINT s;
SELECT kafka_send_avro('avro_points3', ROW(1, 2, 3)::point3) > 0 AS sent;
ROLLBACK TO SAVEPOINT s;
SELECT kafka_send_avro('avro_points3', ROW(4, 5, 6)::point3) AS id \gset
COMMIT;
SELECT count(*) AS schema_of_the_message
  FROM kafka.pending p JOIN kafka.schemas s ON s.fingerprint = substring(p.value from 3 for 8)
 WHERE p.id = :id AND s.subject = 'avro_points3-value';
DROP TYPE point3;

-- bad input
SELECT kafka_send_avro('avro_rows', ROW(1, 'x'));
CREATE TABLE unsupported (id int, spot point);
SELECT kafka_send_avro('avro_rows', u) FROM (VALUES (ROW(1, '(1,2)')::unsupported)) v(u);
SELECT kafka_send_avro('avro_rows', '[1,2]'::int4range);
SELECT kafka_send_avro('avro_rows', ARRAY[[1,2],[3,4]]);
SELECT kafka_send_avro('avro_rows', 'infinity'::timestamptz);
CREATE TYPE priced AS (amount numeric(6, 2));
SELECT kafka_send_avro('avro_rows', ROW('NaN')::priced);
DROP TYPE priced;
CREATE TYPE bad_labels AS ENUM ('has space');
SELECT kafka_send_avro('avro_rows', 'has space'::bad_labels);
SELECT kafka_send_avro(NULL, 1);
SELECT kafka_send_avro('bad topic', 1);
DROP TABLE unsupported, every_type;
DROP TYPE point2, bad_labels;
