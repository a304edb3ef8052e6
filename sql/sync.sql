-- kafka_send_sync(): argument checks happen before anything is sent.  No
-- broker is reachable here, so a valid message waits until interrupted.

SELECT last_value AS before FROM kafka.message_id_seq \gset

-- bad input
SELECT * FROM kafka_send_sync(NULL, 'v');
SELECT * FROM kafka_send_sync('has space', 'v');
SELECT * FROM kafka_send_sync('orders', 'v', partition => -1);
SELECT * FROM kafka_send_sync('orders', 'v', headers => '[1]');
SELECT * FROM kafka_send_sync('orders', 'v', headers => '{"n": 1}');
SELECT * FROM kafka_send_sync('orders', repeat('x', 1000001));
BEGIN READ ONLY;
SELECT * FROM kafka_send_sync('orders', 'v');
ROLLBACK;
-- none of them took a message id
SELECT last_value = :before AS no_id_taken FROM kafka.message_id_seq;

-- statement_timeout interrupts the wait
SET statement_timeout = '300ms';
\set VERBOSITY terse
SELECT * FROM kafka_send_sync('orders', 'unacknowledged');
\set VERBOSITY default
RESET statement_timeout;

-- the result type
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute WHERE attrelid = 'kafka.delivery'::regclass AND attnum > 0
 ORDER BY attnum;
