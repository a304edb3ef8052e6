/* kafka_producer 0.2.0: storage, status view and SQL API */

\echo Use "CREATE EXTENSION kafka_producer" to load this file. \quit

CREATE SCHEMA kafka;

/*
 * Refuses installation unless the library was preloaded and this is the
 * database kafka.databases names: anywhere else nobody would deliver.
 */
CREATE FUNCTION kafka.check_database() RETURNS void
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'kafka_check_database';
SELECT kafka.check_database();

CREATE SEQUENCE kafka.message_id_seq;

/*
 * Messages waiting for Kafka's acknowledgement: inserted by kafka_send(),
 * deleted by the worker in the same statement that records their delivery.
 * Only undelivered rows live here, so the worker's ordered scans stay short.
 * VACUUM leaves its emptied pages in place (vacuum_truncate): the next
 * messages reuse them rather than extend the file a page at a time, and
 * VACUUM never takes the ACCESS EXCLUSIVE lock that truncating would, which
 * would hold up every session enqueueing meanwhile.  The worker VACUUMs the
 * queue tables itself as it deletes their rows, and only once the queue has
 * been empty for ten seconds lets them shrink, taking that lock if free.
 */
CREATE TABLE kafka.outbox (
	id bigint PRIMARY KEY,
	topic text NOT NULL,
	key bytea,
	value bytea,
	headers jsonb,
	"partition" integer,
	attempts integer NOT NULL DEFAULT 0,
	last_error text,
	enqueued_at timestamptz NOT NULL,
	enqueued_by regrole
) WITH (autovacuum_vacuum_scale_factor = 0.01,
		autovacuum_vacuum_insert_scale_factor = 0.01,
		vacuum_truncate = false);

/*
 * Messages enqueued by the change-publishing trigger, several to a row:
 * the row first_id holds the messages first_id .. first_id +
 * cardinality(keys) - 1, of one topic and one transaction.  A row and an
 * index entry per page of events, not per event, halves what publishing
 * adds to a write.  Rows stay small enough to be stored inline, without
 * TOAST, unless one message alone is larger.  The worker sends them as it
 * does kafka.outbox rows, deletes a row once all of its messages are
 * delivered, and moves its messages to kafka.outbox when one fails or must
 * be sent again.  kafka.pending shows both tables a message per row.
 * VACUUM leaves its pages in place, as it does kafka.outbox's.
 */
CREATE TABLE kafka.outbox_batch (
	first_id bigint PRIMARY KEY,
	topic text NOT NULL,
	keys bytea[] NOT NULL,
	"values" bytea[] NOT NULL,
	enqueued_at timestamptz NOT NULL,
	enqueued_by regrole
) WITH (toast_tuple_target = 8160,
		autovacuum_vacuum_scale_factor = 0.01,
		autovacuum_vacuum_insert_scale_factor = 0.01,
		vacuum_truncate = false);
/*
 * Its keys and values compressed with lz4 inside the row: events repeat
 * their member names and "source", and take a fifth to a seventh of the
 * heap and WAL they took uncompressed.  Kept in the row (MAIN), they move
 * to TOAST only if still larger than a page; the topic, short, is never
 * compressed or moved.  A server built without lz4 stores them as they
 * are, as 0.1.0 did.
 */
DO $$
BEGIN
	ALTER TABLE kafka.outbox_batch
		ALTER COLUMN topic SET STORAGE PLAIN,
		ALTER COLUMN keys SET STORAGE MAIN,
		ALTER COLUMN keys SET COMPRESSION lz4,
		ALTER COLUMN "values" SET STORAGE MAIN,
		ALTER COLUMN "values" SET COMPRESSION lz4,
		SET (toast_tuple_target = 128);
EXCEPTION WHEN feature_not_supported THEN
	RAISE NOTICE 'kafka.outbox_batch is stored uncompressed: this server was built without lz4';
END
$$;

/* Every undelivered message, with its payload. */
CREATE VIEW kafka.pending AS
	SELECT id, topic, key, value, headers, "partition", attempts, last_error,
		   enqueued_at, enqueued_by
	  FROM kafka.outbox
	UNION ALL
	SELECT b.first_id + m.n - 1, b.topic, m.key, m.value, NULL::jsonb,
		   NULL::integer, 0, NULL::text, b.enqueued_at, b.enqueued_by
	  FROM kafka.outbox_batch b,
		   unnest(b.keys, b."values") WITH ORDINALITY AS m(key, value, n);

COMMENT ON VIEW kafka.pending IS
	'messages not yet delivered, with their payload';

/*
 * Whether a message with an id from $1 to $2 is undelivered, through the
 * primary keys: a kafka.outbox_batch row holds at most 256 messages
 * (KP_BATCH_ROW_MESSAGES).
 */
CREATE FUNCTION kafka.any_pending(bigint, bigint) RETURNS boolean
	LANGUAGE sql STABLE
AS $$
	SELECT EXISTS (SELECT FROM kafka.outbox WHERE id BETWEEN $1 AND $2)
		OR EXISTS (SELECT FROM kafka.outbox_batch
					WHERE first_id > $1 - 256 AND first_id <= $2
					  AND first_id + cardinality(keys) > $1)
$$;

/*
 * One row per acknowledged message, written in batches; pruned by age.
 * Its only index is a BRIN on (id, delivered_at): rows arrive in nearly
 * ascending id and time, and a B-tree here cost the worker a quarter of
 * its time.  The worker summarizes new ranges as it prunes.
 */
CREATE TABLE kafka.delivered (
	id bigint NOT NULL,
	topic text NOT NULL,
	key bytea,
	"partition" integer NOT NULL,
	"offset" bigint,
	attempts integer NOT NULL,
	enqueued_at timestamptz NOT NULL,
	delivered_at timestamptz NOT NULL,
	enqueued_by regrole
);
CREATE INDEX delivered_brin ON kafka.delivered
	USING brin (id, delivered_at) WITH (pages_per_range = 16, autosummarize = on);

/* Messages Kafka refused for good, with their payload, until retried. */
CREATE TABLE kafka.failed (
	id bigint PRIMARY KEY,
	topic text NOT NULL,
	key bytea,
	value bytea,
	headers jsonb,
	"partition" integer,
	attempts integer NOT NULL,
	error_code text NOT NULL,
	error text NOT NULL,
	enqueued_at timestamptz NOT NULL,
	failed_at timestamptz NOT NULL,
	enqueued_by regrole
);

/*
 * A role sees the messages it enqueued (as current_user: kafka_send(), or
 * a write to a published table); members of pg_monitor, and superusers,
 * see every message.  A security barrier, so that a caller's own function
 * in a WHERE clause never sees the rows the view hides.
 */
CREATE VIEW kafka.messages WITH (security_barrier) AS
	SELECT id, topic, key, status, "partition", "offset", attempts, error,
		   enqueued_at, delivered_at, enqueued_by
	  FROM (SELECT id, topic, key, 'pending'::text AS status, "partition",
				   NULL::bigint AS "offset", attempts, last_error AS error,
				   enqueued_at, NULL::timestamptz AS delivered_at, enqueued_by
			  FROM kafka.pending
			UNION ALL
			SELECT id, topic, key, 'delivered', "partition", "offset", attempts,
				   NULL, enqueued_at, delivered_at, enqueued_by
			  FROM kafka.delivered
			UNION ALL
			SELECT id, topic, key, 'failed', "partition", NULL, attempts,
				   error_code || ': ' || error, enqueued_at, NULL, enqueued_by
			  FROM kafka.failed) AS m
	 WHERE enqueued_by = current_user::regrole
		OR (SELECT pg_has_role('pg_monitor', 'USAGE'));

COMMENT ON VIEW kafka.messages IS
	'every message''s fate: pending, delivered (with partition and offset) or failed (with Kafka''s error)';

/*
 * Per-topic producer settings: Kafka topic properties (acks, compression,
 * partitioner, timeouts) that override the kafka.* settings for one topic.
 * A trigger checks each row with librdkafka and tells the worker at
 * commit; the worker rebuilds its producers to apply them.
 */
CREATE TABLE kafka.topic_config (
	topic text PRIMARY KEY,
	properties jsonb NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION kafka.topic_config_trigger() RETURNS trigger
	LANGUAGE C AS 'MODULE_PATHNAME', 'kafka_topic_config_trigger';
CREATE TRIGGER check_and_apply
	BEFORE INSERT OR UPDATE OR DELETE ON kafka.topic_config
	FOR EACH ROW EXECUTE FUNCTION kafka.topic_config_trigger();
CREATE TRIGGER apply_truncate
	AFTER TRUNCATE ON kafka.topic_config
	FOR EACH STATEMENT EXECUTE FUNCTION kafka.topic_config_trigger();

/* The properties as kafka.topic_config would store them, or an ERROR. */
CREATE FUNCTION kafka.check_topic_properties(topic text, properties jsonb)
	RETURNS jsonb
	LANGUAGE C STRICT STABLE AS 'MODULE_PATHNAME', 'kafka_check_topic_properties';

/*
 * Every Avro schema kafka_send_avro() has used, by the fingerprint its
 * messages carry (the 8 bytes after 0xC3 0x01: CRC-64-AVRO of the
 * schema's canonical form, little-endian) and subject (<topic>-value,
 * <topic>-key).
 */
CREATE TABLE kafka.schemas (
	fingerprint bytea NOT NULL CHECK (length(fingerprint) = 8),
	subject text NOT NULL,
	schema jsonb NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (fingerprint, subject)
);

/* pg_dump keeps what has not been delivered yet. */
SELECT pg_catalog.pg_extension_config_dump('kafka.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('kafka.outbox_batch', '');
SELECT pg_catalog.pg_extension_config_dump('kafka.failed', '');
SELECT pg_catalog.pg_extension_config_dump('kafka.message_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('kafka.topic_config', '');
SELECT pg_catalog.pg_extension_config_dump('kafka.schemas', '');

/*
 * While this table has its row, the worker sends nothing.  Messages that
 * reach kafka.outbox or kafka.outbox_batch other than through
 * kafka_send() and the publishing trigger, which write without the
 * executor, put the row here in the same transaction: so pg_restore's
 * COPY of a dump holds delivery before the worker can see one restored
 * message, and a restored copy of a database never sends the original's
 * messages unless kafka_resume() says so.  Not dumped: a restore decides
 * anew.
 */
CREATE TABLE kafka.delivery_hold (
	held boolean PRIMARY KEY DEFAULT true CHECK (held),
	reason text NOT NULL,
	since timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION kafka.hold_inserted_messages() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO kafka.delivery_hold (reason)
		VALUES (format('messages were written into %s by INSERT or COPY, as a restore does',
					   TG_TABLE_NAME))
		ON CONFLICT DO NOTHING;
	RETURN NULL;
END
$$;
CREATE TRIGGER hold_inserted_messages AFTER INSERT ON kafka.outbox
	FOR EACH STATEMENT EXECUTE FUNCTION kafka.hold_inserted_messages();
CREATE TRIGGER hold_inserted_messages AFTER INSERT ON kafka.outbox_batch
	FOR EACH STATEMENT EXECUTE FUNCTION kafka.hold_inserted_messages();

/* Ends a hold: the worker sends the pending messages. */
CREATE FUNCTION kafka_resume() RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM kafka.delivery_hold;
	IF NOT FOUND THEN
		RAISE NOTICE 'delivery was not held';
		RETURN;
	END IF;
	PERFORM kafka.wake_worker(coalesce(least((SELECT min(id) FROM kafka.outbox),
											  (SELECT min(first_id) FROM kafka.outbox_batch)),
									  1));
END
$$;

COMMENT ON FUNCTION kafka_resume() IS
	'end a hold on delivery (as after a restore): send the pending messages';

/*
 * Removes the pending and failed messages, or those of one topic, while
 * delivery is held: nothing of them is in flight then.  Returns how many.
 */
CREATE FUNCTION kafka_discard(topic text DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	discarded bigint;
BEGIN
	IF NOT EXISTS (SELECT FROM kafka.delivery_hold FOR SHARE) THEN
		RAISE EXCEPTION 'cannot discard messages while delivery is running'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Only the messages of a held database, such as a restored copy, can be discarded.',
				  HINT = 'To discard failed messages, delete them from kafka.failed.';
	END IF;
	WITH outbox AS (
		DELETE FROM kafka.outbox o
		 WHERE kafka_discard.topic IS NULL OR o.topic = kafka_discard.topic RETURNING 1),
	batch AS (
		DELETE FROM kafka.outbox_batch b
		 WHERE kafka_discard.topic IS NULL OR b.topic = kafka_discard.topic
		RETURNING cardinality(b.keys) AS n),
	failed AS (
		DELETE FROM kafka.failed f
		 WHERE kafka_discard.topic IS NULL OR f.topic = kafka_discard.topic RETURNING 1)
	SELECT (SELECT count(*) FROM outbox) + (SELECT coalesce(sum(n), 0) FROM batch) +
		   (SELECT count(*) FROM failed)
	  INTO discarded;
	RETURN discarded;
END
$$;

COMMENT ON FUNCTION kafka_discard(text) IS
	'remove the pending and failed messages (or a topic''s) of a held database, as a restored copy';

CREATE FUNCTION kafka_send(topic text, value "any", key "any" DEFAULT NULL,
						   "partition" integer DEFAULT NULL,
						   headers jsonb DEFAULT NULL)
	RETURNS bigint
	LANGUAGE C VOLATILE PARALLEL UNSAFE
	AS 'MODULE_PATHNAME', 'kafka_send';

COMMENT ON FUNCTION kafka_send(text, "any", "any", integer, jsonb) IS
	'enqueue a message; it is delivered after the calling transaction commits';

/*
 * Enqueues a row (or any value of a supported type) as an Avro message in
 * single-object encoding, with its schema derived from the type; the key
 * likewise.  Transactional, like kafka_send.
 */
CREATE FUNCTION kafka_send_avro(topic text, value "any", key "any" DEFAULT NULL,
								"partition" integer DEFAULT NULL,
								headers jsonb DEFAULT NULL)
	RETURNS bigint
	LANGUAGE C VOLATILE PARALLEL UNSAFE
	AS 'MODULE_PATHNAME', 'kafka_send_avro';

COMMENT ON FUNCTION kafka_send_avro(text, "any", "any", integer, jsonb) IS
	'enqueue a row as an Avro message (single-object encoding); delivered after commit';

/* Where Kafka stored a message; offset is null with acks = 0. */
CREATE TYPE kafka.delivery AS (id bigint, "partition" integer, "offset" bigint);

/*
 * Sends a message now, outside the calling transaction, and waits for
 * Kafka's acknowledgement; an ERROR if Kafka refuses it or does not answer
 * within kafka.message_timeout_ms.
 */
CREATE FUNCTION kafka_send_sync(topic text, value "any", key "any" DEFAULT NULL,
								"partition" integer DEFAULT NULL,
								headers jsonb DEFAULT NULL)
	RETURNS kafka.delivery
	LANGUAGE C VOLATILE PARALLEL UNSAFE
	AS 'MODULE_PATHNAME', 'kafka_send_sync';

COMMENT ON FUNCTION kafka_send_sync(text, "any", "any", integer, jsonb) IS
	'send a message now, outside the transaction, and wait for Kafka''s acknowledgement';

/* Tells the worker, at commit, that messages from first_id on are new. */
CREATE FUNCTION kafka.wake_worker(first_id bigint) RETURNS void
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'kafka_wake_worker';

/*
 * Waits until a message is delivered or failed, or the timeout passes;
 * returns its status.  The caller must have enqueued it, or be a member
 * of pg_monitor.  Outcomes are also announced by the worker with
 * NOTIFY kafka_delivery, payload '<status>:<ids>' as in '17,20-31'.
 */
CREATE FUNCTION kafka_wait(message_id bigint, timeout interval DEFAULT '30 seconds')
	RETURNS text
	LANGUAGE C VOLATILE PARALLEL UNSAFE
	SET search_path = pg_catalog, pg_temp
	AS 'MODULE_PATHNAME', 'kafka_wait';

COMMENT ON FUNCTION kafka_wait(bigint, interval) IS
	'wait for a message''s final status: delivered, failed, or pending after the timeout';

/*
 * Waits until every message this session committed since its last flush
 * is delivered or failed; false if the timeout passed first.
 */
CREATE FUNCTION kafka_flush(timeout interval DEFAULT '30 seconds')
	RETURNS boolean
	LANGUAGE C VOLATILE PARALLEL UNSAFE
	SET search_path = pg_catalog, pg_temp
	AS 'MODULE_PATHNAME', 'kafka_flush';

COMMENT ON FUNCTION kafka_flush(interval) IS
	'wait until this session''s committed messages are delivered or failed';

/*
 * The producer's latest statistics document (librdkafka's STATISTICS.md)
 * with the worker's counters under "kafka_producer".
 */
CREATE FUNCTION kafka_stats() RETURNS jsonb
	LANGUAGE C VOLATILE
	SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS 'MODULE_PATHNAME', 'kafka_stats';

/* Brokers the producer discovered from the bootstrap list, and their state. */
CREATE FUNCTION kafka_brokers(OUT id integer, OUT host text, OUT port integer,
							  OUT state text)
	RETURNS SETOF record
	LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
	SELECT (b->>'nodeid')::integer,
		   regexp_replace(b->>'nodename', ':[0-9]+$', ''),
		   substring(b->>'nodename' FROM ':([0-9]+)$')::integer,
		   b->>'state'
	  FROM jsonb_each(@extschema@.kafka_stats()->'brokers') AS e(name, b)
	 WHERE (b->>'nodeid')::integer >= 0
	 ORDER BY 1
$$;

/* Partitions of the topics the producer has sent to, with their leaders. */
CREATE FUNCTION kafka_topics(OUT topic text, OUT "partition" integer,
							 OUT leader integer)
	RETURNS SETOF record
	LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
	SELECT t.key, (p->>'partition')::integer, (p->>'leader')::integer
	  FROM jsonb_each(@extschema@.kafka_stats()->'topics') AS t,
		   jsonb_each(t.value->'partitions') AS e(id, p)
	 WHERE (p->>'partition')::integer >= 0
	 ORDER BY 1, 2
$$;

/*
 * Re-queueing is an INSERT into kafka.outbox: done as a replica, so that
 * kafka.hold_inserted_messages() does not take it for a restore.
 */
CREATE FUNCTION kafka_retry(message_id bigint) RETURNS void
	LANGUAGE plpgsql STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	SET session_replication_role = replica
AS $$
DECLARE
	current_status text;
BEGIN
	IF pg_is_in_recovery() THEN
		RAISE EXCEPTION 'cannot retry Kafka messages on a standby'
			USING ERRCODE = 'read_only_sql_transaction', HINT = 'Retry them on the primary.';
	END IF;
	WITH moved AS (
		DELETE FROM kafka.failed WHERE id = message_id
		RETURNING id, topic, key, value, headers, "partition", enqueued_at, enqueued_by)
	INSERT INTO kafka.outbox (id, topic, key, value, headers, "partition", enqueued_at,
							  enqueued_by)
		SELECT * FROM moved;
	IF FOUND THEN
		PERFORM kafka.wake_worker(message_id);
		RETURN;
	END IF;
	SELECT status INTO current_status FROM kafka.messages WHERE id = message_id;
	IF current_status IS NULL THEN
		RAISE EXCEPTION 'Kafka message % does not exist', message_id
			USING ERRCODE = 'undefined_object',
				  HINT = 'Delivered messages are removed after kafka.status_retention.';
	END IF;
	RAISE EXCEPTION 'cannot retry Kafka message %', message_id
		USING ERRCODE = 'object_not_in_prerequisite_state',
			  DETAIL = format('Only failed messages can be retried; its status is "%s".',
							  current_status);
END
$$;

COMMENT ON FUNCTION kafka_retry(bigint) IS 're-queue one failed message';

CREATE FUNCTION kafka_retry_failed(topic text DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	SET session_replication_role = replica
AS $$
DECLARE
	first_id bigint;
	requeued bigint;
BEGIN
	IF pg_is_in_recovery() THEN
		RAISE EXCEPTION 'cannot retry Kafka messages on a standby'
			USING ERRCODE = 'read_only_sql_transaction', HINT = 'Retry them on the primary.';
	END IF;
	WITH moved AS (
		DELETE FROM kafka.failed f
		 WHERE kafka_retry_failed.topic IS NULL OR f.topic = kafka_retry_failed.topic
		RETURNING id, f.topic, key, value, headers, "partition", enqueued_at, enqueued_by),
	inserted AS (
		INSERT INTO kafka.outbox (id, topic, key, value, headers, "partition", enqueued_at,
								  enqueued_by)
			SELECT * FROM moved RETURNING id)
	SELECT min(id), count(*) INTO first_id, requeued FROM inserted;
	IF requeued > 0 THEN
		PERFORM kafka.wake_worker(first_id);
	END IF;
	RETURN requeued;
END
$$;

COMMENT ON FUNCTION kafka_retry_failed(text) IS
	're-queue every failed message, or those of one topic; returns how many';

/*
 * Sets a topic's properties, replacing any it had; NULL or '{}' returns the
 * topic to the kafka.* settings.  Returns what is now in effect.
 */
CREATE FUNCTION kafka_topic_config(topic text, properties jsonb)
	RETURNS jsonb
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	stored jsonb;
BEGIN
	IF topic IS NULL THEN
		RAISE EXCEPTION 'Kafka topic must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF properties IS NULL OR properties = '{}' THEN
		DELETE FROM kafka.topic_config c WHERE c.topic = kafka_topic_config.topic;
		RETURN '{}';
	END IF;
	stored := kafka.check_topic_properties(topic, properties);
	INSERT INTO kafka.topic_config AS c (topic, properties)
		VALUES (kafka_topic_config.topic, stored)
		ON CONFLICT ON CONSTRAINT topic_config_pkey
		DO UPDATE SET properties = excluded.properties, updated_at = now();
	RETURN stored;
END
$$;

COMMENT ON FUNCTION kafka_topic_config(text, jsonb) IS
	'set a topic''s own producer properties (acks, compression.type, partitioner, ...)';

REVOKE ALL ON FUNCTION kafka_send(text, "any", "any", integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_topic_config(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_send_sync(text, "any", "any", integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_send_avro(text, "any", "any", integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_wait(bigint, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_flush(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_brokers() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_topics() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_retry(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_retry_failed(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.wake_worker(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.check_database() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.topic_config_trigger() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.check_topic_properties(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.any_pending(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.hold_inserted_messages() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_resume() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_discard(text) FROM PUBLIC;

/* ---------------------------------------------------------------------
 * Change publishing: kafka_publish() and its trigger
 * ---------------------------------------------------------------------
 */

/*
 * The options of each published table.  Its columns are kept by number,
 * so that renaming one needs no re-publishing, and by name, kept current
 * by kafka.follow_renamed_columns(): pg_dump copies the names, and the
 * table by name (a regclass), so a restored row binds to the restored
 * table, whose column numbers differ where columns were dropped.
 */
CREATE TABLE kafka.publication (
	relid regclass PRIMARY KEY,
	topic text NOT NULL,
	format text NOT NULL,
	key_attnums int2[] NOT NULL,
	column_attnums int2[],
	row_filter text,
	row_filter_function oid,
	tombstones boolean NOT NULL,
	time_format text NOT NULL,
	key_columns text[] NOT NULL,
	columns text[],
	envelope text NOT NULL DEFAULT 'debezium',
	mask_columns text[],
	hash_columns text[],
	mask_attnums int2[],
	hash_attnums int2[],
	shape text
);
SELECT pg_catalog.pg_extension_config_dump('kafka.publication', '');

CREATE VIEW kafka.publications AS
	SELECT relid AS "table", topic, format, key_columns, columns, row_filter,
		   tombstones, time_format, envelope, mask_columns, hash_columns
	  FROM kafka.publication;

COMMENT ON VIEW kafka.publications IS 'tables whose changes are published, with their options';

CREATE FUNCTION kafka.publish_trigger() RETURNS trigger
	LANGUAGE C AS 'MODULE_PATHNAME', 'kafka_publish_trigger';

/*
 * Snapshots of published tables, which the worker reads in the background
 * a chunk at a time in primary key order, each chunk in a transaction of
 * its own that holds its rows FOR SHARE until its events have their ids: a
 * writer waits for one chunk at most, and a row's snapshot event never
 * follows a change of the row it does not show.  last_key is the key of
 * the last row read: a restarted worker goes on after it.
 */
CREATE TABLE kafka.snapshot (
	id bigserial PRIMARY KEY,
	relid regclass NOT NULL,
	condition text,
	key_columns text[] NOT NULL,
	key_types text[] NOT NULL,
	last_key text[],
	rows_done bigint NOT NULL DEFAULT 0,
	started_at timestamptz NOT NULL DEFAULT now(),
	finished_at timestamptz,
	canceled_at timestamptz,
	error text
);

CREATE VIEW kafka.snapshots AS
	SELECT id, relid AS "table", condition AS "where", rows_done, started_at,
		   coalesce(finished_at, canceled_at) AS finished_at,
		   CASE WHEN error IS NOT NULL THEN 'failed'
				WHEN canceled_at IS NOT NULL THEN 'canceled'
				WHEN finished_at IS NOT NULL THEN 'done'
				ELSE 'running' END AS status,
		   error
	  FROM kafka.snapshot;

COMMENT ON VIEW kafka.snapshots IS 'snapshots of published tables, running and past';

/* Every row of a table without a primary key, in one transaction. */
CREATE FUNCTION kafka.snapshot_now(tbl regclass) RETURNS bigint
	LANGUAGE C STRICT VOLATILE AS 'MODULE_PATHNAME', 'kafka_snapshot_now';

/*
 * The work of kafka_snapshot(), done as the extension's owner once the
 * caller's ownership of tbl and its condition are checked: a snapshot for
 * the worker, or, of a table without a primary key, one made now.
 */
CREATE FUNCTION kafka.start_snapshot(tbl regclass, "where" text) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp SET client_min_messages = warning
AS $$
DECLARE
	keys text[];
	types text[];
	started bigint;
BEGIN
	IF NOT EXISTS (SELECT FROM kafka.publication p WHERE p.relid = tbl) THEN
		RAISE EXCEPTION 'table % is not published', tbl
			USING ERRCODE = 'undefined_object',
				  HINT = 'Publish it with kafka_publish() first.';
	END IF;
	SELECT array_agg(a.attname::text ORDER BY k.n),
		   array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.n)
	  INTO keys, types
	  FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n), pg_attribute a
	 WHERE i.indrelid = tbl AND i.indisprimary
	   AND a.attrelid = tbl AND a.attnum = k.attnum;
	IF keys IS NOT NULL THEN
		INSERT INTO kafka.snapshot (relid, condition, key_columns, key_types)
			VALUES (tbl, "where", keys, types) RETURNING id INTO started;
		RETURN started;
	END IF;
	IF "where" IS NOT NULL THEN
		RAISE EXCEPTION 'cannot snapshot some rows of table %, which has no primary key', tbl
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Snapshots are read in chunks by primary key.',
				  HINT = 'Add a primary key, or snapshot the whole table.';
	END IF;
	INSERT INTO kafka.snapshot (relid, key_columns, key_types, rows_done, finished_at)
		VALUES (tbl, '{}', '{}', kafka.snapshot_now(tbl), now()) RETURNING id INTO started;
	RETURN started;
END
$$;

/* Enqueues the rows of a published table as "r" events, in the background. */
CREATE FUNCTION kafka_snapshot(tbl regclass, "where" text DEFAULT NULL) RETURNS bigint
	LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'kafka_snapshot';

COMMENT ON FUNCTION kafka_snapshot(regclass, text) IS
	'snapshot the rows of a published table as "r" events, in the background; returns the snapshot''s id in kafka.snapshots';

/* The work of kafka_snapshot_cancel(), done as the extension's owner. */
CREATE FUNCTION kafka.cancel_snapshots(tbl regclass) RETURNS bigint
	LANGUAGE sql STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
	WITH canceled AS (
		UPDATE kafka.snapshot SET canceled_at = now()
		 WHERE relid = tbl AND finished_at IS NULL AND canceled_at IS NULL
		RETURNING id)
	SELECT count(*) FROM canceled
$$;

CREATE FUNCTION kafka_snapshot_cancel(tbl regclass) RETURNS bigint
	LANGUAGE C STRICT VOLATILE AS 'MODULE_PATHNAME', 'kafka_snapshot_cancel';

COMMENT ON FUNCTION kafka_snapshot_cancel(regclass) IS
	'cancel the running snapshots of a table; returns how many';

/* The attribute numbers of names in tbl, or an ERROR naming the unknown ones. */
CREATE FUNCTION kafka.attnums(tbl regclass, names text[], what text) RETURNS int2[]
	LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	unknown text[];
	result int2[];
BEGIN
	SELECT array_agg(n.name ORDER BY n.i) INTO unknown
	  FROM unnest(names) WITH ORDINALITY AS n(name, i)
	 WHERE NOT EXISTS (SELECT FROM pg_attribute a
						WHERE a.attrelid = tbl AND a.attname = n.name
						  AND a.attnum > 0 AND NOT a.attisdropped);
	IF unknown IS NOT NULL THEN
		RAISE EXCEPTION '% of table % not found: %', what, tbl, array_to_string(unknown, ', ')
			USING ERRCODE = 'undefined_column';
	END IF;
	SELECT array_agg(a.attnum ORDER BY n.i) INTO result
	  FROM unnest(names) WITH ORDINALITY AS n(name, i)
	  JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = n.name;
	RETURN result;
END
$$;

/*
 * The names of attnums in tbl; names[i] where attnums[i] was dropped (a
 * dropped key column stays named, to fail loudly) or, with keep_dropped
 * false, nothing.
 */
CREATE FUNCTION kafka.column_names(tbl regclass, attnums int2[], names text[],
								   keep_dropped boolean) RETURNS text[]
	LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
	SELECT array_agg(coalesce(a.attname::text, u.name) ORDER BY u.i)
	  FROM unnest(attnums, names) WITH ORDINALITY AS u(attnum, name, i)
	  LEFT JOIN pg_attribute a
			 ON a.attrelid = tbl AND a.attnum = u.attnum AND NOT a.attisdropped
	 WHERE a.attname IS NOT NULL OR keep_dropped
$$;

/* Drops tbl's row filter function, if it has one. */
CREATE FUNCTION kafka.drop_row_filter(tbl oid) RETURNS void
	LANGUAGE plpgsql STRICT SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	filter regprocedure := to_regprocedure(format('kafka.%I(anyelement)', 'row_filter_' || tbl));
BEGIN
	IF filter IS NULL THEN
		RETURN;
	END IF;
	IF EXISTS (SELECT FROM pg_depend
				WHERE classid = 'pg_proc'::regclass AND objid = filter AND deptype = 'e') THEN
		EXECUTE format('ALTER EXTENSION kafka_producer DROP FUNCTION %s', filter);
	END IF;
	EXECUTE format('DROP FUNCTION %s', filter);
END
$$;

/*
 * Makes tbl's row filter: a function of the table's owner, SECURITY
 * DEFINER with a fixed search_path, so that it runs with the owner's
 * rights, never the writer's nor the publisher's.  Polymorphic, so that
 * it does not keep the table from being dropped.  A member of the
 * extension (with its ACL as its initial privileges): pg_dump leaves it
 * out, and the restored publication row makes it again.
 */
CREATE FUNCTION kafka.make_row_filter(tbl regclass, condition text) RETURNS oid
	LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	name text := format('kafka.%I', 'row_filter_' || tbl::oid);
	filter regprocedure;
BEGIN
	PERFORM kafka.drop_row_filter(tbl);
	IF condition IS NULL THEN
		RETURN NULL;
	END IF;
	EXECUTE format('CREATE FUNCTION %s(r anyelement) RETURNS boolean LANGUAGE sql STABLE '
				   'SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L', name,
				   format('SELECT coalesce((%s), false) FROM (SELECT (r).*) AS s', condition));
	filter := format('%s(anyelement)', name)::regprocedure;
	EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', filter);
	EXECUTE format('ALTER FUNCTION %s OWNER TO %s', filter,
				   (SELECT relowner::regrole FROM pg_class WHERE oid = tbl));
	/* within ALTER EXTENSION UPDATE it is one already */
	IF NOT EXISTS (SELECT FROM pg_depend
					WHERE classid = 'pg_proc'::regclass AND objid = filter AND deptype = 'e') THEN
		EXECUTE format('ALTER EXTENSION kafka_producer ADD FUNCTION %s', filter);
	END IF;
	RETURN filter;
END
$$;

/*
 * Binds a new publication row, from kafka_publish() or a restore, to its
 * table's columns by name, and makes its row filter.
 */
CREATE FUNCTION kafka.bind_publication() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp SET client_min_messages = warning
AS $$
BEGIN
	NEW.key_attnums := kafka.attnums(NEW.relid, NEW.key_columns, 'key columns');
	NEW.column_attnums := kafka.attnums(NEW.relid, NEW.columns, 'columns');
	NEW.mask_attnums := kafka.attnums(NEW.relid, NEW.mask_columns, 'mask columns');
	NEW.hash_attnums := kafka.attnums(NEW.relid, NEW.hash_columns, 'hash columns');
	NEW.shape := kafka.table_shape(NEW.relid);
	NEW.row_filter_function := kafka.make_row_filter(NEW.relid, NEW.row_filter);
	RETURN NEW;
END
$$;
CREATE TRIGGER bind BEFORE INSERT ON kafka.publication
	FOR EACH ROW EXECUTE FUNCTION kafka.bind_publication();
ALTER TABLE kafka.publication ENABLE ALWAYS TRIGGER bind;

/*
 * Keeps kafka.publication current as published tables are altered: the
 * names of renamed columns, and a row filter owned by the table's new
 * owner after ALTER TABLE ... OWNER TO.
 */
CREATE FUNCTION kafka.follow_renamed_columns() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp SET client_min_messages = warning
AS $$
BEGIN
	UPDATE kafka.publication p
	   SET key_columns = kafka.column_names(p.relid, p.key_attnums, p.key_columns, true),
		   columns = kafka.column_names(p.relid, p.column_attnums, p.columns, false),
		   mask_columns = kafka.column_names(p.relid, p.mask_attnums, p.mask_columns, false),
		   hash_columns = kafka.column_names(p.relid, p.hash_attnums, p.hash_columns, false)
	  FROM pg_event_trigger_ddl_commands() c
	 WHERE c.classid = 'pg_class'::regclass AND c.objid = p.relid;
	UPDATE kafka.publication p
	   SET row_filter_function = kafka.make_row_filter(p.relid, p.row_filter)
	  FROM pg_class t, pg_proc f
	 WHERE t.oid = p.relid AND f.oid = p.row_filter_function AND f.proowner <> t.relowner
	   AND p.relid IN (SELECT c.objid FROM pg_event_trigger_ddl_commands() c
					    WHERE c.classid = 'pg_class'::regclass);
END
$$;
CREATE EVENT TRIGGER kafka_follow_renamed_columns ON ddl_command_end
	WHEN TAG IN ('ALTER TABLE')
	EXECUTE FUNCTION kafka.follow_renamed_columns();

/*
 * The event of a change of tbl's shape, for the database's schema-changes
 * topic, as Debezium's schema change events are: the DDL text, and the
 * table's columns and primary key after it.
 */
CREATE FUNCTION kafka.schema_change_event(tbl regclass, ddl text) RETURNS jsonb
	LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_build_object(
		'source', jsonb_build_object('version', '0.2.0', 'connector', 'postgresql',
									 'name', current_database(), 'db', current_database(),
									 'schema', n.nspname, 'table', c.relname,
									 'ts_ms', (extract(epoch FROM statement_timestamp()) * 1000)::bigint),
		'ts_ms', (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
		'databaseName', current_database(),
		'schemaName', n.nspname,
		'ddl', ddl,
		'tableChanges', jsonb_build_array(jsonb_build_object(
			'type', 'ALTER',
			'id', format('%I.%I.%I', current_database(), n.nspname, c.relname),
			'table', jsonb_build_object(
				'primaryKeyColumnNames',
				coalesce((SELECT jsonb_agg(a.attname ORDER BY k.n)
							FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n),
								 pg_attribute a
						   WHERE i.indrelid = tbl AND i.indisprimary
							 AND a.attrelid = tbl AND a.attnum = k.attnum), '[]'),
				'columns',
				(SELECT jsonb_agg(jsonb_build_object(
							'name', a.attname,
							'typeName', format_type(a.atttypid, NULL),
							'typeExpression', format_type(a.atttypid, a.atttypmod),
							'position', a.position,
							'optional', NOT a.attnotnull,
							'hasDefaultValue', a.atthasdef,
							'generated', a.attgenerated <> '') ORDER BY a.position)
				   FROM (SELECT *, row_number() OVER (ORDER BY attnum) AS position
						   FROM pg_attribute
						  WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped) a)))))
	  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	 WHERE c.oid = tbl
$$;

/*
 * A digest of tbl's columns, as its schema change events give them: a
 * restore adds the primary key after the rows, and must not look like a
 * change.
 */
CREATE FUNCTION kafka.table_shape(tbl regclass) RETURNS text
	LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
	SELECT md5((kafka.schema_change_event(tbl, NULL)->'tableChanges'->0->'table'->'columns')::text)
$$;

/*
 * After ALTER TABLE of a published table that changes its columns, an
 * event on the database's
 * schema-changes topic (kafka.schema_changes_topic), enqueued in the
 * altering transaction: it comes after the data events of the writers
 * before it and before those after it, which wait for its lock.
 */
CREATE FUNCTION kafka.publish_schema_changes() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp SET client_min_messages = warning
AS $$
DECLARE
	topic text := replace(current_setting('kafka.schema_changes_topic'), '%d',
						  regexp_replace(current_database(), '[^a-zA-Z0-9._-]', '_', 'g'));
	altered regclass;
BEGIN
	IF topic = '' THEN
		RETURN;
	END IF;
	FOR altered IN
		SELECT DISTINCT p.relid FROM pg_event_trigger_ddl_commands() c
		  JOIN kafka.publication p ON p.relid = c.objid
		 WHERE c.classid = 'pg_class'::regclass
	LOOP
		/* only a change of its columns: not of its constraints, nor a restore's */
		UPDATE kafka.publication SET shape = kafka.table_shape(altered)
		 WHERE relid = altered AND shape IS DISTINCT FROM kafka.table_shape(altered);
		CONTINUE WHEN NOT FOUND;
		PERFORM @extschema@.kafka_send(topic, kafka.schema_change_event(altered, current_query()),
									   key => jsonb_build_object('databaseName', current_database()));
		PERFORM kafka.check_schema_change(altered);
	END LOOP;
END
$$;
CREATE EVENT TRIGGER kafka_publish_schema_changes ON ddl_command_end
	WHEN TAG IN ('ALTER TABLE')
	EXECUTE FUNCTION kafka.publish_schema_changes();

/*
 * WARNING if the schema registry would refuse the new Avro schemas of an
 * Avro publication: better now than as failed messages later.
 */
CREATE FUNCTION kafka.check_schema_change(tbl regclass) RETURNS void
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'kafka_check_schema_change';

/* Prepares a publication's encoders, to report now what would fail later. */
CREATE FUNCTION kafka.check_publication(tbl regclass) RETURNS void
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'kafka_check_publication';

CREATE FUNCTION kafka.check_topic_name(topic text) RETURNS void
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'kafka_check_topic_name';

/*
 * Publishes the changes of a table to Kafka: attaches the extension's
 * trigger, or updates the options of a table already published.
 */
/*
 * The work of kafka_publish(), which has checked that its caller owns tbl,
 * done as the extension's owner.  The row filter becomes a function of the
 * table's owner, SECURITY DEFINER with a fixed search_path: it runs with
 * the owner's rights, never the writer's nor the publisher's.
 */
CREATE FUNCTION kafka.publish_as_owner(tbl regclass, topic text, format text,
									   key_columns text[], columns text[],
									   snapshot boolean, "where" text,
									   tombstones boolean, time_format text,
									   envelope text, mask_columns text[],
									   hash_columns text[])
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp SET client_min_messages = warning
AS $$
DECLARE
	rel record;
	filter_function oid;
	published regclass;
	published_above boolean;
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind, c.relpersistence, n.nspname, c.relname INTO rel
	  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
	/* a partitioned table's row trigger is cloned to every partition, present and future */
	SELECT p.relid, p.relid IN (SELECT relid FROM pg_partition_ancestors(tbl))
	  INTO published, published_above
	  FROM kafka.publication p
	 WHERE p.relid <> tbl
	   AND (p.relid IN (SELECT relid FROM pg_partition_ancestors(tbl))
			OR p.relid IN (SELECT relid FROM pg_partition_tree(tbl)))
	 LIMIT 1;
	IF published_above THEN
		RAISE EXCEPTION 'cannot publish partition % of published table %', tbl, published
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Its changes are published under the options of the partitioned table.',
				  HINT = 'Change the options with kafka_publish() on the partitioned table.';
	ELSIF published IS NOT NULL THEN
		RAISE EXCEPTION 'cannot publish partitioned table % while its partition % is published', tbl, published
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Unpublish the partition first, with kafka_unpublish().';
	END IF;
	IF rel.relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION 'cannot publish "%"', tbl
			USING ERRCODE = 'wrong_object_type',
				  DETAIL = format('It is %s; only tables can be published.',
								  CASE rel.relkind WHEN 'v' THEN 'a view'
									   WHEN 'm' THEN 'a materialized view'
									   WHEN 'f' THEN 'a foreign table'
									   ELSE 'not a table' END);
	END IF;
	IF rel.relpersistence = 't' THEN
		RAISE EXCEPTION 'cannot publish temporary table %', tbl
			USING ERRCODE = 'wrong_object_type',
				  DETAIL = 'The worker cannot see other sessions'' temporary tables; publish a regular table.';
	END IF;
	IF format IS NULL OR format NOT IN ('json', 'json_schema', 'avro') THEN
		RAISE EXCEPTION 'unknown format "%"', format
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Valid formats: json, json_schema (JSON with its Kafka Connect schema), avro.';
	END IF;
	IF time_format IS NULL OR time_format NOT IN ('iso', 'epoch') THEN
		RAISE EXCEPTION 'unknown time_format "%"', time_format
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Valid time formats: iso (ISO 8601, timestamptz in UTC), epoch (Debezium''s days and microseconds).';
	END IF;
	IF envelope IS NULL OR envelope NOT IN ('debezium', 'row') THEN
		RAISE EXCEPTION 'unknown envelope "%"', envelope
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Valid envelopes: debezium (before, after, source, op), row (the row and __op, __table, __source_ts_ms, __deleted).';
	END IF;
	IF mask_columns && hash_columns THEN
		RAISE EXCEPTION 'columns cannot be both masked and hashed: %',
						array_to_string(ARRAY(SELECT unnest(mask_columns) INTERSECT
											  SELECT unnest(hash_columns)), ', ')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	topic := coalesce(topic, regexp_replace(rel.nspname || '.' || rel.relname,
											 '[^a-zA-Z0-9._-]', '_', 'g'));
	PERFORM kafka.check_topic_name(topic);

	IF key_columns IS NULL THEN
		SELECT array_agg(a.attname::text ORDER BY k.n) INTO key_columns
		  FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n), pg_attribute a
		 WHERE i.indrelid = tbl AND i.indisprimary
		   AND a.attrelid = tbl AND a.attnum = k.attnum;
		IF key_columns IS NULL THEN
			RAISE EXCEPTION 'table % has no primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  DETAIL = 'Change events are keyed by the key columns.',
					  HINT = 'Add a primary key, or name the key with key_columns => ARRAY[...].';
		END IF;
	ELSIF cardinality(key_columns) = 0 THEN
		RAISE EXCEPTION 'key_columns must name at least one column'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF key_columns && mask_columns THEN
		RAISE EXCEPTION 'cannot mask key columns: %',
						array_to_string(ARRAY(SELECT unnest(key_columns) INTERSECT
											  SELECT unnest(mask_columns)), ', ')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Every row would have the same key.',
				  HINT = 'Hash them instead, with hash_columns.';
	END IF;
	/* kafka.bind_publication() numbers the columns and makes the filter */
	INSERT INTO kafka.publication AS p (relid, topic, format, key_columns, columns,
										row_filter, tombstones, time_format, envelope,
										mask_columns, hash_columns)
		VALUES (tbl, topic, format, key_columns, columns, "where", tombstones, time_format,
				envelope, mask_columns, hash_columns)
		ON CONFLICT (relid) DO UPDATE SET topic = excluded.topic, format = excluded.format,
			key_attnums = excluded.key_attnums, column_attnums = excluded.column_attnums,
			key_columns = excluded.key_columns, columns = excluded.columns,
			row_filter = excluded.row_filter, row_filter_function = excluded.row_filter_function,
			tombstones = excluded.tombstones, time_format = excluded.time_format,
			envelope = excluded.envelope, mask_columns = excluded.mask_columns,
			hash_columns = excluded.hash_columns, mask_attnums = excluded.mask_attnums,
			hash_attnums = excluded.hash_attnums, shape = excluded.shape
		RETURNING p.row_filter_function INTO filter_function;
	IF filter_function IS NOT NULL THEN
		/* checks the condition now rather than at the first change */
		EXECUTE format('SELECT %s(NULL::%s)', filter_function::regproc, tbl);
	END IF;

	EXECUTE format('DROP TRIGGER IF EXISTS kafka_publish ON %s', tbl);
	EXECUTE format('DROP TRIGGER IF EXISTS kafka_publish_truncate ON %s', tbl);
	EXECUTE format('DROP TRIGGER IF EXISTS kafka_publish_flush ON %s', tbl);
	EXECUTE format('CREATE TRIGGER kafka_publish_flush AFTER INSERT OR UPDATE OR DELETE ON %s '
				   'FOR EACH STATEMENT EXECUTE FUNCTION kafka.publish_trigger()', tbl);
	EXECUTE format('CREATE TRIGGER kafka_publish AFTER INSERT OR UPDATE OR DELETE ON %s '
				   'FOR EACH ROW EXECUTE FUNCTION kafka.publish_trigger()', tbl);
	EXECUTE format('CREATE TRIGGER kafka_publish_truncate AFTER TRUNCATE ON %s '
				   'FOR EACH STATEMENT EXECUTE FUNCTION kafka.publish_trigger()', tbl);
	PERFORM kafka.check_publication(tbl);
	IF snapshot THEN
		PERFORM kafka.start_snapshot(tbl, NULL);
	END IF;
END
$$;

/* Checks that the caller owns tbl, then kafka.publish_as_owner(). */
CREATE FUNCTION kafka_publish(tbl regclass, topic text DEFAULT NULL,
							  format text DEFAULT 'json',
							  key_columns text[] DEFAULT NULL,
							  columns text[] DEFAULT NULL,
							  snapshot boolean DEFAULT false,
							  "where" text DEFAULT NULL,
							  tombstones boolean DEFAULT true,
							  time_format text DEFAULT 'iso',
							  envelope text DEFAULT 'debezium',
							  mask_columns text[] DEFAULT NULL,
							  hash_columns text[] DEFAULT NULL)
	RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'kafka_publish';

COMMENT ON FUNCTION kafka_publish(regclass, text, text, text[], text[], boolean, text, boolean, text, text, text[], text[]) IS
	'publish a table''s changes to Kafka as Debezium-style events';

/* The work of kafka_unpublish(), done as the extension's owner. */
CREATE FUNCTION kafka.unpublish_as_owner(tbl regclass) RETURNS void
	LANGUAGE plpgsql STRICT
	SET search_path = pg_catalog, pg_temp SET client_min_messages = warning
AS $$
BEGIN
	DELETE FROM kafka.publication WHERE relid = tbl;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table % is not published', tbl
			USING ERRCODE = 'undefined_object';
	END IF;
	EXECUTE format('DROP TRIGGER IF EXISTS kafka_publish ON %s', tbl);
	EXECUTE format('DROP TRIGGER IF EXISTS kafka_publish_truncate ON %s', tbl);
	EXECUTE format('DROP TRIGGER IF EXISTS kafka_publish_flush ON %s', tbl);
	PERFORM kafka.cancel_snapshots(tbl);
	PERFORM kafka.drop_row_filter(tbl);
END
$$;

/* Checks that the caller owns tbl, then kafka.unpublish_as_owner(). */
CREATE FUNCTION kafka_unpublish(tbl regclass) RETURNS void
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'kafka_unpublish';

COMMENT ON FUNCTION kafka_unpublish(regclass) IS 'stop publishing a table''s changes';

/*
 * A dropped table is no longer published.  It runs on every role's DROP,
 * so it runs as the extension's owner: nobody needs rights on kafka.*.
 */
CREATE FUNCTION kafka.forget_dropped_tables() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp SET client_min_messages = warning
AS $$
DECLARE
	dropped oid;
BEGIN
	FOR dropped IN
		SELECT d.objid FROM pg_event_trigger_dropped_objects() d
		  JOIN kafka.publication p ON p.relid = d.objid
		 WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0
	LOOP
		DELETE FROM kafka.publication WHERE relid = dropped;
		DELETE FROM kafka.snapshot WHERE relid = dropped;
		PERFORM kafka.drop_row_filter(dropped);
	END LOOP;
END
$$;
CREATE EVENT TRIGGER kafka_forget_dropped_tables ON sql_drop
	EXECUTE FUNCTION kafka.forget_dropped_tables();

REVOKE ALL ON FUNCTION kafka.publish_trigger() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_snapshot(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_snapshot_cancel(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.snapshot_now(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.start_snapshot(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.cancel_snapshots(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_publish(regclass, text, text, text[], text[], boolean, text, boolean, text, text, text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_unpublish(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.check_topic_name(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.check_publication(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.attnums(regclass, text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.forget_dropped_tables() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.publish_as_owner(regclass, text, text, text[], text[], boolean, text, boolean, text, text, text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.unpublish_as_owner(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.column_names(regclass, int2[], text[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.drop_row_filter(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.make_row_filter(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.bind_publication() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.follow_renamed_columns() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.publish_schema_changes() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.schema_change_event(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.table_shape(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.check_schema_change(regclass) FROM PUBLIC;

/*
 * Per partition, the highest offset at which the worker has recorded a
 * delivery.  A worker that starts (after a crash, a restart or a
 * promotion) reads each partition of the topics with pending messages
 * from just after it, and takes the records whose id header names a
 * pending message as delivered instead of sending them again.
 */
CREATE TABLE kafka.recorded_offsets (
	topic text NOT NULL,
	"partition" integer NOT NULL,
	"offset" bigint NOT NULL,
	PRIMARY KEY (topic, "partition")
);

/*
 * ---------------------------------------------------------------------
 * Lag and health, for dashboards and alerts
 * ---------------------------------------------------------------------
 */

/* The backlog as shared memory counts it: cheap at any rate. */
CREATE FUNCTION kafka.backlog(OUT pending bigint, OUT pending_bytes bigint,
							  OUT last_delivery_at timestamptz)
	RETURNS record
	LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'kafka_backlog';

/*
 * One row on the whole queue and the worker, cheap enough to scrape every
 * few seconds: counts from shared memory, the oldest pending message
 * through the primary keys.
 */
CREATE VIEW kafka.health AS
	SELECT b.pending, b.pending_bytes,
		   now() - least((SELECT o.enqueued_at FROM kafka.outbox o ORDER BY o.id LIMIT 1),
						 (SELECT q.enqueued_at FROM kafka.outbox_batch q
						   ORDER BY q.first_id LIMIT 1)) AS oldest_pending_age,
		   (SELECT count(*) FROM kafka.failed) AS failed,
		   b.last_delivery_at,
		   (w.s->>'delivered')::bigint AS delivered_total,
		   (w.s->>'failed')::bigint AS failed_total,
		   (w.s->>'in_flight')::bigint AS in_flight,
		   nullif((w.s->>'worker_pid')::integer, 0) AS worker_pid,
		   (w.s->>'standby')::boolean AS standby,
		   (SELECT count(*) FROM @extschema@.kafka_brokers() AS k WHERE k.state = 'UP') AS brokers_up,
		   EXISTS (SELECT FROM kafka.delivery_hold) AS held,
		   w.s->>'last_error' AS last_error,
		   (w.s->>'last_error_at')::timestamptz AS last_error_at
	  FROM kafka.backlog() AS b,
		   (SELECT @extschema@.kafka_stats()->'kafka_producer' AS s) AS w;

COMMENT ON VIEW kafka.health IS
	'the backlog, the oldest pending message''s age, failures and the worker''s state, cheap to scrape';

/*
 * Per topic: what waits, what failed, and what was delivered in the last
 * minute.  It reads every pending row: a dashboard's view, not one to
 * scrape every few seconds on a large backlog (README, Monitoring).
 */
CREATE VIEW kafka.topic_backlog AS
	SELECT topic, coalesce(p.pending, 0)::bigint AS pending,
		   coalesce(p.pending_bytes, 0)::bigint AS pending_bytes,
		   now() - p.oldest_enqueued_at AS oldest_pending_age,
		   coalesce(f.failed, 0) AS failed,
		   coalesce(d.delivered_last_minute, 0) AS delivered_last_minute,
		   d.last_delivery_at
	  FROM (SELECT topic, sum(n) AS pending, sum(bytes) AS pending_bytes,
				   min(oldest) AS oldest_enqueued_at
			  FROM (SELECT topic, count(*) AS n,
						   sum(coalesce(octet_length(key), 0) + coalesce(octet_length(value), 0)) AS bytes,
						   min(enqueued_at) AS oldest
					  FROM kafka.outbox GROUP BY topic
					UNION ALL
					SELECT topic, sum(cardinality(keys)),
						   sum((SELECT coalesce(sum(octet_length(e)), 0)
								  FROM unnest(keys || "values") AS e)),
						   min(enqueued_at)
					  FROM kafka.outbox_batch GROUP BY topic) AS q
			 GROUP BY topic) AS p
	  FULL JOIN (SELECT topic, count(*) AS failed FROM kafka.failed GROUP BY topic) AS f
			USING (topic)
	  FULL JOIN (SELECT topic, count(*) AS delivered_last_minute,
						max(delivered_at) AS last_delivery_at
				   FROM kafka.delivered WHERE delivered_at > now() - interval '1 minute'
				  GROUP BY topic) AS d USING (topic);

COMMENT ON VIEW kafka.topic_backlog IS
	'per topic: pending messages and bytes, the oldest one''s age, failures, deliveries of the last minute';

REVOKE ALL ON FUNCTION kafka.backlog() FROM PUBLIC;
