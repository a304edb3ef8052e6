/*-------------------------------------------------------------------------
 *
 * delivery_hold.c
 *	  Whether delivery is held: kafka.delivery_hold has its row.
 *
 *	  A row appears there when messages reach the queue tables by INSERT
 *	  or COPY rather than through kafka_send() or the publishing trigger,
 *	  as when pg_restore copies a dump in; kafka_resume() removes it.  The
 *	  worker sends nothing meanwhile, so a restored copy of a database
 *	  never sends the original's messages by surprise.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "executor/tuptable.h"
#include "storage/bufmgr.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

#include "kafka_producer.h"

static bool was_held = false;

/* Logs when a hold begins and ends; slot holds the hold's row. */
static void
note_hold(bool held, TupleTableSlot *slot)
{
	if (held && !was_held)
	{
		bool		isnull;
		char	   *reason = TextDatumGetCString(slot_getattr(slot, 2, &isnull));

		ereport(LOG,
				(errmsg("kafka_producer holds delivery: %s", reason),
				 errhint("Check that this database should send its pending messages, then run SELECT kafka_resume(); "
						 "or remove them with kafka_discard().")));
	}
	else if (!held && was_held)
		ereport(LOG,
				(errmsg("kafka_producer resumes delivery")));
	was_held = held;
}

/* Whether the worker must hold delivery, seen with the active snapshot. */
bool
kp_delivery_held(void)
{
	Relation	rel = table_open(kp_relation_oid("delivery_hold"), AccessShareLock);
	TableScanDesc scan;
	TupleTableSlot *slot;
	bool		held;

	/*
	 * Without a page it has no row, committed or not: a row visible to the
	 * snapshot, which was taken earlier, was written to a page before it.
	 * Setting up the scan took an eighth of the worker's rounds of sending
	 * under 8 sessions committing a few messages at a time.
	 */
	if (RelationGetNumberOfBlocks(rel) == 0)
	{
		table_close(rel, AccessShareLock);
		note_hold(false, NULL);
		return false;
	}
	scan = table_beginscan(rel, GetActiveSnapshot(), 0, NULL);
	slot = table_slot_create(rel, NULL);
	held = table_scan_getnextslot(scan, ForwardScanDirection, slot);
	note_hold(held, slot);
	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return held;
}
