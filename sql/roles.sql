-- Roles kept apart: each message records the role that enqueued it, and
-- a role sees and waits for its own messages only; members of pg_monitor
-- see all.

SELECT setval('kafka.message_id_seq', 700000000) IS NOT NULL AS ids_from_700000001;
CREATE ROLE kafka_alice;
CREATE ROLE kafka_bob;
GRANT EXECUTE ON FUNCTION kafka_send(text, "any", "any", integer, jsonb),
	kafka_wait(bigint, interval) TO kafka_alice, kafka_bob;
GRANT USAGE ON SCHEMA kafka TO kafka_alice, kafka_bob;
GRANT SELECT ON kafka.messages TO kafka_alice, kafka_bob;
CREATE TABLE roles_published (id int PRIMARY KEY, secret text);
SELECT kafka_publish('roles_published');
GRANT INSERT ON roles_published TO kafka_bob;

SET ROLE kafka_alice;
SELECT kafka_send('roles', 'alice''s', key => 'a') AS alice_id \gset
RESET ROLE;
SET ROLE kafka_bob;
SELECT kafka_send('roles', 'bob''s', key => 'b') AS bob_id \gset
INSERT INTO roles_published VALUES (1, 'bob''s row');
-- bob sees his message and his published change, not alice's
SELECT topic, key, status, enqueued_by FROM kafka.messages
 WHERE topic IN ('roles', 'public.roles_published') ORDER BY id;
-- not even through a function of his own in the WHERE clause
CREATE FUNCTION pg_temp.leak(bytea) RETURNS boolean LANGUAGE plpgsql COST 0.0001
	AS $$ BEGIN RAISE NOTICE 'saw key %', $1; RETURN true; END $$;
SELECT count(*) FROM kafka.messages WHERE topic = 'roles' AND pg_temp.leak(key);
SELECT kafka_wait(:bob_id, '0');
SELECT kafka_wait(:alice_id, '0');
-- the payloads are not his to read
SELECT count(*) FROM kafka.pending;
DROP FUNCTION pg_temp.leak(bytea);
RESET ROLE;

-- pg_monitor members (and superusers) see every role's messages
GRANT pg_monitor TO kafka_alice;
SET ROLE kafka_alice;
SELECT topic, key, enqueued_by FROM kafka.messages
 WHERE topic IN ('roles', 'public.roles_published') ORDER BY id;
SELECT kafka_wait(:bob_id, '0');
RESET ROLE;
SELECT count(*) FROM kafka.messages WHERE topic = 'roles';

-- kafka_retry keeps the role; so does a message's failure
WITH moved AS (DELETE FROM kafka.outbox WHERE id = :bob_id
			   RETURNING id, topic, key, value, headers, "partition", attempts,
						 enqueued_at, enqueued_by)
INSERT INTO kafka.failed (id, topic, key, value, headers, "partition", attempts,
						  error_code, error, enqueued_at, failed_at, enqueued_by)
	SELECT id, topic, key, value, headers, "partition", attempts, 'TEST', 'test',
		   enqueued_at, now(), enqueued_by FROM moved;
SELECT kafka_retry(:bob_id);
SELECT status, enqueued_by FROM kafka.messages WHERE id = :bob_id;
SELECT count(*) AS held FROM kafka.delivery_hold;

SELECT kafka_unpublish('roles_published');
DROP TABLE roles_published;
REVOKE pg_monitor FROM kafka_alice;
REVOKE ALL ON FUNCTION kafka_send(text, "any", "any", integer, jsonb),
	kafka_wait(bigint, interval) FROM kafka_alice, kafka_bob;
REVOKE ALL ON SCHEMA kafka FROM kafka_alice, kafka_bob;
REVOKE ALL ON kafka.messages FROM kafka_alice, kafka_bob;
DELETE FROM kafka.outbox WHERE enqueued_by IN ('kafka_alice'::regrole, 'kafka_bob'::regrole);
DELETE FROM kafka.outbox_batch WHERE enqueued_by = 'kafka_bob'::regrole;
DROP ROLE kafka_alice, kafka_bob;
