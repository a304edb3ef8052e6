/*-------------------------------------------------------------------------
 *
 * recorded_offsets.c
 *	  kafka.recorded_offsets: per partition, an offset at or below which
 *	  the worker has recorded every delivery.  Each step that records
 *	  deliveries notes their offsets here, and every KP_SAVE_INTERVAL_MS a
 *	  step saves the highest of each partition in one statement; a new
 *	  producer's reconciliation reads Kafka from just after them.  Saving
 *	  in every step cost an eighth of the worker's time while many
 *	  sessions committed small transactions; a mark saved late is only
 *	  lower, and a lower mark makes reconciliation read a little more.
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
#include "utils/timestamp.h"

#include "kafka_producer.h"

/*
 * A partition's highest offset among the deliveries being recorded, and
 * its lowest among those delivered but held back (their batch row waits
 * for others): the mark saved stays below the latter, so that after a
 * crash reconciliation reads them too.
 */
typedef struct KpOffsetMark
{
	Datum		topic;			/* text, in TopMemoryContext */
	int32		partition;
	int64		offset;			/* -1: none recorded by this step */
	int64		committed;		/* -1: none by earlier steps, unsaved */
	int64		lowest_held;	/* PG_INT64_MAX: none held */
} KpOffsetMark;

#define KP_SAVE_INTERVAL_MS 500

static KpOffsetMark *marks = NULL;
static int	mark_count = 0;
static int	mark_capacity = 0;
static int	last_found = 0;
static SPIPlanPtr save_plan = NULL;
static TimestampTz last_save_at = 0;
static bool saved_in_step = false;

bool
kp_recorded_offsets_present(void)
{
	Oid			nsp = get_namespace_oid(KP_SCHEMA_NAME, true);

	return OidIsValid(nsp) &&
		OidIsValid(get_relname_relid("recorded_offsets", nsp));
}

/*
 * The mark of partition of topic, made if new.  The partitions of a step
 * are few: a linear search, partition first, is cheapest.
 */
static KpOffsetMark *
mark_of(Datum topic, int32 partition)
{
	KpOffsetMark *mark;
	MemoryContext outer;

	for (int i = 0; i < mark_count; i++)
	{
		/* the last one found first: reports come in runs of a partition */
		int			k = (last_found + i) % mark_count;

		if (marks[k].partition == partition &&
			datum_image_eq(marks[k].topic, topic, false, -1))
		{
			last_found = k;
			return &marks[k];
		}
	}
	if (mark_count == mark_capacity)
	{
		mark_capacity = Max(16, mark_capacity * 2);
		marks = marks == NULL ?
			MemoryContextAlloc(TopMemoryContext, mark_capacity * sizeof(KpOffsetMark)) :
			repalloc(marks, mark_capacity * sizeof(KpOffsetMark));
	}
	mark = &marks[mark_count++];
	outer = MemoryContextSwitchTo(TopMemoryContext);
	mark->topic = PointerGetDatum(PG_DETOAST_DATUM_COPY(topic));
	MemoryContextSwitchTo(outer);
	mark->partition = partition;
	mark->offset = -1;
	mark->committed = -1;
	mark->lowest_held = PG_INT64_MAX;
	return mark;
}

/* Notes a delivery recorded at offset of partition of topic. */
void
kp_recorded_offsets_note(Datum topic, int32 partition, int64 offset)
{
	KpOffsetMark *mark;

	if (offset < 0)
		return;					/* acks=0: Kafka gave no offset */
	mark = mark_of(topic, partition);
	mark->offset = Max(mark->offset, offset);
}

/* Notes a delivery at offset that is not recorded yet. */
void
kp_recorded_offsets_hold(Datum topic, int32 partition, int64 offset)
{
	KpOffsetMark *mark;

	if (offset < 0)
		return;
	mark = mark_of(topic, partition);
	mark->lowest_held = Min(mark->lowest_held, offset);
}

/*
 * Starts a recording step: drops what an earlier one noted if it failed,
 * and what it held, which this one notes again.
 */
void
kp_recorded_offsets_begin_step(void)
{
	for (int i = 0; i < mark_count; i++)
	{
		marks[i].offset = -1;
		marks[i].lowest_held = PG_INT64_MAX;
	}
	saved_in_step = false;
}

/* The step that noted offsets committed: they are recorded. */
void
kp_recorded_offsets_step_committed(void)
{
	if (saved_in_step)
	{
		for (int i = 0; i < mark_count; i++)
			pfree(DatumGetPointer(marks[i].topic));
		mark_count = 0;
		last_found = 0;
		return;
	}
	for (int i = 0; i < mark_count; i++)
		marks[i].committed = Max(marks[i].committed, marks[i].offset);
	kp_recorded_offsets_begin_step();
}

/*
 * Saves the offsets recorded by this step and the unsaved earlier ones,
 * in the recording step's transaction, if KP_SAVE_INTERVAL_MS passed
 * since the last save.
 */
void
kp_recorded_offsets_save(void)
{
	Oid			argtypes[] = {TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID};
	Datum		args[3];
	Datum	   *topics;
	Datum	   *partitions;
	Datum	   *offsets;
	int			n = 0;
	int			rc;
	TimestampTz now = GetCurrentTimestamp();

	if (mark_count == 0 ||
		!TimestampDifferenceExceeds(last_save_at, now, KP_SAVE_INTERVAL_MS))
		return;
	last_save_at = now;
	saved_in_step = true;
	if (!kp_recorded_offsets_present())
		return;
	topics = palloc(mark_count * sizeof(Datum));
	partitions = palloc(mark_count * sizeof(Datum));
	offsets = palloc(mark_count * sizeof(Datum));
	for (int i = 0; i < mark_count; i++)
	{
		int64		offset = Min(Max(marks[i].offset, marks[i].committed),
								 marks[i].lowest_held - 1);

		if (offset < 0)
			continue;
		topics[n] = marks[i].topic;
		partitions[n] = Int32GetDatum(marks[i].partition);
		offsets[n] = Int64GetDatum(offset);
		n++;
	}
	if (n == 0)
		return;
	args[0] = PointerGetDatum(construct_array(topics, n, TEXTOID,
											  -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(partitions, n, INT4OID,
											  sizeof(int32), true, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(offsets, n, INT8OID,
											  sizeof(int64), FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
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
