/*-------------------------------------------------------------------------
 *
 * backlog.c
 *	  How many messages, and bytes of keys and values, wait for Kafka, and
 *	  the optional limit on them (kafka.max_pending_messages,
 *	  kafka.max_pending_bytes) past which kafka_send() and published
 *	  writes fail instead of filling the disk during a long outage.
 *
 *	  Counting every row at each kafka_send() would cost a scan, so the
 *	  count lives in shared memory: each transaction adds what it
 *	  enqueued when it commits, and the worker takes away what it records
 *	  as delivered or failed.  What changes the queue otherwise (a
 *	  re-queued failure, a discard, a restore) makes the count drift; the
 *	  worker counts the tables when it starts, and sets the count to zero
 *	  whenever it finds the queue empty and nothing was added meanwhile.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "kafka_producer.h"

PG_FUNCTION_INFO_V1(kafka_backlog);

typedef struct KpBacklog
{
	pg_atomic_uint64 messages;	/* as int64: drift may take it below zero */
	pg_atomic_uint64 bytes;
	pg_atomic_uint64 additions;	/* grows with every addition */
	pg_atomic_uint64 last_delivery_at;	/* a TimestampTz; 0: none yet */
} KpBacklog;

static int	backlog_part = -1;

static int	kp_max_pending_messages = 0;
static int	kp_max_pending_kb = 0;
static double kp_pending_warning_fraction = 0.8;

/* this database's backlog */
static KpBacklog *
my_backlog(void)
{
	return kp_shmem_database_part(backlog_part, false);
}

static void
backlog_reset(void *memory)
{
	KpBacklog  *backlog = memory;

	pg_atomic_init_u64(&backlog->messages, 0);
	pg_atomic_init_u64(&backlog->bytes, 0);
	pg_atomic_init_u64(&backlog->additions, 0);
	pg_atomic_init_u64(&backlog->last_delivery_at, 0);
}

void
kp_backlog_init(void)
{
	DefineCustomIntVariable("kafka.max_pending_messages",
							"Largest number of undelivered messages; past it, enqueueing fails (0 = no limit).",
							NULL, &kp_max_pending_messages, 0, 0, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("kafka.max_pending_bytes",
							"Largest size of the keys and values of undelivered messages; past it, enqueueing fails (0 = no limit).",
							NULL, &kp_max_pending_kb, 0, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_KB, NULL, NULL, NULL);
	DefineCustomRealVariable("kafka.pending_warning_fraction",
							 "Fraction of a pending limit past which enqueueing warns.",
							 NULL, &kp_pending_warning_fraction, 0.8, 0.0, 1.0,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	backlog_part = kp_shmem_add_database_part(sizeof(KpBacklog), backlog_reset);
}

static int64
read_signed(pg_atomic_uint64 *counter)
{
	return Max((int64) pg_atomic_read_u64(counter), 0);
}

void
kp_backlog_read(int64 *messages, int64 *bytes)
{
	KpBacklog  *backlog = my_backlog();

	*messages = read_signed(&backlog->messages);
	*bytes = read_signed(&backlog->bytes);
}

/*
 * At commit of a transaction that enqueued messages: no ERROR, and so
 * nothing to add to if the database lost its slot meanwhile.
 */
void
kp_backlog_add(int64 messages, int64 bytes)
{
	KpBacklog  *backlog = kp_shmem_database_part(backlog_part, true);

	if (backlog == NULL)
		return;
	pg_atomic_fetch_add_u64(&backlog->additions, 1);
	pg_atomic_fetch_add_u64(&backlog->messages, (uint64) messages);
	pg_atomic_fetch_add_u64(&backlog->bytes, (uint64) bytes);
}

/* The worker recorded a message as delivered or failed. */
void
kp_backlog_remove(int64 messages, int64 bytes)
{
	KpBacklog  *backlog = my_backlog();

	pg_atomic_fetch_sub_u64(&backlog->messages, (uint64) messages);
	pg_atomic_fetch_sub_u64(&backlog->bytes, (uint64) bytes);
}

void
kp_backlog_delivered_now(void)
{
	KpBacklog  *backlog = my_backlog();

	pg_atomic_write_u64(&backlog->last_delivery_at,
						(uint64) GetCurrentTimestamp());
}

/* The worker's exact count of the queue tables. */
void
kp_backlog_set(int64 messages, int64 bytes)
{
	KpBacklog  *backlog = my_backlog();

	pg_atomic_write_u64(&backlog->messages, (uint64) messages);
	pg_atomic_write_u64(&backlog->bytes, (uint64) bytes);
}

/* A mark to pass to kp_backlog_empty(): no addition since, if unchanged. */
uint64
kp_backlog_mark(void)
{
	KpBacklog  *backlog = my_backlog();

	return pg_atomic_read_u64(&backlog->additions);
}

/*
 * The worker found the queue empty with nothing in flight, after a scan
 * that began at mark: unless a transaction added messages since, which
 * the scan may not have seen, the backlog is zero.
 */
void
kp_backlog_empty(uint64 mark)
{
	KpBacklog  *backlog = my_backlog();

	if (pg_atomic_read_u64(&backlog->additions) == mark)
		kp_backlog_set(0, 0);
}

/*
 * ERROR if pending plus the transaction's total passes limit; WARNING if
 * the message that brought the total to it crossed the warning fraction.
 */
static void
check_limit(const char *what, int64 limit, int64 pending, int64 total,
			int64 added, const char *unit)
{
	double		warn_at = limit * kp_pending_warning_fraction;

	if (limit <= 0)
		return;
	if (pending + total > limit)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many Kafka messages are waiting for delivery"),
				 errdetail("%s allows " INT64_FORMAT " %s; " INT64_FORMAT " are pending, and this transaction would add " INT64_FORMAT ".",
						   what, limit, unit, pending, total),
				 errhint("Wait until Kafka is reachable and the backlog drains (see kafka.health), or raise %s.",
						 what)));
	if (pending + total > warn_at && pending + total - added <= warn_at)
		ereport(WARNING,
				(errmsg("Kafka messages waiting for delivery are near %s", what),
				 errdetail(INT64_FORMAT " %s are pending or being enqueued, of " INT64_FORMAT " allowed.",
						   pending + total, unit, limit)));
}

/*
 * Refuses what the current transaction enqueues, total_messages and
 * total_bytes with the added ones, past the limits; warns as added makes
 * the total cross kafka.pending_warning_fraction of one.
 */
void
kp_backlog_check(int64 total_messages, int64 total_bytes, int64 added_messages,
				 int64 added_bytes)
{
	int64		pending_messages;
	int64		pending_bytes;

	if (kp_max_pending_messages <= 0 && kp_max_pending_kb <= 0)
		return;
	kp_backlog_read(&pending_messages, &pending_bytes);
	check_limit("kafka.max_pending_messages", kp_max_pending_messages,
				pending_messages, total_messages, added_messages, "messages");
	check_limit("kafka.max_pending_bytes", (int64) kp_max_pending_kb * 1024,
				pending_bytes, total_bytes, added_bytes, "bytes");
}

/*
 * kafka.backlog() returns (pending, pending_bytes, last_delivery_at): the
 * shared-memory count, cheap to read at any rate.
 */
Datum
kafka_backlog(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	int64		messages;
	int64		bytes;
	TimestampTz last;

	kp_check_serving_database();
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "kafka.backlog must return a composite type");
	kp_backlog_read(&messages, &bytes);
	last = (TimestampTz) pg_atomic_read_u64(&my_backlog()->last_delivery_at);
	values[0] = Int64GetDatum(messages);
	values[1] = Int64GetDatum(bytes);
	values[2] = TimestampTzGetDatum(last);
	nulls[2] = last == 0;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc),
													  values, nulls)));
}
