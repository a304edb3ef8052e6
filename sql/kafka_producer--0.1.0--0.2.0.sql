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
									   tombstones boolean, time_format text)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp SET client_min_messages = warning
AS $$
DECLARE
	rel record;
	key_attnums int2[];
	column_attnums int2[];
	filter_function oid;
	filter_name text;
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	filter_name := format('kafka.%I', 'row_filter_' || tbl::oid);
	SELECT c.relkind, c.relpersistence, n.nspname, c.relname INTO rel
	  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
	IF rel.relkind = 'p' THEN
		RAISE EXCEPTION 'cannot publish partitioned table %', tbl
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Publish each partition.';
	END IF;
	IF rel.relkind <> 'r' THEN
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
	IF format IS NULL OR format NOT IN ('json', 'avro') THEN
		RAISE EXCEPTION 'unknown format "%"', format
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Valid formats: json, avro.';
	END IF;
	IF time_format IS NULL OR time_format NOT IN ('iso', 'epoch') THEN
		RAISE EXCEPTION 'unknown time_format "%"', time_format
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Valid time formats: iso (ISO 8601, timestamptz in UTC), epoch (Debezium''s days and microseconds).';
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
	key_attnums := kafka.attnums(tbl, key_columns, 'key columns');
	IF columns IS NOT NULL THEN
		column_attnums := kafka.attnums(tbl, columns, 'columns');
	END IF;

	/* polymorphic, so that it does not keep the table from being dropped */
	EXECUTE format('DROP FUNCTION IF EXISTS %s(anyelement)', filter_name);
	IF "where" IS NOT NULL THEN
		EXECUTE format('CREATE FUNCTION %s(r anyelement) RETURNS boolean LANGUAGE sql STABLE '
					   'SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L', filter_name,
					   format('SELECT coalesce((%s), false) FROM (SELECT (r).*) AS s', "where"));
		filter_function := format('%s(anyelement)', filter_name)::regprocedure;
		EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', filter_function::regprocedure);
		EXECUTE format('ALTER FUNCTION %s OWNER TO %s', filter_function::regprocedure,
					   (SELECT relowner::regrole FROM pg_class WHERE oid = tbl));
		/* checks the condition now rather than at the first change */
		EXECUTE format('SELECT %s(NULL::%s)', filter_name, tbl);
	END IF;

	INSERT INTO kafka.publication AS p
		VALUES (tbl, topic, format, key_attnums, column_attnums, "where",
				filter_function, tombstones, time_format)
		ON CONFLICT (relid) DO UPDATE SET topic = excluded.topic, format = excluded.format,
			key_attnums = excluded.key_attnums, column_attnums = excluded.column_attnums,
			row_filter = excluded.row_filter, row_filter_function = excluded.row_filter_function,
			tombstones = excluded.tombstones, time_format = excluded.time_format;

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
		PERFORM @extschema@.kafka_snapshot(tbl);
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
	EXECUTE format('DROP FUNCTION IF EXISTS kafka.%I(anyelement)', 'row_filter_' || tbl::oid);
END
$$;

/* Checks that the caller owns tbl, then kafka.publish_as_owner(). */
CREATE OR REPLACE FUNCTION kafka_publish(tbl regclass, topic text DEFAULT NULL,
							  format text DEFAULT 'json',
							  key_columns text[] DEFAULT NULL,
							  columns text[] DEFAULT NULL,
							  snapshot boolean DEFAULT false,
							  "where" text DEFAULT NULL,
							  tombstones boolean DEFAULT true,
							  time_format text DEFAULT 'iso')
	RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'kafka_publish';

/* Checks that the caller owns tbl, then kafka.unpublish_as_owner(). */
CREATE OR REPLACE FUNCTION kafka_unpublish(tbl regclass) RETURNS void
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'kafka_unpublish';

REVOKE ALL ON FUNCTION kafka.publish_as_owner(regclass, text, text, text[], text[], boolean, text, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka.unpublish_as_owner(regclass) FROM PUBLIC;

/* the row filters of existing publications, as kafka.publish_as_owner makes them */
DO $$
DECLARE
	pub record;
BEGIN
	FOR pub IN
		SELECT p.row_filter_function::regprocedure AS filter, c.relowner::regrole AS owner
		  FROM kafka.publication p JOIN pg_class c ON c.oid = p.relid
		 WHERE p.row_filter_function IS NOT NULL
	LOOP
		EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp',
					   pub.filter);
		EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', pub.filter);
		EXECUTE format('ALTER FUNCTION %s OWNER TO %s', pub.filter, pub.owner);
	END LOOP;
END
$$;
