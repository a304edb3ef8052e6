/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: one background worker, connected to no database, that
 *	  starts a delivery worker for each database served (kafka.databases)
 *	  and restarts or stops it as databases and the extension come and go.
 *
 *	  A process connects to one database for its life, so each database
 *	  has a worker of its own, in a slot of shared memory (shmem.c) that
 *	  its sessions find by database.  The launcher starts a worker for every
 *	  database served that it has not yet seen without the extension; a
 *	  worker that finds none says so in its slot and leaves, and the
 *	  launcher then lets the slot go until a session asks for a worker
 *	  again (CREATE EXTENSION, or a commit while none runs).  It looks at
 *	  pg_database every KP_LAUNCHER_NAPTIME_MS, and at once when a session
 *	  asks or a worker starts or stops (bgw_notify_pid).
 *
 *	  DROP DATABASE waits only briefly for the sessions connected to the
 *	  database, the worker among them: its drop hook asks the worker to
 *	  leave at once, and the launcher starts no worker there while the DROP
 *	  holds the database.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "kafka_producer.h"

PGDLLEXPORT void kafka_producer_launcher_main(Datum main_arg);

#define KP_LAUNCHER_NAPTIME_MS 5000
/* a worker that stopped is started again this long after it last started */
#define KP_RESTART_DELAY_MS 5000
/* how often a DROP DATABASE in progress is looked at */
#define KP_DROP_POLL_MS 200

typedef struct KpDatabase
{
	Oid			oid;
	char	   *name;
	bool		served;
} KpDatabase;

/* the launcher's own view of each slot's worker */
typedef struct KpWorkerEntry
{
	BackgroundWorkerHandle *handle; /* NULL: not started by this launcher */
	TimestampTz started_at;
	bool		stopping;		/* asked to stop: no longer served */
} KpWorkerEntry;

static KpWorkerEntry *entries = NULL;
static List *without_extension = NIL;	/* Oids, in TopMemoryContext */
static bool no_process_logged = false;
static List *missing_logged = NIL;	/* names, in TopMemoryContext */

static object_access_hook_type prev_object_access_hook = NULL;

/*
 * DROP DATABASE holds the database and is about to wait for its sessions:
 * its worker must leave now.
 */
static void
kp_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				 int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == DatabaseRelationId)
		kp_shmem_database_dropping(objectId);
}

void
kp_launcher_init(void)
{
	BackgroundWorker worker;

	prev_object_access_hook = object_access_hook;
	object_access_hook = kp_object_access;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "kafka_producer");
	snprintf(worker.bgw_function_name, BGW_MAXLEN,
			 "kafka_producer_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "kafka_producer launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "kafka_producer launcher");
	RegisterBackgroundWorker(&worker);
}

/*
 * The databases, with a plain scan of pg_database: connected to none, the
 * launcher can read the shared catalogs' heaps but not their indexes.
 */
static List *
list_databases(void)
{
	List	   *databases = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;
	MemoryContext pass_context = CurrentMemoryContext;

	StartTransactionCommand();
	/* the list outlives the transaction */
	MemoryContextSwitchTo(pass_context);
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database form = (Form_pg_database) GETSTRUCT(tuple);
		KpDatabase *database = palloc(sizeof(KpDatabase));

		database->oid = form->oid;
		database->name = pstrdup(NameStr(form->datname));
		database->served = form->datallowconn &&
			!database_is_invalid_form(form) &&
			kp_database_served(database->name, form->datistemplate);
		databases = lappend(databases, database);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(pass_context);
	return databases;
}

static KpDatabase *
find_database(List *databases, Oid oid)
{
	ListCell   *lc;

	foreach(lc, databases)
	{
		KpDatabase *database = lfirst(lc);

		if (database->oid == oid)
			return database;
	}
	return NULL;
}

/* Starts the worker of slot index; false if no process was free. */
static bool
start_worker(int index, KpDatabase *database)
{
	BackgroundWorker worker;
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_main_arg = Int32GetDatum(index);
	worker.bgw_notify_pid = MyProcPid;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "kafka_producer");
	snprintf(worker.bgw_function_name, BGW_MAXLEN,
			 "kafka_producer_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN,
			 "kafka_producer worker for database %s", database->name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "kafka_producer");

	entries[index].started_at = GetCurrentTimestamp();
	entries[index].stopping = false;
	if (!RegisterDynamicBackgroundWorker(&worker, &entries[index].handle))
	{
		entries[index].handle = NULL;
		if (!no_process_logged)
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("kafka_producer could not start a worker for database \"%s\"",
							database->name),
					 errdetail("All %d background worker processes are in use.",
							   max_worker_processes),
					 errhint("Raise max_worker_processes: kafka_producer needs one for its launcher and one for each database it serves.")));
		no_process_logged = true;
		MemoryContextSwitchTo(old);
		return false;
	}
	no_process_logged = false;
	MemoryContextSwitchTo(old);
	return true;
}

/* Whether slot index has a worker, whether or not this launcher started it. */
static bool
worker_running(int index, KpSlotInfo *info)
{
	pid_t		pid;

	if (entries[index].handle != NULL &&
		GetBackgroundWorkerPid(entries[index].handle, &pid) != BGWH_STOPPED)
		return true;
	if (entries[index].handle != NULL)
	{
		pfree(entries[index].handle);
		entries[index].handle = NULL;
	}
	return info->worker_pid != 0;
}

static void
stop_worker(int index, KpSlotInfo *info, KpDatabase *database)
{
	if (entries[index].stopping)
		return;
	entries[index].stopping = true;
	ereport(LOG,
			(errmsg("kafka_producer stops serving database \"%s\", which kafka.databases no longer names",
					database->name)));
	if (entries[index].handle != NULL)
		TerminateBackgroundWorker(entries[index].handle);
	else if (info->worker_pid != 0)
		kill(info->worker_pid, SIGTERM);
}

static void
free_slot(int index)
{
	entries[index].started_at = 0;
	entries[index].stopping = false;
	kp_shmem_free_slot(index);
}

/*
 * Looks after slot index, whose worker is not running; returns how long
 * until it should be looked at again.
 */
static long
tend_stopped_slot(int index, KpSlotInfo *info, KpDatabase *database)
{
	TimestampTz restart_at;

	if (database == NULL || !database->served)
	{
		free_slot(index);
		return KP_LAUNCHER_NAPTIME_MS;
	}
	if (info->dropping)
	{
		if (kp_shmem_database_held_by_drop(database->oid))
			return KP_DROP_POLL_MS;
		kp_shmem_clear_dropping(index);
	}
	if (info->no_extension && !info->requested)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		without_extension = lappend_oid(without_extension, database->oid);
		MemoryContextSwitchTo(old);
		free_slot(index);
		return KP_LAUNCHER_NAPTIME_MS;
	}
	/* the delay guards against a worker failing again and again */
	restart_at = TimestampTzPlusMilliseconds(entries[index].started_at,
											 KP_RESTART_DELAY_MS);
	if (!info->no_extension && GetCurrentTimestamp() < restart_at)
		return TimestampDifferenceMilliseconds(GetCurrentTimestamp(), restart_at) + 1;
	start_worker(index, database);
	return KP_RESTART_DELAY_MS;
}

/* Logs once each database kafka.databases names that does not exist. */
static void
log_missing_databases(List *databases)
{
	List	   *names = kp_databases_listed();
	const char *setting_name;
	ListCell   *lc;

	(void) kp_databases_setting(&setting_name);

	foreach(lc, names)
	{
		char	   *name = lfirst(lc);
		bool		exists = false;
		ListCell   *db;
		MemoryContext old;

		foreach(db, databases)
			exists |= strcmp(((KpDatabase *) lfirst(db))->name, name) == 0;
		if (exists || list_member(missing_logged, makeString(name)))
			continue;
		ereport(LOG,
				(errmsg("kafka_producer is waiting for database \"%s\" to be created",
						name),
				 errdetail("%s names it.", setting_name)));
		old = MemoryContextSwitchTo(TopMemoryContext);
		missing_logged = lappend(missing_logged, makeString(pstrdup(name)));
		MemoryContextSwitchTo(old);
	}
}

/*
 * Starts a worker for each database served that has no slot yet, to find
 * whether it has the extension; one that finds none gives its slot back.
 */
static void
start_new_databases(List *databases, List *with_slot)
{
	ListCell   *lc;

	foreach(lc, databases)
	{
		KpDatabase *database = lfirst(lc);
		int			index;

		if (!database->served || list_member_oid(with_slot, database->oid) ||
			list_member_oid(without_extension, database->oid))
			continue;
		index = kp_shmem_claim_slot(database->oid);
		/* none free: a session's CREATE EXTENSION or kafka_send() says so */
		if (index < 0)
			return;
		if (!start_worker(index, database))
		{
			free_slot(index);
			return;
		}
	}
}

/* A database dropped may come back with its Oid, and the extension. */
static void
forget_dropped(List *databases)
{
	ListCell   *lc;

	foreach(lc, without_extension)
	{
		if (find_database(databases, lfirst_oid(lc)) == NULL)
			without_extension = foreach_delete_current(without_extension, lc);
	}
}

/*
 * One look at every database and slot.  Returns how long until the next
 * look is needed.
 */
static long
launcher_pass(void)
{
	List	   *databases = list_databases();
	List	   *with_slot = NIL;
	long		timeout = KP_LAUNCHER_NAPTIME_MS;

	for (int index = 0; index < kp_max_databases; index++)
	{
		KpSlotInfo	info;
		KpDatabase *database;

		kp_shmem_slot_info(index, &info);
		if (!OidIsValid(info.database))
			continue;
		database = find_database(databases, info.database);
		with_slot = lappend_oid(with_slot, info.database);
		if (worker_running(index, &info))
		{
			if (database != NULL && !database->served)
				stop_worker(index, &info, database);
			continue;
		}
		timeout = Min(timeout, tend_stopped_slot(index, &info, database));
	}

	forget_dropped(databases);
	start_new_databases(databases, with_slot);
	log_missing_databases(databases);
	return timeout;
}

void
kafka_producer_launcher_main(Datum main_arg)
{
	MemoryContext pass_context;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("kafka_producer launcher");
	kp_shmem_launcher_attach();
	entries = MemoryContextAllocZero(TopMemoryContext,
									 sizeof(KpWorkerEntry) * kp_max_databases);
	pass_context = AllocSetContextCreate(TopMemoryContext,
										 "kafka_producer launcher pass",
										 ALLOCSET_DEFAULT_SIZES);

	while (!ShutdownRequestPending)
	{
		long		timeout;

		MemoryContextSwitchTo(pass_context);
		MemoryContextReset(pass_context);
		timeout = launcher_pass();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
	proc_exit(0);
}
