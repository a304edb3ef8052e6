/*-------------------------------------------------------------------------
 *
 * settings.c
 *	  The extension's own kafka.* settings, which the producer does not
 *	  see: the database served, how long outcomes are kept, how often a
 *	  message is tried, its largest size and the name of its id header.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "utils/guc.h"

#include "kafka_producer.h"

char	   *kp_database = NULL;
int			kp_max_attempts = 10;
int			kp_status_retention = 86400;
int			kp_message_max_bytes = 1000000;
char	   *kp_id_header = NULL;
int			kp_shutdown_timeout_ms = 5000;

void
kp_settings_init(void)
{
	DefineCustomStringVariable("kafka.database",
							   "Database whose messages the worker delivers.",
							   NULL, &kp_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("kafka.max_attempts",
							"Attempts before a message that keeps failing transiently is marked failed (0 = no limit).",
							NULL, &kp_max_attempts, kp_max_attempts,
							0, INT_MAX, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("kafka.status_retention",
							"How long delivered messages stay visible in kafka.messages (-1 = forever).",
							NULL, &kp_status_retention, kp_status_retention,
							-1, INT_MAX, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	/* also the producer's message.max.bytes */
	DefineCustomIntVariable("kafka.message_max_bytes",
							"Largest message accepted, in bytes (key, value and headers).",
							NULL, &kp_message_max_bytes, kp_message_max_bytes,
							1000, 1000000000, PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("kafka.shutdown_timeout_ms",
							"How long a stopping worker waits for Kafka to acknowledge what is in flight.",
							"What is not acknowledged by then stays pending and is reconciled or sent again by the next worker; 0 = no wait.",
							&kp_shutdown_timeout_ms, kp_shutdown_timeout_ms,
							0, 600000, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomStringVariable("kafka.id_header",
							   "Name of the record header that carries each message's id (empty = none).",
							   "Consumers dedupe by it, and a restarted worker finds by it what Kafka already holds before sending again.",
							   &kp_id_header, "kafka_producer.id",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
}
