-- kafka_wait(): waiting for a message's final status.  No broker is
-- reachable here, so committed messages stay pending.

SELECT kafka_send('waiting', 'v') AS id \gset
SELECT kafka_wait(:id, '100 milliseconds');
SELECT kafka_wait(:id, '0');

-- bad input
SELECT kafka_wait(NULL);
SELECT kafka_wait(:id, NULL);
SELECT kafka_wait(:id, '-1 second');
SELECT kafka_wait(-1);
BEGIN;
SELECT kafka_send('waiting', 'mine') AS mine \gset
\set VERBOSITY terse
SELECT kafka_wait(:mine, '1 second');
\set VERBOSITY default
ROLLBACK;
-- a published change of the current transaction, in kafka.outbox_batch
CREATE TABLE waited (id int PRIMARY KEY);
SELECT kafka_publish('waited');
BEGIN;
INSERT INTO waited VALUES (1), (2);
SELECT max(id) AS mine FROM kafka.pending WHERE topic = 'public.waited' \gset
\set VERBOSITY terse
SELECT kafka_wait(:mine, '1 second');
\set VERBOSITY default
ROLLBACK;
DROP TABLE waited;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT kafka_wait(:id, '1 second');
ROLLBACK;

-- kafka_flush(): this session's committed messages
\c
SELECT kafka_flush('10 milliseconds') AS nothing_committed;
BEGIN;
SELECT kafka_send('waiting', 'not yet committed') > 0 AS sent;
SELECT kafka_flush('10 milliseconds') AS only_committed_messages_count;
ROLLBACK;
SELECT kafka_send('waiting', 'committed') > 0 AS sent;
SELECT kafka_flush('10 milliseconds') AS committed_one_pending;
SELECT kafka_flush(NULL);
SELECT kafka_flush('-1 second');
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT kafka_flush('1 second');
ROLLBACK;

-- statement_timeout interrupts the wait
SET statement_timeout = '200ms';
SELECT kafka_wait(:id, '1 minute');
RESET statement_timeout;

-- EXECUTE is enough to wait for a role's own messages: the status tables
-- need no grant; another role's messages are refused, but to members of
-- pg_monitor
CREATE ROLE kafka_waiter;
GRANT EXECUTE ON FUNCTION kafka_wait(bigint, interval),
	kafka_send(text, "any", "any", integer, jsonb) TO kafka_waiter;
SET ROLE kafka_waiter;
SELECT kafka_send('wait_own', 'mine') AS own \gset
SELECT kafka_wait(:own, '10 milliseconds');
SELECT kafka_wait(:id, '10 milliseconds');
RESET ROLE;
GRANT pg_monitor TO kafka_waiter;
SET ROLE kafka_waiter;
SELECT kafka_wait(:id, '10 milliseconds');
RESET ROLE;
REVOKE pg_monitor FROM kafka_waiter;
REVOKE ALL ON FUNCTION kafka_wait(bigint, interval),
	kafka_send(text, "any", "any", integer, jsonb) FROM kafka_waiter;
DROP ROLE kafka_waiter;

-- kafka_stats(): the worker's counters beside librdkafka's statistics
SELECT jsonb_object_keys(kafka_stats()->'kafka_producer') AS counter ORDER BY 1;
SELECT (kafka_stats()->'kafka_producer'->>'pending')::int > 0 AS some_pending,
	   (kafka_stats()->'kafka_producer'->>'worker_pid')::int IN
		   (SELECT pid FROM pg_stat_activity WHERE backend_type = 'kafka_producer') AS worker_pid;
