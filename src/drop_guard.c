/*-------------------------------------------------------------------------
 *
 * drop_guard.c
 *	  DROP EXTENSION kafka_producer refuses while messages are pending or
 *	  failed: dropping the extension drops its tables, and with them
 *	  committed messages nobody would ever deliver, without a word.  Only
 *	  DROP ... CASCADE with kafka.discard_on_drop on discards them.
 *
 *	  TRUNCATE of one partition of a published partitioned table refuses
 *	  too: statement triggers are not cloned to partitions, so its rows
 *	  would vanish from the table without an event.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "kafka_producer.h"

static bool kp_discard_on_drop = false;
static ProcessUtility_hook_type prev_process_utility = NULL;

/* Whether stmt drops this database's kafka_producer extension. */
static bool
drops_this_extension(DropStmt *stmt)
{
	ListCell   *lc;

	if (stmt->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, stmt->objects)
	{
		if (strcmp(strVal(lfirst(lc)), KP_EXTENSION_NAME) == 0)
			return OidIsValid(get_extension_oid(KP_EXTENSION_NAME, true));
	}
	return false;
}

/* How many messages are pending, and how many failed. */
static void
count_undelivered(int64 *pending, int64 *failed)
{
	KpSavedUser saved;
	bool		isnull;

	kp_begin_as_owner(&saved);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute("SELECT (SELECT count(*) FROM kafka.outbox) + "
					"  (SELECT coalesce(sum(cardinality(keys)), 0) FROM kafka.outbox_batch), "
					"  (SELECT count(*) FROM kafka.failed)", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "counting undelivered Kafka messages failed");
	*pending = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	*failed = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 2, &isnull));
	PopActiveSnapshot();
	SPI_finish();
	kp_end_as_owner(&saved);
}

static void
check_drop(DropStmt *stmt)
{
	int64		pending;
	int64		failed;

	count_undelivered(&pending, &failed);
	if (pending + failed == 0 ||
		(stmt->behavior == DROP_CASCADE && kp_discard_on_drop))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot drop extension %s while it holds undelivered messages",
					KP_EXTENSION_NAME),
			 errdetail("%lld messages are pending and %lld failed; dropping the extension would discard them.",
					   (long long) pending, (long long) failed),
			 errhint("Let them be delivered (kafka_flush() waits for a session's own), retry the failed ones with kafka_retry_failed(), "
					 "or discard them all with DROP EXTENSION %s CASCADE while kafka.discard_on_drop is on.",
					 KP_EXTENSION_NAME)));
}

/* Whether kafka.publication names one of relids. */
static bool
any_published(List *relids)
{
	Datum	   *elements = palloc(list_length(relids) * sizeof(Datum));
	Oid			argtypes[] = {OIDARRAYOID};
	Datum		args[1];
	KpSavedUser saved;
	bool		found;
	int			count = 0;
	ListCell   *lc;

	foreach(lc, relids)
		elements[count++] = ObjectIdGetDatum(lfirst_oid(lc));
	args[0] = PointerGetDatum(construct_array(elements, count, OIDOID, sizeof(Oid),
											  true, TYPALIGN_INT));
	kp_begin_as_owner(&saved);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT FROM kafka.publication WHERE relid = ANY ($1)",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read kafka.publication");
	found = SPI_processed > 0;
	SPI_finish();
	kp_end_as_owner(&saved);
	return found;
}

static void
check_truncate(TruncateStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->relations)
	{
		Oid			relid = RangeVarGetRelid(lfirst(lc), NoLock, true);

		if (!OidIsValid(relid) || !get_rel_relispartition(relid) ||
			!any_published(get_partition_ancestors(relid)))
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot truncate partition \"%s\" of a published table",
						get_rel_name(relid)),
				 errdetail("TRUNCATE of a partition alone would publish no event."),
				 errhint("Truncate the partitioned table, or DELETE the partition's rows.")));
	}
}

static void
guard_process_utility(PlannedStmt *pstmt, const char *query_string,
					  bool read_only_tree, ProcessUtilityContext context,
					  ParamListInfo params, QueryEnvironment *query_env,
					  DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, DropStmt) && drops_this_extension((DropStmt *) parsetree))
		check_drop((DropStmt *) parsetree);
	if (IsA(parsetree, TruncateStmt) &&
		OidIsValid(get_extension_oid(KP_EXTENSION_NAME, true)))
		check_truncate((TruncateStmt *) parsetree);
	if (prev_process_utility)
		prev_process_utility(pstmt, query_string, read_only_tree, context,
							 params, query_env, dest, qc);
	else
		standard_ProcessUtility(pstmt, query_string, read_only_tree, context,
								params, query_env, dest, qc);
}

void
kp_drop_guard_init(void)
{
	DefineCustomBoolVariable("kafka.discard_on_drop",
							 "DROP EXTENSION kafka_producer CASCADE discards undelivered messages.",
							 "Off: the drop is refused while messages are pending or failed.",
							 &kp_discard_on_drop, false,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = guard_process_utility;
}
