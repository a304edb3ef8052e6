-- kafka_topic_config(): per-topic producer settings, checked by librdkafka.

SELECT kafka_topic_config('orders', '{"acks": "all", "compression_type": "zstd", "compression.level": 5}');
SELECT kafka_topic_config('orders', '{"partitioner": "murmur2_random", "message.timeout.ms": 60000, "request.timeout.ms": "10000"}');
SELECT topic, properties FROM kafka.topic_config ORDER BY topic;
SELECT kafka_topic_config('orders', NULL);
SELECT kafka_topic_config('orders', '{}');
SELECT count(*) FROM kafka.topic_config;

-- bad input
SELECT kafka_topic_config(NULL, '{"acks": "1"}');
SELECT kafka_topic_config('has space', '{"acks": "all"}');
SELECT kafka_topic_config('orders', '["acks"]');
SELECT kafka_topic_config('orders', '{"no.such.option": "1"}');
SELECT kafka_topic_config('orders', '{"linger.ms": "10"}');
SELECT kafka_topic_config('orders', '{"auto.offset.reset": "earliest"}');
SELECT kafka_topic_config('orders', '{"compression.type": "brotli"}');
SELECT kafka_topic_config('orders', '{"message.timeout.ms": -5}');
SELECT kafka_topic_config('orders', '{"partitioner": {"name": "random"}}');
-- the idempotent producer (kafka.enable_idempotence, on by default) needs acks=all
SELECT kafka_topic_config('metrics', '{"acks": "0"}');
SELECT kafka_topic_config('metrics', '{"acks": 1}');
-- the table is checked the same way when written directly
INSERT INTO kafka.topic_config (topic, properties) VALUES ('direct', '{"bogus": "x"}');
INSERT INTO kafka.topic_config (topic, properties) VALUES ('direct', '{"compression_codec": "lz4"}')
	RETURNING topic, properties;
UPDATE kafka.topic_config SET properties = '{"acks": "-1", "partitioner": "nope"}';
TRUNCATE kafka.topic_config;
BEGIN;
SELECT kafka_topic_config('prepared', '{"acks": "all"}');
PREPARE TRANSACTION 'topic_config';
SELECT count(*) FROM pg_prepared_xacts;
