/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared state between the backends that enqueue messages and the
 *	  worker that delivers them: who the worker is, so that a commit can set
 *	  its latch, and the lowest message id committed behind its scan.
 *
 *	  The locking rules are stated with KpSharedState in kafka_producer.h.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "kafka_producer.h"

static KpSharedState *kp_shared = NULL;
static LWLock *id_block_lock = NULL;

/*
 * Shared memory of the other modules, added with kp_shmem_add() from their
 * init functions: each owns its part, this file only sizes and places it.
 */
typedef struct KpShmemPart
{
	const char *name;
	Size		(*size) (void);
	void		(*attach) (void *memory, bool found);
} KpShmemPart;

#define KP_MAX_SHMEM_PARTS 8
static KpShmemPart parts[KP_MAX_SHMEM_PARTS];
static int	part_count = 0;

#define KP_ID_BLOCK_TRANCHE "kafka_producer id blocks"
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
kp_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(KpSharedState)));
	for (int i = 0; i < part_count; i++)
		RequestAddinShmemSpace(MAXALIGN(parts[i].size()));
	RequestNamedLWLockTranche(KP_ID_BLOCK_TRANCHE, 1);
}

static void
kp_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	kp_shared = ShmemInitStruct("kafka_producer", sizeof(KpSharedState),
								&found);
	if (!found)
	{
		SpinLockInit(&kp_shared->mutex);
		kp_shared->worker_procno = -1;
		kp_shared->worker_pid = 0;
		pg_atomic_init_u64(&kp_shared->rescan_from, PG_UINT64_MAX);
		pg_atomic_init_u64(&kp_shared->outcome_generation, 0);
		pg_atomic_init_u64(&kp_shared->topic_config_generation, 0);
		for (int i = 0; i < KP_NUM_COUNTERS; i++)
			pg_atomic_init_u64(&kp_shared->counters[i], 0);
		kp_shared->connecting = false;
		kp_shared->last_error[0] = '\0';
		kp_shared->last_error_at = 0;
		ConditionVariableInit(&kp_shared->outcomes_recorded);
	}
	for (int i = 0; i < part_count; i++)
	{
		void	   *memory = ShmemInitStruct(parts[i].name, parts[i].size(),
											 &found);

		parts[i].attach(memory, found);
	}
	id_block_lock = &GetNamedLWLockTranche(KP_ID_BLOCK_TRANCHE)->lock;
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Held while a backend takes a block of message ids one after another, so
 * that another backend's block does not interleave with it.
 */
LWLock *
kp_shmem_id_block_lock(void)
{
	return id_block_lock;
}

/*
 * Adds a part of shared memory, of size() bytes, that attach() is given at
 * startup, with found false if it is new and must be initialized.  Called
 * from a module's init, while the library is preloaded.
 */
void
kp_shmem_add(const char *name, Size (*size) (void),
			 void (*attach) (void *memory, bool found))
{
	if (part_count == KP_MAX_SHMEM_PARTS)
		elog(ERROR, "too many kafka_producer shared memory parts");
	parts[part_count].name = name;
	parts[part_count].size = size;
	parts[part_count].attach = attach;
	part_count++;
}

void
kp_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = kp_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = kp_shmem_startup;
}

void
kp_shmem_check_preloaded(void)
{
	if (kp_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kafka_producer must be loaded via shared_preload_libraries"),
				 errhint("Add kafka_producer to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * Asks the worker to scan again from first_id on, if it may have scanned
 * past it, and wakes it.  Called after a transaction that enqueued
 * messages from first_id on has committed (its rows are visible to new
 * snapshots), and by the worker for a row that changed while in flight.
 */
void
kp_shmem_request_rescan(int64 first_id)
{
	uint64		current = pg_atomic_read_u64(&kp_shared->rescan_from);

	while ((uint64) first_id < current &&
		   !pg_atomic_compare_exchange_u64(&kp_shared->rescan_from, &current,
										   (uint64) first_id))
		;
	kp_shmem_wake_worker();
}

void
kp_shmem_wake_worker(void)
{
	int			procno;

	SpinLockAcquire(&kp_shared->mutex);
	procno = kp_shared->worker_procno;
	SpinLockRelease(&kp_shared->mutex);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/* Called at commit of a change to kafka.topic_config. */
void
kp_shmem_topic_config_changed(void)
{
	pg_atomic_fetch_add_u64(&kp_shared->topic_config_generation, 1);
	kp_shmem_wake_worker();
}

uint64
kp_shmem_topic_config_generation(void)
{
	return pg_atomic_read_u64(&kp_shared->topic_config_generation);
}

/* the running worker's pid, 0 while none runs */
pid_t
kp_shmem_worker_pid(void)
{
	pid_t		pid;

	SpinLockAcquire(&kp_shared->mutex);
	pid = kp_shared->worker_pid;
	SpinLockRelease(&kp_shared->mutex);
	return pid;
}

static void
kp_shmem_worker_detach(int code, Datum arg)
{
	SpinLockAcquire(&kp_shared->mutex);
	kp_shared->worker_procno = -1;
	kp_shared->worker_pid = 0;
	SpinLockRelease(&kp_shared->mutex);
}

void
kp_shmem_worker_attach(void)
{
	SpinLockAcquire(&kp_shared->mutex);
	kp_shared->worker_procno = MyProc->pgprocno;
	kp_shared->worker_pid = MyProcPid;
	SpinLockRelease(&kp_shared->mutex);
	on_shmem_exit(kp_shmem_worker_detach, (Datum) 0);
}

/*
 * The worker takes the rescan position before it scans; commits that
 * happen after this call lower it again for the next scan.
 */
int64
kp_shmem_take_rescan_from(void)
{
	uint64		from = pg_atomic_exchange_u64(&kp_shared->rescan_from,
											  PG_UINT64_MAX);

	return from > (uint64) PG_INT64_MAX ? PG_INT64_MAX : (int64) from;
}

/* Called by the worker after committing a batch of outcomes. */
void
kp_shmem_announce_outcomes(void)
{
	pg_atomic_fetch_add_u64(&kp_shared->outcome_generation, 1);
	ConditionVariableBroadcast(&kp_shared->outcomes_recorded);
}

uint64
kp_shmem_outcome_generation(void)
{
	return pg_atomic_read_u64(&kp_shared->outcome_generation);
}

/*
 * Sleeps until the worker records outcomes after generation was read, or
 * until deadline.  Returns false when the deadline passed.
 */
bool
kp_shmem_wait_for_outcomes(uint64 generation, TimestampTz deadline)
{
	bool		recorded = true;

	ConditionVariablePrepareToSleep(&kp_shared->outcomes_recorded);
	while (pg_atomic_read_u64(&kp_shared->outcome_generation) == generation)
	{
		long		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
																deadline);

		if (remaining <= 0 ||
			ConditionVariableTimedSleep(&kp_shared->outcomes_recorded, remaining,
										PG_WAIT_EXTENSION))
		{
			recorded = pg_atomic_read_u64(&kp_shared->outcome_generation) != generation;
			break;
		}
	}
	ConditionVariableCancelSleep();
	return recorded;
}

/*
 * The worker calls this before connecting to kafka.database.  Returns
 * false if the previous worker's attempt never finished: the database was
 * missing and that worker died connecting.
 */
bool
kp_shmem_begin_connecting(void)
{
	bool		previous_failed;

	SpinLockAcquire(&kp_shared->mutex);
	previous_failed = kp_shared->connecting;
	kp_shared->connecting = true;
	SpinLockRelease(&kp_shared->mutex);
	return !previous_failed;
}

void
kp_shmem_end_connecting(void)
{
	SpinLockAcquire(&kp_shared->mutex);
	kp_shared->connecting = false;
	SpinLockRelease(&kp_shared->mutex);
}

void
kp_shmem_count(KpCounter counter, uint64 n)
{
	pg_atomic_fetch_add_u64(&kp_shared->counters[counter], n);
}

void
kp_shmem_set_gauge(KpCounter counter, uint64 value)
{
	pg_atomic_write_u64(&kp_shared->counters[counter], value);
}

void
kp_shmem_set_last_error(const char *error)
{
	SpinLockAcquire(&kp_shared->mutex);
	strlcpy(kp_shared->last_error, error, KP_LAST_ERROR_LEN);
	kp_shared->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&kp_shared->mutex);
}

/* Appends the worker's counters to json as the members of an object. */
void
kp_shmem_counters_json(StringInfo json)
{
	static const char *const names[KP_NUM_COUNTERS] = {
		"sent", "sent_bytes", "delivered", "failed", "transient_errors",
		"returned", "in_flight", "reconciled"
	};
	char		last_error[KP_LAST_ERROR_LEN];
	TimestampTz last_error_at;
	pid_t		pid;

	SpinLockAcquire(&kp_shared->mutex);
	strlcpy(last_error, kp_shared->last_error, KP_LAST_ERROR_LEN);
	last_error_at = kp_shared->last_error_at;
	pid = kp_shared->worker_pid;
	SpinLockRelease(&kp_shared->mutex);

	appendStringInfo(json, "\"worker_pid\": %d", (int) pid);
	for (int i = 0; i < KP_NUM_COUNTERS; i++)
		appendStringInfo(json, ", \"%s\": " UINT64_FORMAT, names[i],
						 pg_atomic_read_u64(&kp_shared->counters[i]));
	appendStringInfoString(json, ", \"last_error\": ");
	if (last_error_at == 0)
		appendStringInfoString(json, "null, \"last_error_at\": null");
	else
	{
		escape_json(json, last_error);
		appendStringInfo(json, ", \"last_error_at\": \"%s\"",
						 timestamptz_to_str(last_error_at));
	}
}
