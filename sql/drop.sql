-- DROP EXTENSION refuses while messages are pending or failed; only
-- CASCADE with kafka.discard_on_drop discards them.  Runs last: it drops
-- the extension.
BEGIN;
DELETE FROM kafka.outbox;
DELETE FROM kafka.outbox_batch;
DELETE FROM kafka.failed;
-- with nothing undelivered, the drop goes through
SAVEPOINT nothing_left;
DROP EXTENSION kafka_producer CASCADE;
ROLLBACK TO SAVEPOINT nothing_left;
SELECT count(kafka_send('drop', 'v')) FROM generate_series(1, 2);
INSERT INTO kafka.failed (id, topic, key, value, headers, "partition", attempts,
						  error_code, error, enqueued_at, failed_at)
VALUES (900000100, 'drop', NULL, 'v', NULL, NULL, 1,
		'MSG_SIZE_TOO_LARGE', 'Broker: Message size too large', now(), now());
SAVEPOINT s;
DROP EXTENSION kafka_producer;
ROLLBACK TO SAVEPOINT s;
DROP EXTENSION kafka_producer CASCADE;
ROLLBACK TO SAVEPOINT s;
SET LOCAL kafka.discard_on_drop = on;
SAVEPOINT t;
DROP EXTENSION kafka_producer;
ROLLBACK TO SAVEPOINT t;
DROP EXTENSION kafka_producer CASCADE;
SELECT count(*) FROM pg_extension WHERE extname = 'kafka_producer';
ROLLBACK;

-- only superusers may say so
CREATE ROLE kafka_dropper;
SET ROLE kafka_dropper;
SET kafka.discard_on_drop = on;
RESET ROLE;
DROP ROLE kafka_dropper;

-- other extensions drop as ever
CREATE EXTENSION pg_prewarm;
DROP EXTENSION pg_prewarm;
SELECT extname FROM pg_extension WHERE extname = 'kafka_producer';
