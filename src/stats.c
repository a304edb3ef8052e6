/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  The producer's view of the cluster, for SQL: the worker writes each
 *	  librdkafka statistics document (every kafka.statistics_interval_ms)
 *	  to a file under pg_stat_tmp, replaced atomically by rename; the SQL
 *	  function kafka_stats() reads it back as jsonb, and kafka_brokers()
 *	  and kafka_topics() (SQL functions in the extension script) select the
 *	  discovered brokers and partition leaders from it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "kafka_producer.h"

PG_FUNCTION_INFO_V1(kafka_stats);

#define KP_STATS_FILE "pg_stat_tmp/kafka_producer_stats.json"
#define KP_STATS_TEMP_FILE KP_STATS_FILE ".tmp"

/*
 * Called by the worker for each statistics event.  A failure is logged,
 * not thrown: statistics never stop deliveries.
 */
void
kp_stats_save(const char *json)
{
	FILE	   *file = AllocateFile(KP_STATS_TEMP_FILE, PG_BINARY_W);
	size_t		len = strlen(json);

	if (file == NULL ||
		fwrite(json, 1, len, file) != len ||
		FreeFile(file) != 0 ||
		rename(KP_STATS_TEMP_FILE, KP_STATS_FILE) != 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", KP_STATS_FILE)));
		return;
	}
}

/* Statistics of a producer that no longer runs must not be shown. */
void
kp_stats_clear(void)
{
	if (unlink(KP_STATS_FILE) != 0 && errno != ENOENT)
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", KP_STATS_FILE)));
}

/*
 * kafka_stats() returns librdkafka's latest statistics document, or NULL
 * before the worker's producer has produced one.
 */
Datum
kafka_stats(PG_FUNCTION_ARGS)
{
	FILE	   *file;
	StringInfoData json;
	char		buffer[8192];
	size_t		n;

	kp_check_serving_database();
	file = AllocateFile(KP_STATS_FILE, PG_BINARY_R);
	if (file == NULL)
	{
		if (errno == ENOENT)
			PG_RETURN_NULL();
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", KP_STATS_FILE)));
	}
	initStringInfo(&json);
	while ((n = fread(buffer, 1, sizeof(buffer), file)) > 0)
		appendBinaryStringInfo(&json, buffer, n);
	if (ferror(file))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", KP_STATS_FILE)));
	FreeFile(file);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(json.data)));
}
