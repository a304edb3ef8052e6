/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared state between the backends that enqueue messages and the
 *	  workers that deliver them, a slot per served database: who its worker
 *	  is, so that a commit can set its latch, the lowest message id
 *	  committed behind its scan, its counters, and the per-database parts of
 *	  the other modules.  The launcher hands slots to databases and starts a
 *	  worker for each.
 *
 *	  The locking rules are stated with KpSharedState in kafka_producer.h;
 *	  directory_lock protects which database a slot belongs to and the
 *	  launcher's bookkeeping in it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "catalog/pg_database.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "kafka_producer.h"

/*
 * A database's slot.  database is InvalidOid while the slot is free; it is
 * written under directory_lock, and read without it only by a backend
 * checking that its own database still holds the slot it found.
 */
typedef struct KpDatabaseSlot
{
	Oid			database;
	uint32		service_requests;	/* grows when a session asks for a
									 * worker: CREATE EXTENSION, a commit
									 * while none runs */
	uint32		requests_seen;	/* service_requests as the worker started */
	bool		no_extension;	/* the worker found no extension, and left */
	bool		dropping;		/* DROP DATABASE asked the worker to leave */
	KpSharedState state;
	/* the parts of the other modules follow, at their offsets */
} KpDatabaseSlot;

typedef struct KpDirectory
{
	slock_t		directory_lock;
	int			launcher_procno;	/* -1 while no launcher runs */
	char		slots[FLEXIBLE_ARRAY_MEMBER];	/* kp_max_databases slots */
} KpDirectory;

static KpDirectory *directory = NULL;
static LWLockPadded *id_block_locks = NULL;

/* this backend's database's slot, once found: its index, and its state */
static int	my_index = -1;
static KpDatabaseSlot *my_slot = NULL;
static KpSharedState *kp_shared = NULL;

/*
 * Shared memory of the other modules, added with kp_shmem_add() (once for
 * the server) or kp_shmem_add_database_part() (once in each database's
 * slot) from their init functions: each owns its part, this file only
 * sizes and places it.
 */
typedef struct KpShmemPart
{
	const char *name;
	Size		(*size) (void);
	void		(*attach) (void *memory, bool found);
} KpShmemPart;

typedef struct KpDatabasePart
{
	Size		offset;			/* from the start of the slot */
	void		(*reset) (void *memory);
} KpDatabasePart;

#define KP_MAX_SHMEM_PARTS 8
static KpShmemPart parts[KP_MAX_SHMEM_PARTS];
static int	part_count = 0;
static KpDatabasePart database_parts[KP_MAX_SHMEM_PARTS];
static int	database_part_count = 0;
static Size slot_size = MAXALIGN(sizeof(KpDatabaseSlot));

#define KP_ID_BLOCK_TRANCHE "kafka_producer id blocks"
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static KpDatabaseSlot *
slot_at(int index)
{
	return (KpDatabaseSlot *) (directory->slots + index * slot_size);
}

static Size
directory_size(void)
{
	return add_size(offsetof(KpDirectory, slots),
					mul_size(kp_max_databases, slot_size));
}

static void
kp_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(directory_size()));
	for (int i = 0; i < part_count; i++)
		RequestAddinShmemSpace(MAXALIGN(parts[i].size()));
	RequestNamedLWLockTranche(KP_ID_BLOCK_TRANCHE, kp_max_databases);
}

/* Makes a slot new for a database: zero counters, empty parts. */
static void
reset_slot(KpDatabaseSlot *slot, Oid database)
{
	KpSharedState *state = &slot->state;

	slot->database = database;
	slot->service_requests = 0;
	slot->requests_seen = 0;
	slot->no_extension = false;
	slot->dropping = false;
	state->worker_procno = -1;
	state->worker_pid = 0;
	pg_atomic_write_u64(&state->rescan_from, PG_UINT64_MAX);
	pg_atomic_write_u32(&state->round_scheduled, 0);
	for (int i = 0; i < KP_NUM_COUNTERS; i++)
		pg_atomic_write_u64(&state->counters[i], 0);
	state->last_error[0] = '\0';
	state->last_error_at = 0;
	for (int i = 0; i < database_part_count; i++)
		database_parts[i].reset((char *) slot + database_parts[i].offset);
}

static void
init_slot(KpDatabaseSlot *slot)
{
	KpSharedState *state = &slot->state;

	SpinLockInit(&state->mutex);
	pg_atomic_init_u64(&state->rescan_from, PG_UINT64_MAX);
	pg_atomic_init_u32(&state->round_scheduled, 0);
	pg_atomic_init_u64(&state->outcome_generation, 0);
	pg_atomic_init_u32(&state->outcome_waiters, 0);
	for (int i = 0; i < KP_NUM_GENERATIONS; i++)
		pg_atomic_init_u64(&state->generations[i], 0);
	for (int i = 0; i < KP_NUM_COUNTERS; i++)
		pg_atomic_init_u64(&state->counters[i], 0);
	ConditionVariableInit(&state->outcomes_recorded);
	reset_slot(slot, InvalidOid);
}

static void
kp_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	directory = ShmemInitStruct("kafka_producer", directory_size(), &found);
	if (!found)
	{
		SpinLockInit(&directory->directory_lock);
		directory->launcher_procno = -1;
		for (int i = 0; i < kp_max_databases; i++)
			init_slot(slot_at(i));
	}
	for (int i = 0; i < part_count; i++)
	{
		void	   *memory = ShmemInitStruct(parts[i].name, parts[i].size(),
											 &found);

		parts[i].attach(memory, found);
	}
	id_block_locks = GetNamedLWLockTranche(KP_ID_BLOCK_TRANCHE);
	LWLockRelease(AddinShmemInitLock);
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

/*
 * Adds a part of size bytes to every database's slot, which reset() makes
 * new whenever the slot is given to a database.  Returns the part's number
 * for kp_shmem_database_part().
 */
int
kp_shmem_add_database_part(Size size, void (*reset) (void *memory))
{
	if (database_part_count == KP_MAX_SHMEM_PARTS)
		elog(ERROR, "too many kafka_producer shared memory parts");
	database_parts[database_part_count].offset = slot_size;
	database_parts[database_part_count].reset = reset;
	slot_size = add_size(slot_size, MAXALIGN(size));
	return database_part_count++;
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
	if (directory == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kafka_producer must be loaded via shared_preload_libraries"),
				 errhint("Add kafka_producer to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* ---------------------------------------------------------------------
 * The directory of database slots
 * ---------------------------------------------------------------------
 */

/* The slot of database, or -1; the caller holds directory_lock. */
static int
find_slot_locked(Oid database)
{
	for (int i = 0; i < kp_max_databases; i++)
		if (slot_at(i)->database == database)
			return i;
	return -1;
}

/*
 * The slot of database, given to it if it has none yet; -1 when every
 * slot belongs to another database.
 */
int
kp_shmem_claim_slot(Oid database)
{
	int			index;

	SpinLockAcquire(&directory->directory_lock);
	index = find_slot_locked(database);
	if (index < 0)
	{
		index = find_slot_locked(InvalidOid);
		if (index >= 0)
			reset_slot(slot_at(index), database);
	}
	SpinLockRelease(&directory->directory_lock);
	return index;
}

/* The launcher lets a slot go: its database is gone or not served. */
void
kp_shmem_free_slot(int index)
{
	SpinLockAcquire(&directory->directory_lock);
	reset_slot(slot_at(index), InvalidOid);
	SpinLockRelease(&directory->directory_lock);
}

/* What the launcher needs to know of slot index. */
void
kp_shmem_slot_info(int index, KpSlotInfo *info)
{
	KpDatabaseSlot *slot = slot_at(index);

	SpinLockAcquire(&directory->directory_lock);
	info->database = slot->database;
	info->no_extension = slot->no_extension;
	info->requested = slot->service_requests != slot->requests_seen;
	info->dropping = slot->dropping;
	SpinLockRelease(&directory->directory_lock);
	SpinLockAcquire(&slot->state.mutex);
	info->worker_pid = slot->state.worker_pid;
	SpinLockRelease(&slot->state.mutex);
}

/* The launcher starts the worker of a slot DROP DATABASE let go of. */
void
kp_shmem_clear_dropping(int index)
{
	SpinLockAcquire(&directory->directory_lock);
	slot_at(index)->dropping = false;
	SpinLockRelease(&directory->directory_lock);
}

static void
kp_shmem_launcher_detach(int code, Datum arg)
{
	SpinLockAcquire(&directory->directory_lock);
	directory->launcher_procno = -1;
	SpinLockRelease(&directory->directory_lock);
}

void
kp_shmem_launcher_attach(void)
{
	SpinLockAcquire(&directory->directory_lock);
	directory->launcher_procno = MyProc->pgprocno;
	SpinLockRelease(&directory->directory_lock);
	on_shmem_exit(kp_shmem_launcher_detach, (Datum) 0);
}

static void
wake_launcher(void)
{
	int			procno;

	SpinLockAcquire(&directory->directory_lock);
	procno = directory->launcher_procno;
	SpinLockRelease(&directory->directory_lock);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/*
 * Finds this backend's database's slot; with claim, gives it one if it has
 * none.  Returns false when it has none.  A slot found earlier is checked,
 * not trusted: the launcher hands a slot to another database once this
 * one's worker leaves for good.
 */
static bool
find_my_slot(bool claim)
{
	int			index;

	if (my_slot != NULL && my_slot->database == MyDatabaseId)
		return true;
	my_index = -1;
	my_slot = NULL;
	kp_shared = NULL;
	if (claim)
		index = kp_shmem_claim_slot(MyDatabaseId);
	else
	{
		SpinLockAcquire(&directory->directory_lock);
		index = find_slot_locked(MyDatabaseId);
		SpinLockRelease(&directory->directory_lock);
	}
	if (index < 0)
		return false;
	my_index = index;
	my_slot = slot_at(index);
	kp_shared = &my_slot->state;
	return true;
}

/*
 * Makes sure this database has a slot, for a session about to use it:
 * ERROR if every slot belongs to another database.
 */
void
kp_shmem_attach_database(void)
{
	if (!find_my_slot(true))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("kafka_producer cannot serve another database"),
				 errdetail("It serves %d databases already, as many as kafka.max_databases allows.",
						   kp_max_databases),
				 errhint("Raise kafka.max_databases and restart the server, or drop the extension where it is not used.")));
}

/*
 * Asks the launcher for this database's worker, after CREATE EXTENSION or
 * a commit while none runs.  Never raises an ERROR: called at commit.
 */
void
kp_shmem_request_worker(void)
{
	if (!find_my_slot(true))
		return;
	SpinLockAcquire(&directory->directory_lock);
	if (my_slot->database == MyDatabaseId)
		my_slot->service_requests++;
	SpinLockRelease(&directory->directory_lock);
	wake_launcher();
}

/*
 * DROP DATABASE holds database: its worker must leave at once, for DROP
 * waits only 5 s for the sessions using it, and the messages go with the
 * database anyway.  The launcher starts it again if the DROP fails.
 */
void
kp_shmem_database_dropping(Oid database)
{
	int			index;
	pid_t		pid = 0;

	SpinLockAcquire(&directory->directory_lock);
	index = find_slot_locked(database);
	if (index >= 0)
	{
		KpDatabaseSlot *slot = slot_at(index);

		slot->dropping = true;
		SpinLockAcquire(&slot->state.mutex);
		pid = slot->state.worker_pid;
		SpinLockRelease(&slot->state.mutex);
	}
	SpinLockRelease(&directory->directory_lock);
	if (pid != 0)
		kill(pid, SIGTERM);
}

/*
 * Whether DROP DATABASE holds database: a lock probe, as a session lock,
 * for a transaction need not be open.
 */
bool
kp_shmem_database_held_by_drop(Oid database)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, database, 0);
	if (LockAcquire(&tag, AccessShareLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, AccessShareLock, true);
	return false;
}

/*
 * The address of part number part in this database's slot; NULL when the
 * database has none and missing_ok, which a commit callback must pass.
 */
void *
kp_shmem_database_part(int part, bool missing_ok)
{
	if (missing_ok ? !find_my_slot(false) : (kp_shmem_attach_database(), false))
		return NULL;
	return (char *) my_slot + database_parts[part].offset;
}

/*
 * Held while a backend takes a block of message ids one after another, so
 * that another backend's block does not interleave with it.
 */
LWLock *
kp_shmem_id_block_lock(void)
{
	kp_shmem_attach_database();
	return &id_block_locks[my_index].lock;
}

/* ---------------------------------------------------------------------
 * The state of this backend's database
 * ---------------------------------------------------------------------
 */

/* this database's state, for a session using it: see kp_shmem_attach_database */
static KpSharedState *
state(void)
{
	kp_shmem_attach_database();
	return kp_shared;
}

/*
 * Asks the worker to scan again from first_id on, if it may have scanned
 * past it, and wakes it.  Called after a transaction that enqueued
 * messages from first_id on has committed (its rows are visible to new
 * snapshots), and by the worker for a row that changed while in flight.
 * Never raises an ERROR: called at commit.
 */
void
kp_shmem_request_rescan(int64 first_id)
{
	uint64		current;

	if (!find_my_slot(true))
		return;
	current = pg_atomic_read_u64(&kp_shared->rescan_from);
	while ((uint64) first_id < current &&
		   !pg_atomic_compare_exchange_u64(&kp_shared->rescan_from, &current,
										   (uint64) first_id))
		;
	/* pairs with the barrier of kp_shmem_round_scheduled(false) */
	pg_memory_barrier();
	if (pg_atomic_read_u32(&kp_shared->round_scheduled) == 0)
		kp_shmem_wake_worker();
}

/* Sets the worker's latch; with no worker running, asks for one. */
void
kp_shmem_wake_worker(void)
{
	int			procno;

	if (!find_my_slot(true))
		return;
	SpinLockAcquire(&kp_shared->mutex);
	procno = kp_shared->worker_procno;
	SpinLockRelease(&kp_shared->mutex);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
	else
		kp_shmem_request_worker();
}

/*
 * Called at commit of a change the worker must act on; never raises an
 * ERROR.
 */
void
kp_shmem_generation_advance(KpGeneration generation)
{
	if (!find_my_slot(false))
		return;
	pg_atomic_fetch_add_u64(&kp_shared->generations[generation], 1);
	kp_shmem_wake_worker();
}

/* the generations the current transaction advances when it commits, a bit each */
static uint32 advance_at_commit = 0;
static bool generation_callback_registered = false;

static void
generation_xact_callback(XactEvent event, void *arg)
{
	/* what a transaction that advances each generation did */
	static const char *const changes[KP_NUM_GENERATIONS] = {
		[KP_GENERATION_TOPIC_CONFIG] = "changed kafka.topic_config",
		[KP_GENERATION_SNAPSHOT] = "started a snapshot of a published table",
	};

	if (advance_at_commit == 0)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			for (int i = 0; i < KP_NUM_GENERATIONS; i++)
				if (advance_at_commit & (1 << i))
					kp_shmem_generation_advance((KpGeneration) i);
			advance_at_commit = 0;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			advance_at_commit = 0;
			break;
		case XACT_EVENT_PRE_PREPARE:
			/* COMMIT PREPARED runs no callback: the worker would not hear of it */
			for (int i = 0; i < KP_NUM_GENERATIONS; i++)
				if (advance_at_commit & (1 << i))
					ereport(ERROR,
							(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							 errmsg("cannot prepare a transaction that %s", changes[i])));
			break;
		default:
			break;
	}
}

/* Advances generation once the current transaction commits. */
void
kp_shmem_generation_advance_at_commit(KpGeneration generation)
{
	if (!generation_callback_registered)
	{
		RegisterXactCallback(generation_xact_callback, NULL);
		generation_callback_registered = true;
	}
	advance_at_commit |= 1 << generation;
}

uint64
kp_shmem_generation(KpGeneration generation)
{
	return pg_atomic_read_u64(&state()->generations[generation]);
}

/* the running worker's pid, 0 while none runs */
pid_t
kp_shmem_worker_pid(void)
{
	KpSharedState *shared = state();
	pid_t		pid;

	SpinLockAcquire(&shared->mutex);
	pid = shared->worker_pid;
	SpinLockRelease(&shared->mutex);
	return pid;
}

static void
kp_shmem_worker_detach(int code, Datum arg)
{
	pg_atomic_write_u32(&kp_shared->round_scheduled, 0);
	SpinLockAcquire(&kp_shared->mutex);
	kp_shared->worker_procno = -1;
	kp_shared->worker_pid = 0;
	SpinLockRelease(&kp_shared->mutex);
}

/*
 * The worker of slot index, connected to its database, takes the slot.
 * The requests for a worker made so far are answered by this one.
 */
void
kp_shmem_worker_attach(int index)
{
	KpDatabaseSlot *slot = slot_at(index);
	pid_t		other;

	SpinLockAcquire(&directory->directory_lock);
	if (slot->database == MyDatabaseId)
	{
		slot->requests_seen = slot->service_requests;
		slot->no_extension = false;
	}
	SpinLockRelease(&directory->directory_lock);
	if (!find_my_slot(false) || my_index != index)
		elog(ERROR, "kafka_producer database slot %d does not belong to this database",
			 index);
	SpinLockAcquire(&kp_shared->mutex);
	other = kp_shared->worker_pid;
	if (other == 0)
	{
		kp_shared->worker_procno = MyProc->pgprocno;
		kp_shared->worker_pid = MyProcPid;
	}
	SpinLockRelease(&kp_shared->mutex);
	/* a launcher that restarted may not know of the worker it started */
	if (other != 0)
		ereport(ERROR,
				(errmsg("kafka_producer worker %d serves this database already", (int) other)));
	on_shmem_exit(kp_shmem_worker_detach, (Datum) 0);
}

/*
 * The worker leaves a database without the extension: the launcher lets
 * its slot go, unless a session asked for a worker since it started.
 */
void
kp_shmem_worker_found_no_extension(void)
{
	SpinLockAcquire(&directory->directory_lock);
	my_slot->no_extension = true;
	SpinLockRelease(&directory->directory_lock);
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

/*
 * The worker says whether it sleeps until a round of sending that is due
 * by time.  Sessions committing small transactions woke it at each commit
 * (1,925 times a second at 2,000 transactions a second) for rounds it would
 * not begin before that time.  The exchange is a full barrier: a session
 * that lowered rescan_from and then found the flag set (it reads it after
 * a barrier too) did so before the worker cleared it, so the worker's
 * next kp_shmem_take_rescan_from sees that session's position.
 */
void
kp_shmem_round_scheduled(bool scheduled)
{
	pg_atomic_exchange_u32(&kp_shared->round_scheduled, scheduled ? 1 : 0);
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
	return pg_atomic_read_u64(&state()->outcome_generation);
}

static void
stop_waiting_for_outcomes(int code, Datum arg)
{
	KpSharedState *shared = (KpSharedState *) DatumGetPointer(arg);

	pg_atomic_fetch_sub_u32(&shared->outcome_waiters, 1);
}

/*
 * Sleeps until the worker records outcomes after generation was read, or
 * until deadline.  Returns false when the deadline passed.  While it
 * sleeps, the worker writes outcomes down at its quickest pace.
 */
bool
kp_shmem_wait_for_outcomes(uint64 generation, TimestampTz deadline)
{
	KpSharedState *shared = state();
	bool		recorded = true;

	/* also on FATAL: a count left behind would keep the worker hurrying */
	PG_ENSURE_ERROR_CLEANUP(stop_waiting_for_outcomes, PointerGetDatum(shared));
	{
		/* the first waiter wakes the worker, which may sleep until later */
		if (pg_atomic_fetch_add_u32(&shared->outcome_waiters, 1) == 0)
			kp_shmem_wake_worker();
		ConditionVariablePrepareToSleep(&shared->outcomes_recorded);
		while (pg_atomic_read_u64(&shared->outcome_generation) == generation)
		{
			long		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
																	deadline);

			if (remaining <= 0 ||
				ConditionVariableTimedSleep(&shared->outcomes_recorded, remaining,
											PG_WAIT_EXTENSION))
			{
				recorded = pg_atomic_read_u64(&shared->outcome_generation) != generation;
				break;
			}
		}
		ConditionVariableCancelSleep();
	}
	PG_END_ENSURE_ERROR_CLEANUP(stop_waiting_for_outcomes, PointerGetDatum(shared));
	stop_waiting_for_outcomes(0, PointerGetDatum(shared));
	return recorded;
}

/* Worker side: whether a session sleeps in kp_shmem_wait_for_outcomes(). */
bool
kp_shmem_outcomes_awaited(void)
{
	return pg_atomic_read_u32(&kp_shared->outcome_waiters) > 0;
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
	KpSharedState *shared = state();
	char		last_error[KP_LAST_ERROR_LEN];
	TimestampTz last_error_at;
	pid_t		pid;

	SpinLockAcquire(&shared->mutex);
	strlcpy(last_error, shared->last_error, KP_LAST_ERROR_LEN);
	last_error_at = shared->last_error_at;
	pid = shared->worker_pid;
	SpinLockRelease(&shared->mutex);

	appendStringInfo(json, "\"worker_pid\": %d", (int) pid);
	for (int i = 0; i < KP_NUM_COUNTERS; i++)
		appendStringInfo(json, ", \"%s\": " UINT64_FORMAT, names[i],
						 pg_atomic_read_u64(&shared->counters[i]));
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
