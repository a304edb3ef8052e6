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
