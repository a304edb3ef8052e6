-- A restored copy never sends the original's messages by surprise:
-- messages that reach the queue tables by INSERT or COPY (as pg_restore
-- writes them) hold delivery until kafka_resume().  And kafka.publication
-- binds a copied row to its table by name.

SELECT count(*) AS held FROM kafka.delivery_hold;
-- kafka_send and published writes do not hold
SELECT kafka_send('hold', 'sent') > 0 AS sent;
SELECT count(*) AS held FROM kafka.delivery_hold;
-- what waits, per topic and in all (no broker is reachable here)
SELECT topic, pending, pending_bytes, failed, oldest_pending_age > '0' AS has_age
  FROM kafka.topic_backlog WHERE topic = 'hold';
SELECT pending > 0 AS pending, pending_bytes > 0 AS pending_bytes,
	   oldest_pending_age > '0' AS has_age, worker_pid IS NOT NULL AS worker,
	   standby, held, brokers_up
  FROM kafka.health;
-- nothing to discard while delivery runs
SELECT kafka_discard();

-- a COPY into the outbox, as a restore does, holds in its own transaction
BEGIN;
COPY kafka.outbox (id, topic, value, enqueued_at) FROM stdin;
800000001	hold_restored	\\x7631	2026-01-01 00:00:00+00
800000002	hold_restored	\\x7632	2026-01-01 00:00:00+00
\.
SELECT held, reason FROM kafka.delivery_hold;
ROLLBACK;
SELECT count(*) AS held FROM kafka.delivery_hold;
COPY kafka.outbox_batch (first_id, topic, keys, "values", enqueued_at) FROM stdin;
800000010	hold_restored	{NULL,NULL}	{"\\\\x7633","\\\\x7634"}	2026-01-01 00:00:00+00
\.
SELECT held, reason FROM kafka.delivery_hold;
SELECT id, topic, status FROM kafka.messages WHERE topic = 'hold_restored' ORDER BY id;
SELECT held FROM kafka.health;

-- discarded while held: one topic's, then the rest
SELECT kafka_discard('no_such_topic');
SELECT kafka_discard('hold_restored');
SELECT count(*) FROM kafka.messages WHERE topic = 'hold_restored';
SELECT kafka_resume();
SELECT count(*) AS held FROM kafka.delivery_hold;
SELECT kafka_resume();

-- kafka.publication keeps column names as columns are renamed and dropped
CREATE TABLE held_orders (id int, gone int, region text, status text, PRIMARY KEY (id, region));
SELECT kafka_publish('held_orders', columns => ARRAY['id', 'region', 'status'],
					 "where" => $$status <> 'draft'$$);
ALTER TABLE held_orders RENAME COLUMN region TO area;
ALTER TABLE held_orders DROP COLUMN gone;
SELECT key_columns, key_attnums, columns, column_attnums FROM kafka.publication
 WHERE relid = 'held_orders'::regclass;
-- a copied row (as pg_restore writes it, with the original's numbers and
-- filter function, which mean nothing in the restored database) binds by
-- name and makes its filter anew
CREATE TEMP TABLE copied AS SELECT * FROM kafka.publication WHERE relid = 'held_orders'::regclass;
DELETE FROM kafka.publication WHERE relid = 'held_orders'::regclass;
UPDATE copied SET key_attnums = '{9,9}', column_attnums = '{9,9,9}', row_filter_function = 1;
INSERT INTO kafka.publication SELECT * FROM copied;
SELECT key_columns, key_attnums, columns, column_attnums,
	   row_filter_function::regproc::text = 'kafka.row_filter_' || relid::oid AS own_filter
  FROM kafka.publication WHERE relid = 'held_orders'::regclass;
-- the filter is the extension's, so pg_dump leaves it to the restored row
SELECT count(*) AS filter_is_member FROM pg_depend d JOIN kafka.publication p
	ON d.objid = p.row_filter_function AND d.deptype = 'e'
 WHERE p.relid = 'held_orders'::regclass;
INSERT INTO held_orders VALUES (1, 'eu', 'paid'), (2, 'us', 'draft');
SELECT topic, convert_from(key, 'UTF8') AS key FROM kafka.pending
 WHERE topic = 'public.held_orders' ORDER BY id;
SELECT kafka_unpublish('held_orders');
SELECT count(*) AS filters_left FROM pg_proc WHERE proname LIKE 'row\_filter\_%';
DROP TABLE held_orders;
