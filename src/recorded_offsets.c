/*-------------------------------------------------------------------------
 *
 * recorded_offsets.c
 *	  kafka.recorded_offsets: per partition, the highest offset at which
 *	  the worker has recorded a delivery.  Each step that records
 *	  deliveries notes their offsets here and saves the highest of each
 *	  partition in one statement; a new producer's reconciliation reads
 *	  Kafka from just after them.
 *
 *	  A database still at version 0.1.0 has no such table: nothing is
 *	  saved, and reconciliation has no marks to start from.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "kafka_producer.h"

/* a partition's highest offset among the deliveries being recorded */
typedef struct KpOffsetMark
{
	Datum		topic;			/* text, copied into the recording step's
								 * transaction */
	int32		partition;
	int64		offset;
} KpOffsetMark;

static KpOffsetMark *marks = NULL;
static int	mark_count = 0;
static int	mark_capacity = 0;
static int	last_found = 0;
static SPIPlanPtr save_plan = NULL;

bool
kp_recorded_offsets_present(void)
{
	Oid			nsp = get_namespace_oid(KP_SCHEMA_NAME, true);

	return OidIsValid(nsp) &&
		OidIsValid(get_relname_relid("recorded_offsets", nsp));
}

/*
 * Notes a delivery at offset of partition of topic.  The partitions of a
 * step are few: a linear search, partition first, is cheapest.
 */
void
kp_recorded_offsets_note(Datum topic, int32 partition, int64 offset)
{
	if (offset < 0)
		return;					/* acks=0: Kafka gave no offset */
	for (int i = 0; i < mark_count; i++)
	{
		/* the last one found first: reports come in runs of a partition */
		int			k = (last_found + i) % mark_count;

		if (marks[k].partition == partition &&
			datum_image_eq(marks[k].topic, topic, false, -1))
		{
			marks[k].offset = Max(marks[k].offset, offset);
			last_found = k;
			return;
		}
	}
	if (mark_count == mark_capacity)
	{
		mark_capacity = Max(16, mark_capacity * 2);
		marks = marks == NULL ?
			MemoryContextAlloc(TopMemoryContext, mark_capacity * sizeof(KpOffsetMark)) :
			repalloc(marks, mark_capacity * sizeof(KpOffsetMark));
	}
	marks[mark_count].topic = PointerGetDatum(PG_DETOAST_DATUM_COPY(topic));
	marks[mark_count].partition = partition;
	marks[mark_count].offset = offset;
	mark_count++;
}

/* Drops the notes of an earlier step that failed: their topics are gone. */
void
kp_recorded_offsets_forget(void)
{
	mark_count = 0;
	last_found = 0;
}

/* Saves the noted offsets, in the recording step's transaction. */
void
kp_recorded_offsets_save(void)
{
	Oid			argtypes[] = {TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID};
	Datum		args[3];
	Datum	   *topics;
	Datum	   *partitions;
	Datum	   *offsets;
	int			rc;

	if (mark_count == 0)
		return;
	if (!kp_recorded_offsets_present())
	{
		kp_recorded_offsets_forget();
		return;
	}
	topics = palloc(mark_count * sizeof(Datum));
	partitions = palloc(mark_count * sizeof(Datum));
	offsets = palloc(mark_count * sizeof(Datum));
	for (int i = 0; i < mark_count; i++)
	{
		topics[i] = marks[i].topic;
		partitions[i] = Int32GetDatum(marks[i].partition);
		offsets[i] = Int64GetDatum(marks[i].offset);
	}
	args[0] = PointerGetDatum(construct_array(topics, mark_count, TEXTOID,
											  -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(partitions, mark_count, INT4OID,
											  sizeof(int32), true, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(offsets, mark_count, INT8OID,
											  sizeof(int64), FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	kp_recorded_offsets_forget();
	if (save_plan == NULL)
	{
		save_plan = SPI_prepare("INSERT INTO kafka.recorded_offsets AS r "
								"(topic, \"partition\", \"offset\") "
								"SELECT * FROM unnest($1, $2, $3) "
								"ON CONFLICT (topic, \"partition\") DO UPDATE "
								"SET \"offset\" = greatest(r.\"offset\", excluded.\"offset\")",
								3, argtypes);
		if (save_plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(save_plan);
	}
	rc = SPI_execute_plan(save_plan, args, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "saving kafka.recorded_offsets failed: %s",
			 SPI_result_code_string(rc));
}
