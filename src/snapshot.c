/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *	  Snapshots of published tables, read by the worker in the background
 *	  (kafka.snapshot), a chunk of KP_SNAPSHOT_CHUNK rows at a time in
 *	  primary key order.
 *
 *	  Each chunk is one transaction of the worker: it reads the rows after
 *	  the last key read, FOR SHARE, enqueues their "r" events and records
 *	  the new last key.  The events take their ids before the transaction
 *	  commits and lets go of the rows, so a writer changing one of them
 *	  waits for that chunk at most and its change event comes after the
 *	  row's snapshot event; a change committed before the chunk read the
 *	  row is in what it read.  Replaying the events in id order therefore
 *	  never puts a snapshot's image of a row over a newer change.  Chunk and
 *	  progress commit together: a restarted worker goes on after the last
 *	  chunk, and no row is read twice.
 *
 *	  The chunk's query runs as the table's owner, with a fixed
 *	  search_path: its condition ("where") is the owner's SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "kafka_producer.h"

/* rows a chunk reads, and so how long a writer may wait for it */
#define KP_SNAPSHOT_CHUNK 1000
/* the longest a chunk's query may run */
#define KP_SNAPSHOT_CHUNK_TIMEOUT "60s"

typedef struct KpSnapshotJob
{
	int64		id;
	Oid			relid;
	char	   *table;			/* its name, quoted for SQL */
	char	   *condition;		/* NULL: every row */
	int			nkeys;
	char	  **key_columns;
	char	  **key_types;
	Datum		last_key;		/* a text[]; 0: none read yet */
} KpSnapshotJob;

static char **
text_array_elements(Datum array, int *count)
{
	Datum	   *elements;
	bool	   *nulls;
	char	  **strings;

	deconstruct_array(DatumGetArrayTypeP(array), TEXTOID, -1, false, TYPALIGN_INT,
					  &elements, &nulls, count);
	strings = palloc(*count * sizeof(char *));
	for (int i = 0; i < *count; i++)
		strings[i] = TextDatumGetCString(elements[i]);
	return strings;
}

/* The oldest running snapshot; false if none runs.  SPI is connected. */
static bool
next_job(KpSnapshotJob *job)
{
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	int			ntypes;
	Datum		condition;

	if (SPI_execute("SELECT id, relid, relid::text, condition, key_columns, key_types, last_key "
					"FROM kafka.snapshot "
					"WHERE finished_at IS NULL AND canceled_at IS NULL AND error IS NULL "
					"ORDER BY id LIMIT 1", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read kafka.snapshot");
	if (SPI_processed == 0)
		return false;
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	job->id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
	job->relid = DatumGetObjectId(SPI_getbinval(row, desc, 2, &isnull));
	job->table = SPI_getvalue(row, desc, 3);
	condition = SPI_getbinval(row, desc, 4, &isnull);
	job->condition = isnull ? NULL : TextDatumGetCString(condition);
	job->key_columns = text_array_elements(SPI_getbinval(row, desc, 5, &isnull),
										   &job->nkeys);
	job->key_types = text_array_elements(SPI_getbinval(row, desc, 6, &isnull),
										 &ntypes);
	job->last_key = SPI_getbinval(row, desc, 7, &isnull);
	if (isnull)
		job->last_key = (Datum) 0;
	else
		job->last_key = PointerGetDatum(DatumGetArrayTypePCopy(job->last_key));
	return true;
}

/*
 * The chunk's query: the whole row, its table (a partition's rows are its
 * own), and its key as text, after $1 unless no key was read yet.
 */
static char *
chunk_query(KpSnapshotJob *job)
{
	StringInfoData query;
	StringInfoData keys;
	StringInfoData after;

	initStringInfo(&keys);
	initStringInfo(&after);
	for (int k = 0; k < job->nkeys; k++)
	{
		const char *column = quote_identifier(job->key_columns[k]);

		appendStringInfo(&keys, "%st.%s", k > 0 ? ", " : "", column);
		appendStringInfo(&after, "%s$1[%d]::%s", k > 0 ? ", " : "", k + 1,
						 job->key_types[k]);
	}
	initStringInfo(&query);
	appendStringInfo(&query, "SELECT t, t.tableoid, ARRAY[");
	for (int k = 0; k < job->nkeys; k++)
		appendStringInfo(&query, "%st.%s::text", k > 0 ? ", " : "",
						 quote_identifier(job->key_columns[k]));
	/* a partitioned table's partitions are its rows; inheritance children are not */
	appendStringInfo(&query, "] FROM %s%s t WHERE true",
					 get_rel_relkind(job->relid) == RELKIND_PARTITIONED_TABLE ? "" : "ONLY ",
					 job->table);
	if (job->last_key != (Datum) 0)
		appendStringInfo(&query, " AND (%s) > (%s)", keys.data, after.data);
	/* on lines of its own: a comment in it ends with it */
	if (job->condition != NULL)
		appendStringInfo(&query, " AND (\n%s\n)", job->condition);
	appendStringInfo(&query, " ORDER BY %s LIMIT %d FOR SHARE OF t", keys.data,
					 KP_SNAPSHOT_CHUNK);
	return query.data;
}

/* Runs the chunk's query as the table's owner; SPI holds its rows. */
static void
read_chunk(KpSnapshotJob *job)
{
	Oid			argtypes[] = {TEXTARRAYOID};
	Datum		args[] = {job->last_key};
	char		nulls[] = {job->last_key == (Datum) 0 ? 'n' : ' '};
	Oid			saved_user;
	int			saved_context;
	int			guc_level;
	char	   *query = chunk_query(job);
	SPIPlanPtr	plan;

	Relation	rel = table_open(job->relid, AccessShareLock);
	Oid			owner = rel->rd_rel->relowner;

	table_close(rel, NoLock);
	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(owner,
						   saved_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	guc_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	/* the condition is the owner's: it may not hold up every delivery */
	(void) set_config_option("statement_timeout", KP_SNAPSHOT_CHUNK_TIMEOUT,
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	/* prepared, so that it is one statement */
	plan = SPI_prepare(query, 1, argtypes);
	if (plan == NULL ||
		SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read a chunk of table %s: %s", job->table,
			 SPI_result_code_string(SPI_result));
	AtEOXact_GUC(false, guc_level);
	SetUserIdAndSecContext(saved_user, saved_context);
}

/* Enqueues the "r" events of the rows read; returns the last key. */
static Datum
publish_chunk(SPITupleTable *rows, uint64 count)
{
	Datum		last_key = (Datum) 0;
	Relation	rel = NULL;		/* the table of the last row, open */

	for (uint64 i = 0; i < count; i++)
	{
		HeapTuple	row = rows->vals[i];
		bool		isnull;
		HeapTupleHeader image = DatumGetHeapTupleHeader(SPI_getbinval(row, rows->tupdesc,
																	  1, &isnull));
		Oid			tableoid = DatumGetObjectId(SPI_getbinval(row, rows->tupdesc, 2,
															  &isnull));
		HeapTupleData tuple;

		/* rows come in key order: a partition's usually follow each other */
		if (rel == NULL || RelationGetRelid(rel) != tableoid)
		{
			if (rel != NULL)
				table_close(rel, NoLock);
			rel = table_open(tableoid, AccessShareLock);
		}
		tuple.t_len = HeapTupleHeaderGetDatumLength(image);
		ItemPointerSetInvalid(&tuple.t_self);
		tuple.t_tableOid = tableoid;
		tuple.t_data = image;
		kp_publish_snapshot_row(rel, &tuple);
		last_key = SPI_getbinval(row, rows->tupdesc, 3, &isnull);
	}
	if (rel != NULL)
		table_close(rel, NoLock);
	return last_key;
}

/*
 * Worker side, in a transaction: reads the next chunk of the oldest
 * running snapshot.  Returns false when no snapshot runs.
 */
bool
kp_snapshot_run_chunk(void)
{
	KpSnapshotJob job;
	uint64		count;
	Datum		last_key;
	Oid			argtypes[] = {INT8OID, TEXTARRAYOID, INT8OID, BOOLOID};
	Datum		args[4];
	char		nulls[] = "    ";

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!next_job(&job))
	{
		SPI_finish();
		return false;
	}
	read_chunk(&job);
	count = SPI_processed;
	last_key = publish_chunk(SPI_tuptable, count);
	args[0] = Int64GetDatum(job.id);
	args[1] = count > 0 ? last_key : job.last_key;
	args[2] = Int64GetDatum((int64) count);
	args[3] = BoolGetDatum(count < KP_SNAPSHOT_CHUNK);
	/* no key read yet, none now: an empty table, or no row of the condition */
	nulls[1] = args[1] == (Datum) 0 ? 'n' : ' ';
	if (SPI_execute_with_args("UPDATE kafka.snapshot SET last_key = $2, "
							  "  rows_done = rows_done + $3, "
							  "  finished_at = CASE WHEN $4 THEN now() END "
							  "WHERE id = $1",
							  4, argtypes, args, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the progress of snapshot " INT64_FORMAT, job.id);
	SPI_finish();
	return true;
}

/*
 * Worker side, in a transaction, after a chunk failed: the oldest running
 * snapshot fails with error, rather than stopping the ones after it.
 */
void
kp_snapshot_fail_running(const char *error)
{
	Oid			argtypes[] = {TEXTOID};
	Datum		args[] = {CStringGetTextDatum(error)};

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("UPDATE kafka.snapshot SET error = $1 "
							  "WHERE id = (SELECT min(id) FROM kafka.snapshot "
							  "  WHERE finished_at IS NULL AND canceled_at IS NULL AND error IS NULL)",
							  1, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the failure of a snapshot");
	SPI_finish();
}
