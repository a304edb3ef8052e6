/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  The producer's view of the cluster, for SQL: the worker writes each
 *	  producer's statistics document (every kafka.statistics_interval_ms)
 *	  to a file of its database under pg_stat_tmp, replaced atomically by
 *	  rename; the SQL
 *	  function kafka_stats() reads it back as jsonb, adding the worker's
 *	  counters and the number of pending messages, and kafka_brokers()
 *	  and kafka_topics() (SQL functions in the extension script) select the
 *	  discovered brokers and partition leaders from it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include <unistd.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "kafka_producer.h"

PG_FUNCTION_INFO_V1(kafka_stats);

/* the statistics file of this database, and its temporary name */
static void
stats_file_names(char *file, char *temp_file)
{
	snprintf(file, MAXPGPATH, "pg_stat_tmp/kafka_producer_stats_%u.json",
			 MyDatabaseId);
	snprintf(temp_file, MAXPGPATH, "%s.tmp", file);
}

/*
 * Called by the worker for each statistics event.  A failure is logged,
 * not thrown: statistics never stop deliveries.
 */
void
kp_stats_save(const char *json)
{
	char		path[MAXPGPATH];
	char		temp_path[MAXPGPATH];
	FILE	   *file;
	size_t		len = strlen(json);

	stats_file_names(path, temp_path);
	file = AllocateFile(temp_path, PG_BINARY_W);
	if (file == NULL ||
		fwrite(json, 1, len, file) != len ||
		FreeFile(file) != 0 ||
		rename(temp_path, path) != 0)
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", path)));
}

/* Statistics of a producer that no longer runs must not be shown. */
void
kp_stats_clear(void)
{
	char		path[MAXPGPATH];
	char		temp_path[MAXPGPATH];

	stats_file_names(path, temp_path);
	if (unlink(path) != 0 && errno != ENOENT)
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", path)));
}

/* the producer's latest document, or "{}" before the first */
static char *
read_producer_stats(void)
{
	char		path[MAXPGPATH];
	char		temp_path[MAXPGPATH];
	FILE	   *file;
	StringInfoData json;
	char		buffer[8192];
	size_t		n;

	stats_file_names(path, temp_path);
	file = AllocateFile(path, PG_BINARY_R);
	if (file == NULL)
	{
		if (errno == ENOENT)
			return "{}";
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	}
	initStringInfo(&json);
	while ((n = fread(buffer, 1, sizeof(buffer), file)) > 0)
		appendBinaryStringInfo(&json, buffer, n);
	if (ferror(file))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", path)));
	FreeFile(file);
	return json.data;
}

/* as the backlog counts them: kafka_stats() is scraped, and must be cheap */
static int64
pending_messages(void)
{
	int64		messages;
	int64		bytes;

	kp_backlog_read(&messages, &bytes);
	return messages;
}

/*
 * kafka_stats() returns the producer's latest statistics document with the
 * worker's own counters added under "kafka_producer".
 */
Datum
kafka_stats(PG_FUNCTION_ARGS)
{
	StringInfoData ours;
	Datum		producer;

	kp_check_serving_database();
	producer = DirectFunctionCall1(jsonb_in,
									 CStringGetDatum(read_producer_stats()));
	initStringInfo(&ours);
	appendStringInfo(&ours, "{\"kafka_producer\": {\"pending\": " INT64_FORMAT ", "
					 "\"standby\": %s, ",
					 pending_messages(), RecoveryInProgress() ? "true" : "false");
	kp_shmem_counters_json(&ours);
	appendStringInfoString(&ours, "}}");
	PG_RETURN_DATUM(DirectFunctionCall2(jsonb_concat, producer,
										DirectFunctionCall1(jsonb_in,
															CStringGetDatum(ours.data))));
}
