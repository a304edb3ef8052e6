-- kafka_send(): arguments, encodings and the transaction it belongs to.
-- No broker is reachable here: every committed message stays pending.

CREATE FUNCTION outbox_rows(since bigint)
RETURNS TABLE (n bigint, topic text, key bytea, value bytea, headers jsonb, "partition" int)
LANGUAGE sql AS $$
	SELECT id - since, topic, key, value, headers, "partition"
	  FROM kafka.pending WHERE id > since ORDER BY id
$$;
SELECT last_value - (NOT is_called)::int AS start FROM kafka.message_id_seq \gset

-- value and key as text, bytea, jsonb, untyped literals and other types
SELECT kafka_send('orders', '{"id": 1}'::jsonb, key => '1') - :start AS n;
SELECT kafka_send('orders', 'plain text'::text, 'k'::text) - :start AS n;
SELECT kafka_send('orders', '\x00ff'::bytea, '\x01'::bytea) - :start AS n;
SELECT kafka_send('orders', 42, key => 7::bigint) - :start AS n;
SELECT kafka_send('orders', 'grüße'::varchar) - :start AS n;
-- a NULL value is a tombstone
SELECT kafka_send('orders', NULL::text, key => 'gone') - :start AS n;
SELECT kafka_send('orders', NULL, key => 'gone') - :start AS n;
-- explicit partition and headers
SELECT kafka_send('orders', 'v', 'k', 3, '{"trace": "abc", "empty": null}') - :start AS n;
SELECT kafka_send(topic => 'a.b_c-D', value => 'named') - :start AS n;
SELECT * FROM outbox_rows(:start);

-- the status view shows them pending
SELECT id - :start AS n, topic, status, "partition", "offset", attempts, error,
	   enqueued_at <= now() AS enqueued, delivered_at
  FROM kafka.messages WHERE id > :start ORDER BY id;

-- only committed messages exist
SELECT last_value - (NOT is_called)::int AS start FROM kafka.message_id_seq \gset
BEGIN;
SELECT kafka_send('orders', 'rolled back') > 0 AS sent;
ROLLBACK;
BEGIN;
SELECT kafka_send('orders', 'kept') > 0 AS sent;
SAVEPOINT s;
SELECT kafka_send('orders', 'undone') > 0 AS sent;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT convert_from(value, 'UTF8') FROM outbox_rows(:start);

-- many in one statement
SELECT count(*) FROM (SELECT kafka_send('bulk', i::text, key => (i % 10)::text)
						FROM generate_series(1, 1000) i) s;
SELECT count(*), count(DISTINCT key), min(status), max(status)
  FROM kafka.messages WHERE topic = 'bulk';
-- they share rows of kafka.outbox_batch, of consecutive ids; with headers
-- or a partition a message is a row of kafka.outbox
SELECT count(*) > 1 AS several_rows, max(cardinality(keys)) > 1 AS shared,
	   sum(cardinality(keys)) AS messages
  FROM kafka.outbox_batch WHERE topic = 'bulk';
SELECT count(*) FROM (SELECT kafka_send('bulk_headers', i::text, headers => '{"h": "1"}')
						FROM generate_series(1, 10) i) s;
SELECT count(*) FROM kafka.outbox WHERE topic = 'bulk_headers';

-- written at the end of the outermost statement: a function calling
-- kafka_send() does not see its messages in kafka.pending, the next
-- statement does
CREATE FUNCTION send_and_count(n int) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
	FOR i IN 1 .. n LOOP
		PERFORM kafka_send('in_function', i::text);
	END LOOP;
	RETURN (SELECT count(*) FROM kafka.pending WHERE topic = 'in_function');
END
$$;
SELECT send_and_count(5) AS seen_inside;
SELECT count(*) AS seen_after, count(DISTINCT id) = 5 AS distinct_ids
  FROM kafka.pending WHERE topic = 'in_function';
-- what a subtransaction sent goes with it, inside one statement too
CREATE FUNCTION send_in_subtransactions() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM kafka_send('subxacts', 'before');
	BEGIN
		PERFORM kafka_send('subxacts', 'undone');
		RAISE division_by_zero;
	EXCEPTION WHEN division_by_zero THEN
		NULL;
	END;
	BEGIN
		PERFORM kafka_send('subxacts', 'kept');
	EXCEPTION WHEN division_by_zero THEN
		NULL;
	END;
	PERFORM kafka_send('subxacts', 'after');
END
$$;
SELECT send_in_subtransactions();
SELECT convert_from(value, 'UTF8') FROM kafka.pending WHERE topic = 'subxacts' ORDER BY id;

-- bad input
SELECT kafka_send(NULL, 'v');
SELECT kafka_send('', 'v');
SELECT kafka_send('.', 'v');
SELECT kafka_send('..', 'v');
SELECT kafka_send('has space', 'v');
SELECT kafka_send('ünïcode', 'v');
SELECT kafka_send(repeat('t', 250), 'v');
SELECT length(repeat('t', 249)) AS longest_topic_accepted
 WHERE kafka_send(repeat('t', 249), 'v') > 0;
SELECT kafka_send('orders', 'v', partition => -1);
SELECT kafka_send('orders', 'v', headers => '[1, 2]');
SELECT kafka_send('orders', 'v', headers => '"text"');
SELECT kafka_send('orders', 'v', headers => '{"n": 1}');
SELECT kafka_send('orders', 'v', headers => '{"nested": {"a": "b"}}');
SELECT kafka_send('orders', repeat('x', 1000001));
SELECT kafka_send('orders', repeat('x', 999867));
SELECT kafka_send('orders', repeat('x', 999960), key => repeat('k', 20));
SELECT kafka_send('orders', 'v', headers => jsonb_build_object('h', repeat('x', 999960)));
SELECT kafka_send('orders', repeat('x', 999866)) > 0 AS largest_value_accepted;

-- no sending from read-only transactions or prepared transactions
BEGIN READ ONLY;
SELECT kafka_send('orders', 'v');
ROLLBACK;
BEGIN;
SELECT kafka_send('orders', 'v') > 0 AS sent;
PREPARE TRANSACTION 'kafka';
SELECT count(*) FROM pg_prepared_xacts;

-- privileges: EXECUTE must be granted; no table privileges are needed
CREATE ROLE kafka_app;
SET ROLE kafka_app;
SELECT kafka_send('orders', 'v');
SELECT count(*) FROM kafka.messages;
RESET ROLE;
GRANT EXECUTE ON FUNCTION kafka_send(text, "any", "any", integer, jsonb) TO kafka_app;
GRANT USAGE ON SCHEMA kafka TO kafka_app;
GRANT SELECT ON kafka.messages TO kafka_app;
SET ROLE kafka_app;
SELECT kafka_send('orders', 'from app') > 0 AS sent;
SELECT count(*) FROM kafka.messages WHERE status = 'pending' AND topic = 'orders' AND id > :start;
SELECT count(*) FROM kafka.outbox;
RESET ROLE;
REVOKE ALL ON FUNCTION kafka_send(text, "any", "any", integer, jsonb) FROM kafka_app;
REVOKE ALL ON SCHEMA kafka FROM kafka_app;
REVOKE ALL ON kafka.messages FROM kafka_app;
DROP ROLE kafka_app;
DROP FUNCTION outbox_rows(bigint);
DROP FUNCTION send_and_count(int), send_in_subtransactions();
