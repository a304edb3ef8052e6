/*-------------------------------------------------------------------------
 *
 * wait.c
 *	  kafka_wait() and kafka_flush(): a session waits for the final
 *	  outcome of messages.  It sleeps on a condition variable that the
 *	  worker broadcasts after each commit of recorded outcomes, and reads
 *	  the outcome with a new snapshot as the extension's owner.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "kafka_producer.h"

PG_FUNCTION_INFO_V1(kafka_wait);
PG_FUNCTION_INFO_V1(kafka_flush);

static TimestampTz
wait_deadline(Interval *timeout)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz deadline;

	deadline = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													   TimestampTzGetDatum(now),
													   PointerGetDatum(timeout)));
	if (deadline < now)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));
	return deadline;
}

/*
 * The status of one message, read with a new snapshot, as the extension's
 * owner; caller must have enqueued it, or see every role's messages.  A
 * message of a batch row that is not deleted yet is pending.  A message
 * that the current transaction enqueued would keep its caller waiting for
 * ever.
 */
static char *
message_status(int64 id, Oid caller)
{
	Oid			argtypes[] = {INT8OID};
	Datum		args[] = {Int64GetDatum(id)};
	bool		isnull;
	Datum		xmin;
	Datum		enqueued_by;

	if (SPI_execute_with_args("SELECT status, xmin, enqueued_by FROM ("
							  "  SELECT 1, 'pending', xmin, enqueued_by FROM kafka.outbox WHERE id = $1 "
							  "  UNION ALL SELECT 1, 'pending', xmin, enqueued_by FROM kafka.outbox_batch "
							  "  WHERE first_id > $1 - " CppAsString2(KP_BATCH_ROW_MESSAGES) " AND first_id <= $1 "
							  "    AND first_id + cardinality(keys) > $1 "
							  "  UNION ALL SELECT 2, 'delivered', NULL::xid, enqueued_by "
							  "  FROM kafka.delivered WHERE id = $1 "
							  "  UNION ALL SELECT 2, 'failed', NULL::xid, enqueued_by "
							  "  FROM kafka.failed WHERE id = $1) AS m(rank, status, xmin, enqueued_by) "
							  "ORDER BY rank LIMIT 1",
							  1, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the status of Kafka message " INT64_FORMAT,
			 id);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("Kafka message " INT64_FORMAT " does not exist", id),
				 errhint("Delivered messages are removed after kafka.status_retention.")));
	enqueued_by = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3,
								&isnull);
	if ((isnull || DatumGetObjectId(enqueued_by) != caller) &&
		!has_privs_of_role(caller, ROLE_PG_MONITOR))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for Kafka message " INT64_FORMAT, id),
				 errdetail("It was enqueued by another role."),
				 errhint("Members of pg_monitor may wait for every role's messages.")));
	xmin = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
						 &isnull);
	if (!isnull &&
		TransactionIdIsCurrentTransactionId(DatumGetTransactionId(xmin)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot wait for a message enqueued by the current transaction"),
				 errdetail("Kafka message " INT64_FORMAT " is sent only after commit.", id)));
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

static void
check_can_wait(FunctionCallInfo fcinfo, int timeout_arg)
{
	kp_check_serving_database();
	if (PG_ARGISNULL(timeout_arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timeout must not be null")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot wait for Kafka deliveries in a transaction with a fixed snapshot"),
				 errdetail("In REPEATABLE READ or SERIALIZABLE the outcome would never become visible."),
				 errhint("Wait in a READ COMMITTED transaction.")));
}

/*
 * Calls is_final, each time with a new snapshot and as the extension's
 * owner, until it returns true or the deadline passes; sleeps in between
 * until the worker records more outcomes.  Returns is_final's last answer.
 */
static bool
wait_until_final(bool (*is_final) (void *arg), void *arg, TimestampTz deadline)
{
	bool		final;
	KpSavedUser saved;

	kp_begin_as_owner(&saved);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	for (;;)
	{
		uint64		generation = kp_shmem_outcome_generation();

		final = is_final(arg);
		if (final || !kp_shmem_wait_for_outcomes(generation, deadline))
			break;
	}
	SPI_finish();
	kp_end_as_owner(&saved);
	return final;
}

typedef struct KpWaitForMessage
{
	int64		id;
	Oid			caller;
	char		status[16];
} KpWaitForMessage;

static bool
message_is_final(void *arg)
{
	KpWaitForMessage *wait = arg;

	strlcpy(wait->status, message_status(wait->id, wait->caller), sizeof(wait->status));
	return strcmp(wait->status, "pending") != 0;
}

/*
 * kafka_wait(message_id bigint, timeout interval) returns the message's
 * status once it is final, or 'pending' if the timeout passes first.
 */
Datum
kafka_wait(PG_FUNCTION_ARGS)
{
	KpWaitForMessage wait;

	check_can_wait(fcinfo, 1);
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message id must not be null")));
	wait.id = PG_GETARG_INT64(0);
	wait.caller = GetUserId();
	wait_until_final(message_is_final, &wait,
					 wait_deadline(PG_GETARG_INTERVAL_P(1)));
	PG_RETURN_TEXT_P(cstring_to_text(wait.status));
}

static bool
session_messages_are_final(void *arg)
{
	KpIdRange  *ranges;
	int			count = kp_enqueue_committed_ranges(&ranges);
	Oid			argtypes[] = {INT8ARRAYOID, INT8ARRAYOID};
	Datum	   *firsts;
	Datum	   *lasts;
	Datum		args[2];
	bool		isnull;

	if (count == 0)
		return true;
	firsts = palloc(count * sizeof(Datum));
	lasts = palloc(count * sizeof(Datum));
	for (int i = 0; i < count; i++)
	{
		firsts[i] = Int64GetDatum(ranges[i].first);
		lasts[i] = Int64GetDatum(ranges[i].last);
	}
	args[0] = kp_datum_array(firsts, count, INT8OID);
	args[1] = kp_datum_array(lasts, count, INT8OID);
	if (SPI_execute_with_args("SELECT NOT EXISTS (SELECT FROM unnest($1, $2) r(first, last) "
							  "WHERE kafka.any_pending(r.first, r.last))",
							  2, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the status of this session's Kafka messages");
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * kafka_flush(timeout interval) waits until every message this session
 * committed since its last flush is delivered or failed; returns false if
 * the timeout passed first.
 */
Datum
kafka_flush(PG_FUNCTION_ARGS)
{
	bool		final;

	check_can_wait(fcinfo, 0);
	final = wait_until_final(session_messages_are_final, NULL,
							 wait_deadline(PG_GETARG_INTERVAL_P(0)));
	if (final)
		kp_enqueue_forget_committed();
	PG_RETURN_BOOL(final);
}
