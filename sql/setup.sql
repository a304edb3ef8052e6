-- The extension is created by pg_regress (--load-extension).
SELECT extname, extversion FROM pg_extension WHERE extname = 'kafka_producer';

-- What the status view offers
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute
 WHERE attrelid = 'kafka.messages'::regclass AND attnum > 0
 ORDER BY attnum;

-- The worker runs and shows itself, connected to this database once it
-- has restarted (the database did not exist yet when the server started)
DO $$
BEGIN
	FOR i IN 1..600 LOOP
		EXIT WHEN EXISTS (SELECT FROM pg_stat_activity
						   WHERE backend_type = 'kafka_producer'
							 AND datname = current_database());
		PERFORM pg_sleep(0.05);
		PERFORM pg_stat_clear_snapshot();
	END LOOP;
END
$$;
SELECT backend_type, application_name
  FROM pg_stat_activity WHERE backend_type = 'kafka_producer';

-- Only the database named by kafka.database can have the extension
CREATE DATABASE kafka_other;
\c kafka_other
CREATE EXTENSION kafka_producer;
\c contrib_regression
DROP DATABASE kafka_other;

-- A table with a column of each type the encoders map, for avro.sql and
-- publish.sql, which add columns of their own
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE FUNCTION create_every_type() RETURNS void LANGUAGE sql AS $$
	CREATE TABLE every_type (
		id bigint PRIMARY KEY, small smallint, count positive, flag boolean,
		ratio real, score double precision, price numeric(10, 2), amount numeric,
		label text, code varchar(8), letter char(2), payload bytea, ident uuid,
		day date, at_time time, stamp timestamp, stamptz timestamptz, doc jsonb,
		raw json, feeling mood, tags text[])
$$;
