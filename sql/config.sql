-- kafka.* settings: defaults, validation when set, and who may see what.

SELECT name, setting, unit, context
  FROM pg_settings WHERE name LIKE 'kafka.%' AND name <> 'kafka.bootstrap_servers'
 ORDER BY name;

-- producer settings are server-wide: set in postgresql.conf or ALTER SYSTEM
SET kafka.acks = '1';

-- every value is checked when set, naming the setting
ALTER SYSTEM SET kafka.acks = '2';
ALTER SYSTEM SET kafka.compression_type = 'brotli';
ALTER SYSTEM SET kafka.linger_ms = -1;
ALTER SYSTEM SET kafka.linger_ms = '1h';
ALTER SYSTEM SET kafka.batch_size = 0;
ALTER SYSTEM SET kafka.max_in_flight = 0;
ALTER SYSTEM SET kafka.message_max_bytes = 10;
ALTER SYSTEM SET kafka.enable_idempotence = 'maybe';
ALTER SYSTEM SET kafka.status_retention = -2;
ALTER SYSTEM SET kafka.bootstrap_servers = '';
ALTER SYSTEM SET kafka.bootstrap_servers = 'broker-without-port';
ALTER SYSTEM SET kafka.bootstrap_servers = 'broker:0';
ALTER SYSTEM SET kafka.bootstrap_servers = 'broker1:9092,broker2:http';
ALTER SYSTEM SET kafka.nonexistent = 1;

-- the pass-through takes any librdkafka property librdkafka accepts
ALTER SYSTEM SET kafka.producer_properties = 'no.such.property=1';
ALTER SYSTEM SET kafka.producer_properties = 'socket.timeout.ms=soon';
ALTER SYSTEM SET kafka.producer_properties = 'security.protocol';
ALTER SYSTEM SET kafka.producer_properties = 'acks=0';
ALTER SYSTEM SET kafka.producer_properties = 'bootstrap.servers=other:9092';
ALTER SYSTEM SET kafka.producer_properties = 'log.queue=false';
ALTER SYSTEM SET kafka.producer_properties = 'debug=broker,topic,socket.timeout.ms=30000';
ALTER SYSTEM SET kafka.linger_ms = '20ms';
ALTER SYSTEM SET kafka.compression_type = 'zstd';
ALTER SYSTEM SET kafka.acks = 'all';
ALTER SYSTEM SET kafka.status_retention = '2h';
-- the schema registry: an http(s) URL, trailing slashes dropped
ALTER SYSTEM SET kafka.schema_registry_url = 'registry:8081';
-- credentials from a file only the server reads: checked like the
-- pass-through, without ever echoing a value
\set props_path /tmp/kafka_producer_regress.properties
ALTER SYSTEM SET kafka.producer_properties_file = 'relative/path';
ALTER SYSTEM SET kafka.producer_properties_file = '/nonexistent/kafka.properties';
COPY (SELECT unnest(ARRAY['# SASL', ' sasl.username = app ', '', 'sasl.password=s3cret=x'])) TO :'props_path';
ALTER SYSTEM SET kafka.producer_properties_file = :'props_path';
COPY (SELECT unnest(ARRAY['sasl.username=app', 'acks=0'])) TO :'props_path';
ALTER SYSTEM SET kafka.producer_properties_file = :'props_path';
COPY (SELECT unnest(ARRAY['sasl.username=app', 'sasl.password'])) TO :'props_path';
ALTER SYSTEM SET kafka.producer_properties_file = :'props_path';
COPY (SELECT 'no.such.property=1') TO :'props_path';
ALTER SYSTEM SET kafka.producer_properties_file = :'props_path';
ALTER SYSTEM RESET kafka.producer_properties_file;

ALTER SYSTEM SET kafka.schema_registry_url = 'ftp://registry:8081';
SET kafka.schema_registry_url = 'http://registry:8081';
ALTER SYSTEM SET kafka.schema_registry_url = 'https://registry.example.com:8081//';
ALTER SYSTEM SET kafka.schema_registry_user_info = 'user:secret';
ALTER SYSTEM RESET ALL;

-- the pass-through may hold credentials: superusers only
CREATE ROLE kafka_reader;
SET ROLE kafka_reader;
SHOW kafka.producer_properties;
SELECT count(*) FROM pg_settings WHERE name = 'kafka.producer_properties';
SHOW kafka.schema_registry_user_info;
SELECT count(*) FROM pg_settings WHERE name = 'kafka.schema_registry_user_info';
SHOW kafka.producer_properties_file;
SHOW kafka.schema_registry_url;
SHOW kafka.acks;
RESET ROLE;
DROP ROLE kafka_reader;

-- kafka.wait_on_commit is for any session or transaction to choose
SHOW kafka.wait_on_commit;
SET kafka.wait_on_commit = maybe;
BEGIN;
SET LOCAL kafka.wait_on_commit = on;
SHOW kafka.wait_on_commit;
COMMIT;
SHOW kafka.wait_on_commit;

-- the hash salt is a secret: only superusers see it
CREATE ROLE kafka_salt_reader;
SET ROLE kafka_salt_reader;
SHOW kafka.hash_salt;
RESET ROLE;
DROP ROLE kafka_salt_reader;
