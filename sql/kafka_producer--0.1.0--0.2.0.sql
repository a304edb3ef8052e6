/* kafka_producer 0.1.0 -> 0.2.0 */

\echo Use "ALTER EXTENSION kafka_producer UPDATE TO '0.2.0'" to load this file. \quit

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

/* what 0.1.0 recorded, still within kafka.status_retention */
INSERT INTO kafka.recorded_offsets
SELECT topic, "partition", max("offset")
  FROM kafka.delivered
 WHERE "offset" IS NOT NULL
 GROUP BY topic, "partition";

/*
 * The sql_drop event trigger runs on every role's DROP: as the extension's
 * owner, so that roles without rights on kafka.* can drop their objects.
 */
ALTER FUNCTION kafka.forget_dropped_tables() SECURITY DEFINER;
REVOKE ALL ON FUNCTION kafka.attnums(regclass, text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.forget_dropped_tables() FROM PUBLIC;

/*
 * Each message records the role that enqueued it; kafka.messages shows a
 * role its own.  Messages enqueued before 0.2.0 have none: only members
 * of pg_monitor see them.
 */
ALTER TABLE kafka.outbox ADD COLUMN enqueued_by regrole;
ALTER TABLE kafka.outbox_batch ADD COLUMN enqueued_by regrole;
ALTER TABLE kafka.delivered ADD COLUMN enqueued_by regrole;
ALTER TABLE kafka.failed ADD COLUMN enqueued_by regrole;

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
CREATE OR REPLACE VIEW kafka.pending AS
	SELECT id, topic, key, value, headers, "partition", attempts, last_error,
		   enqueued_at, enqueued_by
	  FROM kafka.outbox
	UNION ALL
	SELECT b.first_id + m.n - 1, b.topic, m.key, m.value, NULL::jsonb,
		   NULL::integer, 0, NULL::text, b.enqueued_at, b.enqueued_by
	  FROM kafka.outbox_batch b,
		   unnest(b.keys, b."values") WITH ORDINALITY AS m(key, value, n);

/*
 * A role sees the messages it enqueued (as current_user: kafka_send(), or
 * a write to a published table); members of pg_monitor, and superusers,
 * see every message.  A security barrier, so that a caller's own function
 * in a WHERE clause never sees the rows the view hides.
 */
CREATE OR REPLACE VIEW kafka.messages WITH (security_barrier) AS
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

/*
 * Re-queueing is an INSERT into kafka.outbox: done as a replica, so that
 * kafka.hold_inserted_messages() does not take it for a restore.
 */
CREATE OR REPLACE FUNCTION kafka_retry(message_id bigint) RETURNS void
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

CREATE OR REPLACE FUNCTION kafka_retry_failed(topic text DEFAULT NULL) RETURNS bigint
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

REVOKE ALL ON FUNCTION kafka.hold_inserted_messages() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_resume() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_discard(text) FROM PUBLIC;

/* they read kafka.* as the extension's owner, and check whose messages they wait for */
ALTER FUNCTION kafka_wait(bigint, interval) SECURITY INVOKER;
ALTER FUNCTION kafka_flush(interval) SECURITY INVOKER;

/*
 * kafka.publication keeps its columns by name too, and its table as a
 * regclass, so that it survives pg_dump and restore.
 */
DROP VIEW kafka.publications;
ALTER TABLE kafka.publication ALTER COLUMN relid TYPE regclass,
	ADD COLUMN key_columns text[], ADD COLUMN columns text[],
	ADD COLUMN envelope text NOT NULL DEFAULT 'debezium',
	ADD COLUMN mask_columns text[], ADD COLUMN hash_columns text[],
	ADD COLUMN mask_attnums int2[], ADD COLUMN hash_attnums int2[],
	ADD COLUMN shape text;
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

UPDATE kafka.publication
   SET key_columns = kafka.column_names(relid, key_attnums, NULL, false),
	   columns = kafka.column_names(relid, column_attnums, NULL, false);
ALTER TABLE kafka.publication ALTER COLUMN key_columns SET NOT NULL;

CREATE VIEW kafka.publications AS
	SELECT relid AS "table", topic, format, key_columns, columns, row_filter,
		   tombstones, time_format, envelope, mask_columns, hash_columns
	  FROM kafka.publication;

COMMENT ON VIEW kafka.publications IS 'tables whose changes are published, with their options';

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

/*
 * Publishing is delegated like ALTER TABLE: kafka_publish() and
 * kafka_unpublish() check that their caller owns the table, then do the
 * work as the extension's owner; row filters run as the table's owner.
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

/*
 * kafka_publish and kafka_snapshot gain parameters: the old functions are
 * dropped, and the roles they were granted to are granted the new ones.
 * These two helpers live only while this script runs.
 */
CREATE FUNCTION kafka.execute_grantees(fn regprocedure) RETURNS text
	LANGUAGE sql STRICT
AS $$
	SELECT coalesce(array_agg(DISTINCT a.grantee::regrole::text), '{}')::text
	  FROM pg_proc f, aclexplode(f.proacl) a
	 WHERE f.oid = fn AND a.grantee <> 0 AND a.grantee <> f.proowner
	   AND a.privilege_type = 'EXECUTE'
$$;
CREATE FUNCTION kafka.grant_execute(fn regprocedure, grantees text) RETURNS void
	LANGUAGE plpgsql STRICT
AS $$
DECLARE
	grantee text;
BEGIN
	FOREACH grantee IN ARRAY grantees::text[]
	LOOP
		EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', fn, grantee);
	END LOOP;
END
$$;
SELECT set_config('kafka_producer.upgrade_publish_grantees',
				  kafka.execute_grantees('kafka_publish(regclass, text, text, text[], text[], boolean, text, boolean, text)'), true),
	   set_config('kafka_producer.upgrade_snapshot_grantees',
				  kafka.execute_grantees('kafka_snapshot(regclass)'), true);
DROP FUNCTION kafka_publish(regclass, text, text, text[], text[], boolean, text, boolean, text);
DROP FUNCTION kafka_snapshot(regclass);

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

SELECT kafka.grant_execute('kafka_snapshot(regclass, text)',
						   current_setting('kafka_producer.upgrade_snapshot_grantees'));

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

REVOKE ALL ON FUNCTION kafka_publish(regclass, text, text, text[], text[], boolean, text, boolean, text, text, text[], text[]) FROM PUBLIC;
COMMENT ON FUNCTION kafka_publish(regclass, text, text, text[], text[], boolean, text, boolean, text, text, text[], text[]) IS
	'publish a table''s changes to Kafka as Debezium-style events';
SELECT kafka.grant_execute('kafka_publish(regclass, text, text, text[], text[], boolean, text, boolean, text, text, text[], text[])',
						   current_setting('kafka_producer.upgrade_publish_grantees'));
DROP FUNCTION kafka.execute_grantees(regprocedure);
DROP FUNCTION kafka.grant_execute(regprocedure, text);

/* Checks that the caller owns tbl, then kafka.unpublish_as_owner(). */
CREATE OR REPLACE FUNCTION kafka_unpublish(tbl regclass) RETURNS void
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'kafka_unpublish';

REVOKE ALL ON FUNCTION kafka.publish_as_owner(regclass, text, text, text[], text[], boolean, text, boolean, text, text, text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.unpublish_as_owner(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_snapshot(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_snapshot_cancel(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.snapshot_now(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.start_snapshot(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.cancel_snapshots(regclass) FROM PUBLIC;

REVOKE ALL ON FUNCTION kafka.column_names(regclass, int2[], text[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.drop_row_filter(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.make_row_filter(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.bind_publication() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.follow_renamed_columns() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.publish_schema_changes() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.schema_change_event(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.table_shape(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.check_schema_change(regclass) FROM PUBLIC;

/* the row filters of existing publications, as kafka.bind_publication() makes them */
UPDATE kafka.publication SET row_filter_function = kafka.make_row_filter(relid, row_filter)
 WHERE row_filter IS NOT NULL;

/*
 * A dropped table is no longer published.  It runs on every role's DROP,
 * so it runs as the extension's owner: nobody needs rights on kafka.*.
 */
CREATE OR REPLACE FUNCTION kafka.forget_dropped_tables() RETURNS event_trigger
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
