/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The background worker that delivers a database's committed messages:
 *	  it scans kafka.outbox and kafka.outbox_batch in id order, hands
 *	  messages to its librdkafka producer, and records each delivery report
 *	  in batches.  The launcher starts one for each database served.
 *
 *	  It sleeps on its latch and on librdkafka's event pipe: a commit that
 *	  enqueued messages sets the latch, a delivery report writes to the
 *	  pipe.  No transaction stays open while it waits.
 *
 *	  Order: the scan position only moves forward, except that a commit
 *	  behind it lowers it (kp_shmem_request_rescan), and that after any
 *	  message must be sent again the worker first takes back everything
 *	  librdkafka has not sent, waits for what is in flight, then rescans
 *	  from the start, so a key's messages reach Kafka in id order.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <malloc.h>

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/sinval.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "delivery.h"

PGDLLEXPORT void kafka_producer_worker_main(Datum main_arg);

/* bound on waiting for in-flight messages on reload */
#define KP_RELOAD_FLUSH_MS 10000
#define KP_IDLE_WAIT_MS 1000
/* how often a registration in flight is looked at */
#define KP_REGISTRY_POLL_MS 10
#define KP_ERROR_BACKOFF_MS 1000
#define KP_PRUNE_INTERVAL_MS 10000

/*
 * Messages handed to librdkafka but not yet recorded.  Recording is the
 * slower half of the pipeline, so a few batches keep librdkafka busy; more
 * would only widen what a crash resends (acknowledged, not yet recorded).
 * A batch never takes the count past it but to finish a kafka.outbox_batch
 * row.
 */
#define KP_MAX_IN_FLIGHT 30000

/* the least time between two VACUUMs of the worker's (kp_outbox_vacuum) */
#define KP_VACUUM_INTERVAL_MS 1000
/* how long the queue must be empty for the worker's VACUUM to shrink it */
#define KP_QUEUE_IDLE_MS 10000

/* the most that rounds of sending, and of recording awaited, are spaced by */
#define KP_MAX_SPACING_MS 5
/* how far apart rounds of recording are while no session waits for them */
#define KP_RECORD_SPACING_MS 20
/* the longest the worker trusts its last reading of the extension's version */
#define KP_EXTENSION_RECHECK_MS 1000

static KpReportBuffer reports;
static KpReportBuffer held;		/* deliveries whose batch row is not done */
static int64 scan_after = 0;	/* next scan reads ids above this */
static bool rewinding = false;	/* resend pending: drain, then rescan */
static bool queue_full = false;
static bool held_back = false;	/* the last scan stopped at a message that
								 * must wait (schema registry) */
static TimestampTz last_prune = 0;
static char *producer_fingerprint = NULL;
static WaitEventSet *wait_set = NULL;
static char *database_name = NULL;	/* in TopMemoryContext */
static char *step_error = NULL;	/* the last failed step's message */
static int	step_errcode = 0;	/* and its SQLSTATE */
static uint64 snapshot_generation = 0;
static bool snapshot_running = true;	/* a snapshot may need a chunk read */

static void
begin_transaction(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
end_transaction(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Runs one transactional step, step(arg), which leaves its results in
 * *arg; an error is logged and the transaction rolled back, and the worker
 * carries on.  Returns false on error.
 */
static bool
run_guarded(void (*step) (void *arg), void *arg)
{
	MemoryContext context = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		step(arg);
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(context);
		EmitErrorReport();
		error = CopyErrorData();
		if (step_error != NULL)
			pfree(step_error);
		step_error = MemoryContextStrdup(TopMemoryContext, error->message);
		step_errcode = error->sqlerrcode;
		FlushErrorState();
		AbortCurrentTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

static void
wait_for_events(long timeout_ms)
{
	WaitEvent	event;

	if (wait_set == NULL)
	{
		wait_set = CreateWaitEventSet(TopMemoryContext, 3);
		AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch,
						  NULL);
		AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET,
						  NULL, NULL);
		AddWaitEventToSet(wait_set, WL_SOCKET_READABLE,
						  kp_producer_wakeup_fd(), NULL, NULL);
	}
	(void) WaitEventSetWait(wait_set, timeout_ms, &event, 1,
							PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	kp_producer_clear_wakeup();
}

static bool extension_present;
static bool extension_missing;	/* not created, as opposed to not updated */

/* what the worker waits for, in words; in TopMemoryContext */
static char *extension_awaited = NULL;

static void
check_extension_step(void *arg)
{
	char	   *version;
	char	   *awaited;

	begin_transaction("checking for the extension");
	if (database_name == NULL)
	{
		database_name = MemoryContextStrdup(TopMemoryContext,
											get_database_name(MyDatabaseId));
		kp_kafka_set_database(database_name);
	}
	version = kp_extension_version();
	extension_present = kp_extension_is_current(version);
	extension_missing = version == NULL;
	awaited = version == NULL ? "CREATE EXTENSION kafka_producer" :
		psprintf("ALTER EXTENSION kafka_producer UPDATE (it is at version %s, the library at %s)",
				 version, KP_EXTENSION_VERSION);
	if (extension_awaited == NULL || strcmp(awaited, extension_awaited) != 0)
	{
		if (!extension_present && !extension_missing)
			ereport(LOG,
					(errmsg("kafka_producer worker is waiting for %s in database \"%s\"",
							awaited, database_name)));
		if (extension_awaited != NULL)
			pfree(extension_awaited);
		extension_awaited = MemoryContextStrdup(TopMemoryContext, awaited);
	}
	end_transaction();
}

/*
 * Waits quietly until the extension is at the version of this library: a
 * database still at an older one keeps its messages until ALTER EXTENSION
 * ... UPDATE.  Returns false if the database has no extension: the worker
 * leaves, and the launcher starts one again once it is created.
 */
static bool
wait_for_extension(void)
{
	while (!ShutdownRequestPending)
	{
		if (run_guarded(check_extension_step, NULL) &&
			(extension_present || extension_missing))
			return extension_present;
		wait_for_events(KP_IDLE_WAIT_MS);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
	return false;
}

/*
 * Counts the queue tables for the backlog, which backends and the worker
 * then keep up to date: at the start, and when the extension reappears.
 */
static void
count_backlog_step(void *arg)
{
	bool		isnull;

	begin_transaction("counting the messages waiting for Kafka");
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT coalesce(sum(pending), 0)::bigint, "
					"coalesce(sum(pending_bytes), 0)::bigint FROM kafka.topic_backlog",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not count the messages waiting for Kafka");
	kp_backlog_set(DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull)),
				   DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 2, &isnull)));
	SPI_finish();
	end_transaction();
}

static bool
prune_due(void)
{
	return TimestampDifferenceExceeds(last_prune, GetCurrentTimestamp(),
									  KP_PRUNE_INTERVAL_MS);
}

/*
 * kp_extension_ready() for the steps that run many times a second, in
 * their transaction.  DROP EXTENSION and the scripts of ALTER EXTENSION
 * change cached catalogs, so a reading that found it ready is trusted
 * until invalidation messages arrive, or for KP_EXTENSION_RECHECK_MS:
 * reading it each time took a tenth of the worker's time under many small
 * transactions.  A step that starts after a DROP EXTENSION committed but
 * before its messages arrived fails on the missing tables, and the next
 * reads it again.  A reading that found it missing is never trusted: the
 * worker stops its producer then, and must not do so again needlessly.
 */
static bool
extension_still_ready(void)
{
	static uint64 messages_seen = 0;
	static TimestampTz read_at = 0;
	static bool ready = false;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	if (!ready || SharedInvalidMessageCounter != messages_seen ||
		now < read_at ||
		TimestampDifferenceExceeds(read_at, now, KP_EXTENSION_RECHECK_MS))
	{
		/* first: messages that arrive while it reads make the next read it */
		messages_seen = SharedInvalidMessageCounter;
		ready = kp_extension_ready();
		read_at = now;
	}
	return ready;
}

/* *arg: how many kafka_send_sync() outcomes it recorded */
static void
record_step(void *arg)
{
	int		   *sync_recorded = arg;

	*sync_recorded = 0;
	/* what a step that failed noted of offsets is not recorded */
	kp_recorded_offsets_begin_step();
	begin_transaction("recording deliveries");
	extension_present = extension_still_ready();
	if (!extension_present)
	{
		end_transaction();
		return;
	}
	/* first: a record is older than now() when written, and must be read */
	if (prune_due())
	{
		kp_outbox_prune();
		last_prune = GetCurrentTimestamp();
	}
	if (reports.count > 0)
		kp_outbox_record(&reports);
	*sync_recorded = kp_sync_record();
	end_transaction();
}

/*
 * What the recorded reports change in shared memory, added up first: an
 * atomic operation and a clock reading per message showed in profiles.
 */
typedef struct KpRecordedTotals
{
	uint64		outcomes[KP_RETURNED + 1];
	int64		final_messages;
	int64		final_bytes;
} KpRecordedTotals;

/* Lets go of a recorded report's message; a final one leaves the backlog. */
static void
forget_report(KpReport *report, KpRecordedTotals *totals)
{
	int64		stored_bytes = kp_producer_forget(report->id);

	totals->outcomes[report->outcome]++;
	if (report->outcome == KP_DELIVERED || report->outcome == KP_FAILED)
	{
		totals->final_messages++;
		totals->final_bytes += stored_bytes;
	}
	if (report->outcome == KP_FAILED || report->outcome == KP_RETRIABLE)
		kp_shmem_set_last_error(psprintf("%s: %s (message " INT64_FORMAT ")",
										 kp_report_error_name(report),
										 kp_report_error_text(report),
										 report->id));
}

static void
publish_totals(KpRecordedTotals *totals)
{
	static const KpCounter counters[] = {
		[KP_DELIVERED] = KP_COUNT_DELIVERED,
		[KP_FAILED] = KP_COUNT_FAILED,
		[KP_RETRIABLE] = KP_COUNT_TRANSIENT_ERRORS,
		[KP_RETURNED] = KP_COUNT_RETURNED,
	};

	for (int outcome = 0; outcome <= KP_RETURNED; outcome++)
		if (totals->outcomes[outcome] > 0)
			kp_shmem_count(counters[outcome], totals->outcomes[outcome]);
	if (totals->outcomes[KP_DELIVERED] > 0)
		kp_backlog_delivered_now();
	if (totals->final_messages > 0)
		kp_backlog_remove(totals->final_messages, totals->final_bytes);
}

/* Adds a delivery report to buf. */
static void
copy_report(KpReportBuffer *buf, KpReport *report)
{
	Assert(report->outcome == KP_DELIVERED);
	kp_report_add(buf, report->id, report->outcome, report->partition,
				  report->offset, report->err);
	buf->reports[buf->count - 1].received_at = report->received_at;
}

/* How long until spacing ms have passed since since; 0: now. */
static long
ms_until_elapsed(TimestampTz since, long spacing)
{
	TimestampTz now = GetCurrentTimestamp();

	/* a clock set back must not hold rounds back until it catches up */
	if (spacing == 0 || now < since)
		return 0;
	return Max(spacing - TimestampDifferenceMilliseconds(since, now), 0);
}

/*
 * Sessions committing small transactions wake the worker thousands of
 * times a second, and a round of sending or of recording costs about as
 * much for one message as for a hundred (a transaction, the scans of both
 * queue tables, a commit): measured with 8 sessions sending 3 messages a
 * transaction, the worker took 36% of a core, 48 us per message.  So a
 * round that follows one which did all there was to do waits until half
 * of kafka.linger_ms (at most KP_MAX_SPACING_MS) has passed since that
 * one began: messages wait up to that much longer to be sent, as they
 * wait for linger.ms in librdkafka to be sent with others, and outcomes
 * that a session waits for to be written (see ms_until_record).  With the
 * whole of linger.ms, p50 latency at 1,000 messages a second was 8.2 ms
 * instead of 5.4; with half, the worker took a sixth more CPU under many
 * small transactions.  With linger 0 nothing waits.
 */
static long
ms_until_spaced(TimestampTz since)
{
	return ms_until_elapsed(since, Min(kp_producer_linger_ms() / 2,
									   KP_MAX_SPACING_MS));
}

static TimestampTz last_record_at = 0;

/* Whether rounds of sending wait until outcomes are written. */
static bool
sending_stalled(void)
{
	return rewinding || queue_full ||
		kp_producer_in_flight_count() >= KP_MAX_IN_FLIGHT;
}

/*
 * How long until the reports waiting are due to be written; 0: now.
 * Their delivered_at is when they arrived, so writing them later delays
 * only what waits for them: kafka_wait(), kafka.wait_on_commit, the
 * status in kafka.messages.  Unless a session waits, rounds of recording
 * are KP_RECORD_SPACING_MS apart: under 8 sessions committing 3 messages
 * a transaction that took a sixth off the worker's CPU per message.
 * A message to be sent again is due at once: until its report is written
 * and the rewind begins, a round could send a later message of its key
 * ahead of it.  A worker that cannot send until outcomes are written
 * waits for them as a session would.
 */
static long
ms_until_record(void)
{
	if (reports.count >= KP_WRITE_CHUNK || reports.resends > 0)
		return 0;
	if (kp_shmem_outcomes_awaited() || kp_commit_wait_pending() ||
		sending_stalled())
		return ms_until_spaced(last_record_at);
	return ms_until_elapsed(last_record_at, KP_RECORD_SPACING_MS);
}

/*
 * Writes the buffered reports when they are due or all is true, and
 * kafka_send_sync()'s outcomes when they are.  Once the reports are
 * committed their messages leave the in-flight set; any that must be sent
 * again starts a rewind.
 * With nothing to write, no transaction is started.
 */
static bool
record_reports(bool all)
{
	bool		resend;
	int			sync_recorded;
	KpRecordedTotals totals = {0};

	if ((reports.count == 0 || (!all && ms_until_record() > 0)) &&
		!kp_sync_record_due(all) && !prune_due())
		return true;
	last_record_at = GetCurrentTimestamp();
	/* new reports may complete the batch rows of held ones */
	for (int i = 0; i < held.count; i++)
		copy_report(&reports, &held.reports[i]);
	kp_report_clear(&held);
	if (!run_guarded(record_step, &sync_recorded))
		return false;
	kp_recorded_offsets_step_committed();
	kp_outbox_apply_moves();
	kp_sync_forget_recorded();
	if (reports.count > 0 || sync_recorded > 0)
		kp_shmem_announce_outcomes();
	for (int i = 0; i < reports.count; i++)
	{
		KpReport   *report = &reports.reports[i];

		if (report->held)
		{
			copy_report(&held, report);
			continue;
		}
		forget_report(report, &totals);
	}
	resend = reports.resends > 0;
	publish_totals(&totals);
	if (reports.count > 0)
		queue_full = false;
	kp_report_clear(&reports);
	if (resend && !rewinding)
	{
		rewinding = true;
		kp_producer_return_queued();
	}
	return true;
}

/* tells sessions waiting in COMMIT (kafka.wait_on_commit) what is final */
static void
answer_commit_waits_step(void *arg)
{
	begin_transaction("answering commits that wait for Kafka");
	kp_commit_wait_answer();
	end_transaction();
}

/* the producer generation the last reconciliation was done for */
static uint64 reconciled_generation = 0;

/* *arg: whether Kafka could be read, and the reconciliation is done */
static void
reconcile_step(void *arg)
{
	bool	   *reconciled = arg;

	begin_transaction("reconciling pending messages with Kafka");
	extension_present = kp_extension_ready();
	*reconciled = !extension_present || kp_reconcile();
	end_transaction();
}

/*
 * A round of sending: it scans the ids after from, and sent up to last;
 * scanned is false when there was nothing to scan (delivery held, or the
 * extension gone), exhausted true when it read all there was.
 */
typedef struct KpRound
{
	int64		from;
	int64		last;
	bool		scanned;
	bool		exhausted;
} KpRound;

static void
send_step(void *arg)
{
	KpRound    *round = arg;
	int64		floor;

	begin_transaction("sending messages");
	floor = kp_committing_scan_floor(GetActiveSnapshot());
	round->from = Min(round->from, floor - 1);
	round->last = round->from;
	round->exhausted = true;
	extension_present = extension_still_ready();
	round->scanned = extension_present && !kp_delivery_held();
	if (round->scanned)
		round->last = kp_outbox_send_round(round->from,
										   KP_MAX_IN_FLIGHT - kp_producer_in_flight_count(),
										   &reports, &queue_full, &held_back,
										   &round->exhausted);
	end_transaction();
}

/* where the last scan that found nothing started, and when; -1: none */
static int64 empty_scan_from = -1;
static TimestampTz empty_scan_at = 0;

/*
 * Whether a scan from from would find nothing: the last one from there
 * found nothing, and nothing was committed since.  Every commit lowers the
 * rescan position, so committed_behind says so.  A scan once a second
 * regardless guards against anything this reasoning missed.
 */
static bool
scan_would_find_nothing(int64 from, int64 committed_behind)
{
	return committed_behind == PG_INT64_MAX && !kp_committing_any() &&
		from == empty_scan_from &&
		!TimestampDifferenceExceeds(empty_scan_at, GetCurrentTimestamp(),
									KP_IDLE_WAIT_MS);
}

/* a registry answer may release the messages held back for it */
static void
poll_registry_step(void *arg)
{
	if (kp_registry_poll())
		empty_scan_from = -1;
}

/*
 * Sends the next batch of committed messages.  Returns true when it sent
 * some and stopped before the end: more are waiting.
 */
static bool
send_pending(void)
{
	int64		committed_behind;
	bool		reconciled;
	KpRound		round;
	uint64		backlog_mark;

	if (rewinding && kp_producer_in_flight_count() == 0)
	{
		rewinding = false;
		scan_after = 0;
	}
	/* a message to be sent again goes before any later one of its key */
	kp_producer_poll(&reports);
	if (reports.resends > 0 || !kp_producer_running() || sending_stalled())
		return false;
	/* a new producer: an earlier one may have sent what was never recorded */
	if (reconciled_generation != kp_producer_generation())
	{
		if (!run_guarded(reconcile_step, &reconciled) || !reconciled)
			return false;
		reconciled_generation = kp_producer_generation();
	}

	/* taken before the scan's snapshot: see kp_shmem_request_rescan */
	backlog_mark = kp_backlog_mark();
	committed_behind = kp_shmem_take_rescan_from();
	round.from = Min(scan_after, committed_behind - 1);
	if (scan_would_find_nothing(round.from, committed_behind))
		return false;
	if (!run_guarded(send_step, &round))
	{
		scan_after = 0;
		empty_scan_from = -1;
		return false;
	}
	scan_after = round.last;
	empty_scan_from = -1;
	if (round.last == round.from && !queue_full)
	{
		empty_scan_from = round.from;
		empty_scan_at = GetCurrentTimestamp();
		/* found records wait for their messages behind a held one */
		if (!held_back)
			kp_reconcile_done();
		/* all below from is final, nothing after it: the queue is empty */
		if (round.scanned && !held_back && kp_producer_in_flight_count() == 0 &&
			committed_behind == PG_INT64_MAX && !kp_committing_any())
			kp_backlog_empty(backlog_mark);
	}
	return round.last != round.from && !queue_full && !round.exhausted;
}

/* *arg: whether a snapshot is running and may have more to read */
static void
snapshot_step(void *arg)
{
	bool	   *running = arg;

	begin_transaction("reading a chunk of a published table's snapshot");
	*running = kp_snapshot_run_chunk();
	end_transaction();
}

static void
snapshot_failed_step(void *arg)
{
	begin_transaction("recording a snapshot's failure");
	kp_snapshot_fail_running(step_error ? step_error : "unknown error");
	end_transaction();
}

/*
 * Reads a chunk of the oldest running snapshot, while there is room in
 * flight for its events: sending what is committed comes first.  A chunk
 * that fails fails its snapshot, so that the next ones can run.  Returns
 * whether more may be waiting.
 */
static bool
transient_error(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		sqlerrcode == ERRCODE_PROGRAM_LIMIT_EXCEEDED ||
		ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_INSUFFICIENT_RESOURCES;
}

static bool
read_snapshot_chunk(void)
{
	uint64		generation = kp_shmem_generation(KP_GENERATION_SNAPSHOT);

	if (generation != snapshot_generation)
	{
		snapshot_generation = generation;
		snapshot_running = true;
	}
	if (!snapshot_running || kp_producer_in_flight_count() >= KP_MAX_IN_FLIGHT / 2)
		return false;
	if (run_guarded(snapshot_step, &snapshot_running))
		return snapshot_running;
	/* a deadlock with a writer, say: the chunk is read again after a pause */
	if (transient_error(step_errcode))
		return false;
	snapshot_running = run_guarded(snapshot_failed_step, NULL);
	return snapshot_running;
}

/*
 * Waits up to timeout_ms for librdkafka to report on every message in
 * flight, recording the outcomes as they come.
 */
static void
drain_in_flight(long timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   timeout_ms);

	while ((kp_producer_running() && kp_producer_in_flight_count() > 0) ||
		   kp_sync_in_flight() > 0)
	{
		long		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
																deadline);

		if (remaining <= 0)
			break;
		kp_sync_poll();
		kp_producer_poll(&reports);
		record_reports(true);
		if (kp_producer_in_flight_count() > 0 || kp_sync_in_flight() > 0)
			wait_for_events(Min(remaining, 100));
	}
	kp_producer_poll(&reports);
	record_reports(true);
}

/*
 * Stops the producers.  What the outbox's producer still held comes back
 * to be sent again; what the sync producer held fails.
 */
static void
stop_producer(void)
{
	kp_sync_stop();
	kp_producer_stop(&reports);
	record_reports(true);
}

static void
send_sync_requests_step(void *arg)
{
	kp_sync_send_requested();
}

static void
load_topic_config_step(void *arg)
{
	begin_transaction("reading kafka.topic_config");
	kp_topic_config_load();
	end_transaction();
}

/*
 * A string that changes whenever a producer property or a per-topic
 * setting changes; reads kafka.topic_config again first.
 */
static char *
settings_fingerprint(void)
{
	run_guarded(load_topic_config_step, NULL);
	return psprintf("%s%s", kp_producer_settings_fingerprint(),
					kp_topic_config_fingerprint());
}

static void
start_producer(void)
{
	char	   *fingerprint = settings_fingerprint();

	if (producer_fingerprint != NULL)
		pfree(producer_fingerprint);
	producer_fingerprint = MemoryContextStrdup(TopMemoryContext, fingerprint);
	kp_producer_start();
}

/*
 * Applies new settings: kafka.* after a reload, kafka.topic_config after a
 * commit that changed it.  The producers are rebuilt only when one of
 * their properties changed, after the messages in flight have been
 * reported: librdkafka takes a topic's settings only when it first meets
 * the topic.
 */
static void
reload_settings(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	if (producer_fingerprint != NULL &&
		strcmp(settings_fingerprint(), producer_fingerprint) == 0)
		return;
	ereport(LOG,
			(errmsg("kafka_producer settings changed, restarting the Kafka producer")));
	drain_in_flight(KP_RELOAD_FLUSH_MS);
	stop_producer();
	start_producer();
}

static TimestampTz last_round_at = 0;
static bool last_round_more = false;
static TimestampTz last_vacuum_at = 0;
static TimestampTz last_busy_at = 0;

/* Whether a VACUUM is due; *idle: the queue has been empty a while. */
static bool
vacuum_due(bool *idle)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		messages;
	int64		bytes;

	kp_backlog_read(&messages, &bytes);
	if (messages > 0)
		last_busy_at = now;
	*idle = TimestampDifferenceExceeds(last_busy_at, now, KP_QUEUE_IDLE_MS);
	return kp_outbox_vacuum_due(messages, *idle) &&
		TimestampDifferenceExceeds(last_vacuum_at, now, KP_VACUUM_INTERVAL_MS);
}

/* *arg: whether the queue is idle, and may shrink */
static void
vacuum_step(void *arg)
{
	bool		idle = *(bool *) arg;

	pgstat_report_activity(STATE_RUNNING, "vacuuming the queue tables");
	kp_outbox_vacuum(idle);
	pgstat_report_activity(STATE_IDLE, NULL);
	/* the memory a burst took goes back, as the tables' pages do */
	if (idle)
		malloc_trim(0);
}

/* How long until the next round of sending is due; 0: now. */
static long
ms_until_round(void)
{
	return last_round_more ? 0 : ms_until_spaced(last_round_at);
}

static void
deliver(MemoryContext loop_context)
{
	while (!ShutdownRequestPending)
	{
		bool		more;
		bool		idle;
		long		until_round;

		/* transactions leave CurrentMemoryContext at TopMemoryContext */
		MemoryContextSwitchTo(loop_context);
		MemoryContextReset(loop_context);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending || kp_topic_config_changed())
			reload_settings();

		/* sessions wait in kafka_send_sync(): serve them first */
		kp_sync_poll();
		if (kp_sync_requested())
			run_guarded(send_sync_requests_step, NULL);
		kp_producer_poll(&reports);
		if (!record_reports(false) ||
			(kp_commit_wait_pending() && !run_guarded(answer_commit_waits_step, NULL)))
		{
			wait_for_events(KP_ERROR_BACKOFF_MS);
			continue;
		}
		if (!extension_present)
		{
			/* dropped, or updated by a newer library's script */
			stop_producer();
			if (!wait_for_extension())
				return;
			run_guarded(count_backlog_step, NULL);
			scan_after = 0;
			start_producer();
			continue;
		}
		if (vacuum_due(&idle) && !ShutdownRequestPending)
		{
			last_vacuum_at = GetCurrentTimestamp();
			run_guarded(vacuum_step, &idle);
		}
		if (kp_registry_in_flight())
			run_guarded(poll_registry_step, NULL);
		until_round = ms_until_round();
		more = false;
		if (until_round == 0)
		{
			last_round_at = GetCurrentTimestamp();
			more = last_round_more = send_pending();
		}
		more |= read_snapshot_chunk();
		if (!more)
		{
			long		timeout = Min(kp_registry_in_flight() ? KP_REGISTRY_POLL_MS : KP_IDLE_WAIT_MS,
									  kp_sync_ms_until_record());

			/* woken before the round is due: then it runs */
			if (until_round > 0)
				timeout = Min(timeout, until_round);
			if (reports.count > 0)
				timeout = Min(timeout, ms_until_record());
			/* that round scans what commits meanwhile: no need to wake us */
			kp_shmem_round_scheduled(until_round > 0);
			wait_for_events(timeout);
			kp_shmem_round_scheduled(false);
		}
	}
}

/* The database has no extension: the worker leaves, and says why. */
static void
leave_without_extension(void)
{
	ereport(DEBUG1,
			(errmsg("kafka_producer worker leaves database \"%s\", which has no kafka_producer extension",
					database_name)));
	kp_shmem_worker_found_no_extension();
	proc_exit(0);
}

/*
 * librdkafka mallocs a message and its headers, and frees them as their
 * delivery reports are read: several small chunks per message, thousands
 * at a time.  With glibc's defaults a third of the worker's own time went
 * to malloc and free: fastbin chunks consolidated by each larger request,
 * and the heap's top given back after each batch, then faulted in again.
 * Without fastbins, and with the top kept until the queue is idle
 * (vacuum_step trims it), a drain takes a fifth less of its CPU.
 */
static void
tune_malloc(void)
{
	mallopt(M_MXFAST, 0);
	mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
	mallopt(M_TOP_PAD, 4 * 1024 * 1024);
}

void
kafka_producer_worker_main(Datum main_arg)
{
	int			slot = DatumGetInt32(main_arg);
	KpSlotInfo	info;
	MemoryContext loop_context;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	tune_malloc();

	kp_shmem_slot_info(slot, &info);
	BackgroundWorkerInitializeConnectionByOid(info.database, InvalidOid, 0);
	pgstat_report_appname("kafka_producer");
	/* the worker runs as superuser: resolve nothing through user schemas */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET,
					PGC_S_OVERRIDE);
	/* its few statements gain nothing from parallel workers it must wait for */
	SetConfigOption("max_parallel_workers_per_gather", "0", PGC_SUSET,
					PGC_S_OVERRIDE);
	/* the events of its snapshot chunks are its own to deliver */
	SetConfigOption("kafka.wait_on_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	kp_shmem_worker_attach(slot);

	loop_context = AllocSetContextCreate(TopMemoryContext,
										 "kafka_producer worker loop",
										 ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(loop_context);

	if (!wait_for_extension())
	{
		if (!ShutdownRequestPending)
			leave_without_extension();
		proc_exit(0);
	}
	run_guarded(count_backlog_step, NULL);
	start_producer();
	deliver(loop_context);

	if (!ShutdownRequestPending)
		leave_without_extension();
	ereport(LOG,
			(errmsg("kafka_producer worker shutting down with %ld messages in flight",
					kp_producer_in_flight_count())));
	rewinding = true;
	/* DROP DATABASE waits for us: leave at once */
	if (!kp_shmem_database_held_by_drop(MyDatabaseId))
		drain_in_flight(kp_shutdown_timeout_ms);
	stop_producer();
	proc_exit(0);
}
