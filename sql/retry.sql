-- kafka_retry() and kafka_retry_failed(): failed messages back to pending.

INSERT INTO kafka.failed (id, topic, key, value, headers, "partition", attempts,
						  error_code, error, enqueued_at, failed_at)
SELECT 900000000 + n, t, 'k', 'v', NULL, NULL, 1,
	   'MSG_SIZE_TOO_LARGE', 'Broker: Message size too large', now(), now()
  FROM unnest(ARRAY['retry_a', 'retry_a', 'retry_b']) WITH ORDINALITY AS u(t, n);
\set first 900000001

SELECT id - :first AS n, topic, status, attempts, error
  FROM kafka.messages WHERE topic LIKE 'retry%' ORDER BY id;

-- a failed message is final: kafka_wait() returns at once
SELECT kafka_wait(:first, '1 minute');
SELECT kafka_retry(:first);
SELECT id - :first AS n, topic, status, attempts, error
  FROM kafka.messages WHERE topic LIKE 'retry%' ORDER BY id;

-- only failed messages can be retried
SELECT kafka_retry(:first);
SELECT kafka_retry(-1);
SELECT kafka_retry(NULL);

SELECT kafka_retry_failed('no_such_topic');
SELECT kafka_retry_failed('retry_b');
SELECT kafka_retry_failed();
SELECT status, count(*) FROM kafka.messages WHERE topic LIKE 'retry%' GROUP BY 1;

-- a rolled-back retry leaves the message failed
INSERT INTO kafka.failed (id, topic, key, value, headers, "partition", attempts,
						  error_code, error, enqueued_at, failed_at)
VALUES (900000004, 'retry_c', NULL, 'v', NULL, NULL, 3,
		'TOPIC_AUTHORIZATION_FAILED', 'Broker: Topic authorization failed', now(), now());
BEGIN;
SELECT kafka_retry_failed('retry_c');
ROLLBACK;
SELECT status, error FROM kafka.messages WHERE topic = 'retry_c';

-- granted EXECUTE is enough to retry
CREATE ROLE kafka_operator;
GRANT EXECUTE ON FUNCTION kafka_retry_failed(text) TO kafka_operator;
SET ROLE kafka_operator;
SELECT kafka_retry_failed('retry_c');
SELECT kafka_retry(1);
RESET ROLE;
REVOKE ALL ON FUNCTION kafka_retry_failed(text) FROM kafka_operator;
DROP ROLE kafka_operator;
