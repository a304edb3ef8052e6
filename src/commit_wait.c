/*-------------------------------------------------------------------------
 *
 * commit_wait.c
 *	  kafka.wait_on_commit: COMMIT returns only once Kafka has acknowledged
 *	  the transaction's messages.
 *
 *	  The wait happens in the commit callback, after the transaction is
 *	  committed and visible, where no table can be read and no ERROR may be
 *	  raised.  So the committing backend registers its id range in a slot
 *	  of shared memory, indexed by its pgprocno, and sleeps on its latch;
 *	  the worker, after each commit of recorded outcomes, checks every
 *	  registered range against the tables, answers in the slot and sets the
 *	  backend's latch.  Like a wait for synchronous replication, the wait
 *	  ends early with a WARNING on cancel, and after kafka.message_timeout_ms.
 *
 *	  A range is final when no message with an id in it is pending: under
 *	  concurrency other sessions' messages may fall inside it and be waited
 *	  for too.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "kafka_producer.h"

bool		kp_wait_on_commit = false;

typedef struct KpCommitWaiter
{
	slock_t		mutex;
	bool		waiting;		/* registered, not answered yet */
	Oid			database;
	int64		first_id;
	int64		last_id;
	bool		answered;
	int64		failed;			/* messages of the range that failed */
	char		first_error[KP_LAST_ERROR_LEN];
} KpCommitWaiter;

/* one per backend, indexed by pgprocno */
static KpCommitWaiter *waiters = NULL;

/* in each database's slot: how many of its backends wait */
static int	registered_part = -1;

static Size
shmem_size(void)
{
	return mul_size(MaxBackends, sizeof(KpCommitWaiter));
}

static void
shmem_attach(void *memory, bool found)
{
	waiters = memory;
	if (found)
		return;
	for (int i = 0; i < MaxBackends; i++)
	{
		SpinLockInit(&waiters[i].mutex);
		waiters[i].waiting = false;
	}
}

static void
registered_reset(void *memory)
{
	pg_atomic_init_u32((pg_atomic_uint32 *) memory, 0);
}

static pg_atomic_uint32 *
registered(bool missing_ok)
{
	return kp_shmem_database_part(registered_part, missing_ok);
}

void
kp_commit_wait_init(void)
{
	DefineCustomBoolVariable("kafka.wait_on_commit",
							 "COMMIT returns only once Kafka has acknowledged the transaction's messages.",
							 "A failure or a wait longer than kafka.message_timeout_ms is reported with a WARNING: the transaction is committed already.",
							 &kp_wait_on_commit, false,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	kp_shmem_add("kafka_producer commit waiters", shmem_size, shmem_attach);
	registered_part = kp_shmem_add_database_part(sizeof(pg_atomic_uint32),
												 registered_reset);
}

static void
register_waiter(KpCommitWaiter *slot, pg_atomic_uint32 *count, int64 first_id,
				int64 last_id)
{
	SpinLockAcquire(&slot->mutex);
	slot->database = MyDatabaseId;
	slot->first_id = first_id;
	slot->last_id = last_id;
	slot->answered = false;
	slot->failed = 0;
	slot->first_error[0] = '\0';
	slot->waiting = true;
	SpinLockRelease(&slot->mutex);
	pg_atomic_fetch_add_u32(count, 1);
}

static void
unregister_waiter(KpCommitWaiter *slot, pg_atomic_uint32 *count)
{
	SpinLockAcquire(&slot->mutex);
	slot->waiting = false;
	SpinLockRelease(&slot->mutex);
	pg_atomic_fetch_sub_u32(count, 1);
}

static bool
answered(KpCommitWaiter *slot, int64 *failed, char *first_error)
{
	bool		done;

	SpinLockAcquire(&slot->mutex);
	done = slot->answered;
	*failed = slot->failed;
	strlcpy(first_error, slot->first_error, KP_LAST_ERROR_LEN);
	SpinLockRelease(&slot->mutex);
	return done;
}

/*
 * Called at commit of a transaction that enqueued the messages first_id ..
 * last_id, after the worker was told.  Never raises an ERROR: the
 * transaction is committed already.
 */
void
kp_commit_wait(int64 first_id, int64 last_id)
{
	KpCommitWaiter *slot = &waiters[MyProc->pgprocno];
	pg_atomic_uint32 *count = registered(true);
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   kp_producer_message_timeout_ms());
	int64		failed = 0;
	char		first_error[KP_LAST_ERROR_LEN];
	bool		done = false;

	/* the database lost its slot: no worker to wait for */
	if (count == NULL)
		return;
	register_waiter(slot, count, first_id, last_id);
	kp_shmem_wake_worker();
	while (!(done = answered(slot, &failed, first_error)) &&
		   !QueryCancelPending && !ProcDiePending)
	{
		long		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
																deadline);

		if (remaining <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 remaining, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	unregister_waiter(slot, count);

	if (done && failed > 0)
		ereport(WARNING,
				(errmsg_plural("%lld Kafka message of the committed transaction failed",
							   "%lld Kafka messages of the committed transaction failed",
							   failed, (long long) failed),
				 errdetail("The first error was: %s.", first_error),
				 errhint("The messages are in kafka.messages with status 'failed'; kafka_retry() sends them again.")));
	else if (!done)
	{
		/* the cancel is answered by ending the wait, like syncrep's */
		bool		canceled = QueryCancelPending;

		QueryCancelPending = false;
		ereport(WARNING,
				(errmsg(canceled ?
						"canceling wait for Kafka acknowledgement due to user request" :
						"Kafka did not acknowledge the committed transaction's messages within kafka.message_timeout_ms"),
				 errdetail("The transaction has committed; its messages are delivered later, as usual.")));
	}
}

/* Answers one registered range if none of its messages is pending. */
static void
answer_if_final(int procno, int64 first_id, int64 last_id)
{
	KpCommitWaiter *slot = &waiters[procno];
	Oid			argtypes[] = {INT8OID, INT8OID};
	Datum		args[] = {Int64GetDatum(first_id), Int64GetDatum(last_id)};
	bool		isnull;
	int64		failed;
	char	   *first_error;

	if (SPI_execute_with_args("SELECT kafka.any_pending($1, $2), "
							  "(SELECT count(*) FROM kafka.failed WHERE id BETWEEN $1 AND $2), "
							  "(SELECT error_code || ': ' || error FROM kafka.failed "
							  "  WHERE id BETWEEN $1 AND $2 ORDER BY id LIMIT 1)",
							  2, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the status of Kafka messages " INT64_FORMAT " to " INT64_FORMAT,
			 first_id, last_id);
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								   1, &isnull)))
		return;
	failed = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 2, &isnull));
	first_error = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);

	SpinLockAcquire(&slot->mutex);
	if (slot->waiting && slot->first_id == first_id && slot->last_id == last_id)
	{
		slot->answered = true;
		slot->failed = failed;
		strlcpy(slot->first_error, first_error ? first_error : "",
				KP_LAST_ERROR_LEN);
	}
	SpinLockRelease(&slot->mutex);
	SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

bool
kp_commit_wait_pending(void)
{
	return pg_atomic_read_u32(registered(false)) > 0;
}

/*
 * Worker side, in a transaction with SPI connected: answers every
 * registered waiter of its database whose messages are all final.
 */
void
kp_commit_wait_answer(void)
{
	for (int procno = 0; procno < MaxBackends; procno++)
	{
		KpCommitWaiter *slot = &waiters[procno];
		bool		unanswered;
		int64		first_id;
		int64		last_id;

		SpinLockAcquire(&slot->mutex);
		unanswered = slot->waiting && !slot->answered &&
			slot->database == MyDatabaseId;
		first_id = slot->first_id;
		last_id = slot->last_id;
		SpinLockRelease(&slot->mutex);
		if (unanswered)
			answer_if_final(procno, first_id, last_id);
	}
}
