-- kafka_publish(): change events of a table, as the worker would send them.
-- The volatile members of each event (ts_ms, txId, lsn) are shown as 0.

-- CONTEXT lines would name line numbers of kafka_publish()
\set SHOW_CONTEXT never

CREATE FUNCTION events(since bigint)
RETURNS TABLE (n bigint, topic text, key text, value text)
LANGUAGE sql AS $$
	SELECT id - since, topic, convert_from(key, 'UTF8'),
		   regexp_replace(convert_from(value, 'UTF8'),
						  '"(ts_ms|txId|lsn|__source_ts_ms)":[0-9]+', '"\1":0', 'g')
	  FROM kafka.pending
	 WHERE id > since AND topic IN (SELECT topic FROM kafka.publication)
	 ORDER BY id
$$;

-- waits until the worker has read every running snapshot
CREATE FUNCTION wait_for_snapshots() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	FOR i IN 1..1200 LOOP
		EXIT WHEN NOT EXISTS (SELECT FROM kafka.snapshots WHERE status = 'running');
		PERFORM pg_sleep(0.05);
	END LOOP;
END
$$;

SELECT create_every_type();
ALTER TABLE every_type ADD COLUMN matrix int[], ADD COLUMN big text, ADD COLUMN "Mixed ""Case""" int;
SELECT kafka_publish('every_type');
SELECT * FROM kafka.publications;
SELECT tgname, tgtype FROM pg_trigger WHERE tgrelid = 'every_type'::regclass ORDER BY 1;

SELECT last_value - (NOT is_called)::int AS start FROM kafka.message_id_seq \gset
SET timezone = 'America/New_York';
INSERT INTO every_type VALUES
	(1, 2, 3, true, 1.5, 'NaN', 12345678.91, 3.14159265358979323846264338327950288, 'tab	"quote" ü', 'varchar',
	 'c', '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '13:14:15.123456',
	 '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.123456+02', '{"a": [1, 2.50]}', '{"b" : 1}',
	 'happy', '{x,NULL,"y z"}', '{{1,2},{3,4}}', NULL, 7),
	(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
	 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
RESET timezone;
SELECT n, key, value FROM events(:start);

-- update in place, update of the key, delete (with its tombstone), truncate
SELECT last_value AS start FROM kafka.message_id_seq \gset
UPDATE every_type SET label = 'changed', big = repeat('large ', 2000) WHERE id = 2;
SELECT n, key, length(value) AS len, value::jsonb->'after'->>'label' AS label,
	   length(value::jsonb->'after'->>'big') AS toasted_value_in_full
  FROM events(:start);
SELECT last_value AS start FROM kafka.message_id_seq \gset
UPDATE every_type SET small = 5 WHERE id = 2;
SELECT n, key, value::jsonb->>'op' AS op, length(value::jsonb->'before'->>'big') AS unchanged_big_before,
	   length(value::jsonb->'after'->>'big') AS unchanged_big_after
  FROM events(:start);
SELECT last_value AS start FROM kafka.message_id_seq \gset
UPDATE every_type SET id = 20 WHERE id = 2;
DELETE FROM every_type WHERE id = 1;
SELECT n, key, value::jsonb->>'op' AS op, value::jsonb->'before'->>'id' AS before_id,
	   value::jsonb->'after'->>'id' AS after_id, value IS NULL AS tombstone
  FROM events(:start);
SELECT last_value AS start FROM kafka.message_id_seq \gset
TRUNCATE every_type;
SELECT n, key, value FROM events(:start);

-- a rollback publishes nothing
SELECT last_value AS start FROM kafka.message_id_seq \gset
BEGIN;
INSERT INTO every_type (id) VALUES (99);
ROLLBACK;
SELECT count(*) AS published FROM events(:start);

-- schema changes show in the next events without publishing again
ALTER TABLE every_type ADD COLUMN added text DEFAULT 'new';
ALTER TABLE every_type RENAME COLUMN small TO tiny;
ALTER TABLE every_type DROP COLUMN raw;
INSERT INTO every_type (id, tiny) VALUES (3, 4);
SELECT n, value::jsonb->'after' ?& ARRAY['added', 'tiny'] AS has_new,
	   value::jsonb->'after' ?| ARRAY['raw', 'small'] AS has_old
  FROM events(:start);

-- options: topic, key columns, column filter, row filter, no tombstones, epoch times
CREATE TABLE orders (id int, region text, status text, total numeric(8, 2),
					 placed date, at timestamp, internal text, PRIMARY KEY (id, region));
SELECT kafka_publish('orders', topic => 'shop.orders', columns => ARRAY['id', 'region', 'status', 'total', 'placed', 'at'],
					 "where" => $$status <> 'draft'$$, tombstones => false, time_format => 'epoch');
-- publishing again updates the options, still one trigger
SELECT kafka_publish('orders', topic => 'shop.orders', key_columns => ARRAY['id'],
					 columns => ARRAY['id', 'region', 'status', 'total', 'placed', 'at'],
					 "where" => $$status <> 'draft'$$, tombstones => false, time_format => 'epoch');
SELECT * FROM kafka.publications WHERE "table" = 'orders'::regclass;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'orders'::regclass;
SELECT last_value AS start FROM kafka.message_id_seq \gset
INSERT INTO orders VALUES (1, 'eu', 'draft', 10, '1970-01-02', '1970-01-01 00:00:01.5', 'secret'),
						  (2, 'us', 'paid', 20, '2000-01-01', '2000-01-01 00:00:00', 'secret');
UPDATE orders SET status = 'paid' WHERE id = 1;   -- enters the filter: create
UPDATE orders SET status = 'draft' WHERE id = 2;  -- leaves it: delete, no tombstone
DELETE FROM orders WHERE id = 2;                  -- not in it: nothing
SELECT n, topic, key, value FROM events(:start);

-- snapshot: existing rows as "r" events
CREATE TABLE existing (id int PRIMARY KEY, v text);
INSERT INTO existing VALUES (1, 'a'), (2, 'b');
SELECT last_value AS start FROM kafka.message_id_seq \gset
SELECT kafka_publish('existing', snapshot => true);
SELECT wait_for_snapshots();
SELECT n, key, value FROM events(:start);
-- a backfill of some rows; a table without a primary key is read at once
SELECT last_value AS start FROM kafka.message_id_seq \gset
SELECT kafka_snapshot('existing', "where" => $$v > 'a'$$) > 0 AS started;
SELECT wait_for_snapshots();
SELECT n, key, value FROM events(:start);
SELECT kafka_snapshot('existing', "where" => 'nope > 1');
SELECT kafka_snapshot('existing', "where" => 'true; SELECT 1');
SELECT kafka_snapshot('existing', "where" => $$v > 'z'$$) > 0 AS nothing_to_read;
SELECT wait_for_snapshots();
-- the worker hears of a snapshot at commit, which COMMIT PREPARED skips
BEGIN;
SELECT kafka_snapshot('existing') > 0 AS started;
PREPARE TRANSACTION 'snapshot';
CREATE TABLE keyless (a int, b text);
INSERT INTO keyless VALUES (1, 'x');
SELECT kafka_publish('keyless', key_columns => ARRAY['a'], snapshot => true);
SELECT kafka_snapshot('keyless', "where" => 'a > 0');
SELECT "table", "where", rows_done, finished_at IS NOT NULL AS finished, status
  FROM kafka.snapshots ORDER BY id;
SELECT kafka_unpublish('keyless');
DROP TABLE keyless;

-- subtransactions: the events of a rolled-back one are dropped, the rest kept
SELECT last_value AS start FROM kafka.message_id_seq \gset
BEGIN;
INSERT INTO existing VALUES (10, 'kept');
SAVEPOINT s;
INSERT INTO existing VALUES (11, 'rolled back');
ROLLBACK TO SAVEPOINT s;
INSERT INTO existing VALUES (12, 'kept too');
COMMIT;
-- another trigger's failed subtransaction, in the middle of a statement's events
CREATE TABLE side (id int PRIMARY KEY);
SELECT kafka_publish('side');
CREATE FUNCTION side_effect() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	BEGIN
		INSERT INTO side VALUES (NEW.id);
		RAISE EXCEPTION 'undo the side effect';
	EXCEPTION WHEN raise_exception THEN
		NULL;
	END;
	RETURN NULL;
END
$$;
CREATE TRIGGER zz_side_effect AFTER INSERT ON existing FOR EACH ROW EXECUTE FUNCTION side_effect();
INSERT INTO existing VALUES (20, 'x'), (21, 'y'), (22, 'z');
SELECT n, topic, key, value::jsonb->'after'->>'v' AS v FROM events(:start);
DROP TRIGGER zz_side_effect ON existing;
DROP TABLE side;
DROP FUNCTION side_effect();
-- a large transaction's events leave memory once written to kafka.outbox_batch
BEGIN;
INSERT INTO existing SELECT i, repeat('x', 200) FROM generate_series(1000, 30999) i;
SELECT total_bytes < 4 * 1024 * 1024 AS bounded
  FROM pg_backend_memory_contexts WHERE name = 'TopTransactionContext';
ROLLBACK;

-- events are stored several to a row, inline and compressed; a message alone in its run
-- of ids (here the only one of its statement, and larger than a row's
-- share) is a kafka.outbox row; kafka.messages shows each in order
SELECT last_value AS start FROM kafka.message_id_seq \gset
INSERT INTO existing SELECT i, repeat('x', 200) FROM generate_series(1000, 2999) i;
INSERT INTO existing VALUES (3000, repeat('y', 9000));
SELECT count(*) < 2000 / 10 AS several_to_a_row,
	   sum(cardinality(keys)) AS messages,
	   bool_and(cardinality(keys) = cardinality("values")) AS keys_match_values,
	   count(*) FILTER (WHERE pg_column_size(b.*) > 8160) AS larger_than_a_page,
	   count(*) FILTER (WHERE cardinality(keys) = 1) AS alone,
	   bool_and(pg_column_compression("values") = 'lz4') AS compressed
  FROM kafka.outbox_batch b WHERE first_id > :start AND topic = 'public.existing';
SELECT count(*) AS alone_in_outbox
  FROM kafka.outbox WHERE id > :start AND topic = 'public.existing';
SELECT count(*) AS pending, count(DISTINCT id) AS distinct_ids,
	   array_agg((convert_from(key, 'UTF8')::jsonb->>'id')::int ORDER BY id) =
	   array(SELECT generate_series(1000, 3000)) AS in_order
  FROM kafka.messages
 WHERE id > :start AND status = 'pending' AND topic = 'public.existing';
DELETE FROM existing WHERE id >= 1000;

-- every character below 128 and some above, escaped as PostgreSQL's own
-- JSON functions escape them
SELECT last_value AS start FROM kafka.message_id_seq \gset
INSERT INTO existing
	SELECT 4000, string_agg(chr(i), '' ORDER BY i) || 'ü€😀' FROM generate_series(1, 127) i;
SELECT convert_from(p.value, 'UTF8')::jsonb -> 'after' -> 'v' = to_jsonb(e.v) AS same_string,
	   position(to_json(e.v)::text IN convert_from(p.value, 'UTF8')) > 0 AS escaped_alike
  FROM kafka.pending p, existing e
 WHERE p.id > :start AND p.topic = 'public.existing' AND e.id = 4000;
DELETE FROM existing WHERE id = 4000;

-- a block of ids needs a sequence that steps by one, uncached
ALTER SEQUENCE kafka.message_id_seq CACHE 20;
INSERT INTO existing VALUES (50, 'a'), (51, 'b');
ALTER SEQUENCE kafka.message_id_seq CACHE 1;

-- a user who may write the table but nothing of the extension's publishes
-- its changes too (the trigger takes a block of ids on its behalf)
CREATE ROLE kafka_writer;
CREATE SCHEMA writer_path AUTHORIZATION kafka_writer;
CREATE TABLE avro_writes (id int PRIMARY KEY, v text);
SELECT kafka_publish('avro_writes', format => 'avro');
GRANT INSERT ON existing, avro_writes TO kafka_writer;
SELECT last_value AS start FROM kafka.message_id_seq \gset
SET ROLE kafka_writer;
INSERT INTO existing VALUES (40, 'by a writer'), (41, 'by a writer too');
INSERT INTO avro_writes VALUES (1, 'stores its schema');
-- its search_path is not the extension's, and stays its own
SET search_path = writer_path, public;
INSERT INTO existing VALUES (42, 'with its own search_path');
SHOW search_path;
RESET search_path;
RESET ROLE;
SELECT row_number() OVER (ORDER BY id) AS n, convert_from(value, 'UTF8')::jsonb->'after'->>'v' AS v
  FROM kafka.pending WHERE id > :start AND topic = 'public.existing' ORDER BY id;
SELECT count(*) AS avro_events, count(DISTINCT s.subject) AS schemas_found
  FROM kafka.pending p JOIN kafka.schemas s ON s.fingerprint = substring(p.value from 3 for 8)
 WHERE p.id > :start AND p.topic = 'public.avro_writes';
DROP SCHEMA writer_path;
DROP TABLE avro_writes;
REVOKE INSERT ON existing FROM kafka_writer;
DROP ROLE kafka_writer;

-- format avro: single-object encoded events, schemas in kafka.schemas
CREATE TABLE avro_cdc (id int PRIMARY KEY, name text NOT NULL, price numeric(6, 2), hidden text);
SELECT kafka_publish('avro_cdc', format => 'avro', columns => ARRAY['id', 'name', 'price']);
SELECT last_value AS start FROM kafka.message_id_seq \gset
INSERT INTO avro_cdc VALUES (1, 'one', 1.5, 'secret');
UPDATE avro_cdc SET price = NULL;
DELETE FROM avro_cdc;
SELECT id - :start AS n, encode(substring(value from 1 for 2), 'hex') AS magic,
	   s.subject AS value_schema, encode(substring(key from 1 for 2), 'hex') AS key_magic,
	   k.subject AS key_schema
  FROM kafka.pending o
  LEFT JOIN kafka.schemas s ON s.fingerprint = substring(o.value from 3 for 8)
  LEFT JOIN kafka.schemas k ON k.fingerprint = substring(o.key from 3 for 8)
 WHERE o.id > :start AND o.topic = 'public.avro_cdc' ORDER BY o.id;
SELECT subject, schema->>'name' AS name,
	   jsonb_path_query_array(schema, '$.fields[*].name') AS fields
  FROM kafka.schemas WHERE subject LIKE 'public.avro_cdc-%' ORDER BY subject;
SELECT jsonb_path_query_array(schema, '$.fields[0].type[1].fields[*].name') AS value_fields
  FROM kafka.schemas WHERE subject = 'public.avro_cdc-value';
CREATE TABLE avro_bad (id int PRIMARY KEY, spot point);
SELECT kafka_publish('avro_bad', format => 'avro');
SELECT kafka_publish('avro_bad', format => 'avro', columns => ARRAY['id']);
SELECT "table", format, columns FROM kafka.publications WHERE "table" = 'avro_bad'::regclass;
DROP TABLE avro_cdc, avro_bad;

-- flat rows, masked and hashed columns (kafka.hash_salt is 'pepper' in
-- regress.conf): a hash is SHA-256 of the salt and the value's text
CREATE TABLE people (id int PRIMARY KEY, email text, ssn text, age int);
SELECT kafka_publish('people', envelope => 'row', mask_columns => ARRAY['ssn'],
					 hash_columns => ARRAY['id', 'email']);
SELECT "table", envelope, mask_columns, hash_columns FROM kafka.publications
 WHERE "table" = 'people'::regclass;
SELECT last_value AS start FROM kafka.message_id_seq \gset
INSERT INTO people VALUES (1, 'a@example.com', '123-45-6789', 30), (2, NULL, NULL, 40);
UPDATE people SET age = 31 WHERE id = 1;
DELETE FROM people WHERE id = 2;
TRUNCATE people;
SELECT * FROM events(:start);
SELECT encode(sha256(convert_to('pepper' || 'a@example.com', 'UTF8')), 'hex') AS email_hash,
	   encode(sha256(convert_to('pepper' || '1', 'UTF8')), 'hex') AS id_hash;
SELECT kafka_unpublish('people');
DROP TABLE people;

-- a change of a published table's columns: an event on the database's
-- schema-changes topic, with the DDL and the columns after it
CREATE TABLE reshaped (id int PRIMARY KEY, v text);
SELECT kafka_publish('reshaped');
ALTER TABLE reshaped ADD COLUMN w int NOT NULL DEFAULT 0;
-- not a change of its columns: no event
ALTER TABLE reshaped ADD CONSTRAINT w_positive CHECK (w >= 0);
SELECT topic, convert_from(key, 'UTF8') AS key,
	   convert_from(value, 'UTF8')::jsonb->>'ddl' AS ddl,
	   jsonb_path_query_array(convert_from(value, 'UTF8')::jsonb,
							  '$.tableChanges[0].table.columns[*].typeExpression') AS types
  FROM kafka.pending
 WHERE topic = 'contrib_regression.schema_changes'
   AND convert_from(value, 'UTF8')::jsonb->'source'->>'table' = 'reshaped';
SELECT kafka_unpublish('reshaped');
DROP TABLE reshaped;

-- unpublish
SELECT kafka_unpublish('existing');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'existing'::regclass;
SELECT last_value AS start FROM kafka.message_id_seq \gset
INSERT INTO existing VALUES (3, 'c');
SELECT count(*) AS published FROM events(:start);

-- bad input
SELECT kafka_unpublish('existing');
SELECT kafka_snapshot('existing');
CREATE TABLE no_key (a int, b int);
SELECT kafka_publish('no_key');
SELECT kafka_publish('no_key', key_columns => ARRAY['a', 'nope', 'neither']);
SELECT kafka_publish('no_key', key_columns => ARRAY['a'], columns => ARRAY['b', 'c']);
SELECT kafka_publish('no_key', key_columns => ARRAY[]::text[]);
SELECT kafka_publish('no_key', key_columns => ARRAY['a'], format => 'xml');
SELECT kafka_publish('no_key', key_columns => ARRAY['a'], time_format => 'unix');
SELECT kafka_publish('no_key', key_columns => ARRAY['a'], topic => 'bad topic');
\set VERBOSITY terse
SELECT kafka_publish('no_key', key_columns => ARRAY['a'], "where" => 'nope > 1');
\set VERBOSITY default
SELECT kafka_publish('no_key', key_columns => ARRAY['a'], envelope => 'flat');
SELECT kafka_publish('no_key', key_columns => ARRAY['a'], mask_columns => ARRAY['a']);
SELECT kafka_publish('no_key', key_columns => ARRAY['a'], mask_columns => ARRAY['b', 'nope', 'nah']);
SELECT kafka_publish('no_key', key_columns => ARRAY['a'], mask_columns => ARRAY['b'],
					 hash_columns => ARRAY['b']);
SELECT kafka_publish(NULL);
CREATE VIEW a_view AS SELECT 1 AS id;
SELECT kafka_publish('a_view');
CREATE MATERIALIZED VIEW a_matview AS SELECT 1 AS id;
SELECT kafka_publish('a_matview');
-- a partitioned table publishes its partitions, present and future; one of
-- them cannot be published on its own, nor the parent while one is
CREATE TABLE a_partitioned (id int PRIMARY KEY, note text) PARTITION BY RANGE (id);
CREATE TABLE a_partition_1 PARTITION OF a_partitioned FOR VALUES FROM (0) TO (10);
SELECT kafka_publish('a_partition_1');
SELECT kafka_publish('a_partitioned');
SELECT kafka_unpublish('a_partition_1');
SELECT kafka_publish('a_partitioned');
CREATE TABLE a_partition_2 PARTITION OF a_partitioned FOR VALUES FROM (10) TO (20);
SELECT kafka_publish('a_partition_2');
SELECT tgrelid::regclass, tgname FROM pg_trigger
 WHERE tgrelid IN ('a_partitioned'::regclass, 'a_partition_1'::regclass, 'a_partition_2'::regclass)
 ORDER BY 1, 2;
-- truncating one partition would publish nothing: refused; the parent is fine
TRUNCATE a_partition_1;
TRUNCATE a_partitioned;
SELECT kafka_unpublish('a_partitioned');
SELECT count(*) AS triggers_left FROM pg_trigger
 WHERE tgrelid IN ('a_partitioned'::regclass, 'a_partition_1'::regclass, 'a_partition_2'::regclass);
DROP TABLE a_partitioned;
CREATE TEMPORARY TABLE a_temp (id int PRIMARY KEY);
SELECT kafka_publish('a_temp');
SELECT kafka_publish('"odd ""name"""');
CREATE TABLE "odd ""name""" (id int PRIMARY KEY);
SELECT kafka_publish('"odd ""name"""');
SELECT "table", topic FROM kafka.publications WHERE "table" = '"odd ""name"""'::regclass;

DROP TABLE every_type, orders, existing, no_key, "odd ""name""", a_temp;
DROP VIEW a_view;
DROP MATERIALIZED VIEW a_matview;
DROP FUNCTION events(bigint);
DROP FUNCTION wait_for_snapshots();
