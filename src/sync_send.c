/*-------------------------------------------------------------------------
 *
 * sync_send.c
 *	  kafka_send_sync(): sends one message now, outside the caller's
 *	  transaction, and waits for Kafka's acknowledgement.
 *
 *	  The backend copies the message into its slot of shared memory
 *	  (indexed by pgprocno, and naming its database), or into a dynamic shared memory segment named
 *	  in the slot when it is large, sets the worker's latch and sleeps on
 *	  its own.  The worker
 *	  hands the message to a second producer of its own whose linger.ms is
 *	  0: its caller is waiting, and batching would only add to the wait.
 *	  The worker answers in the slot as soon as the delivery report
 *	  arrives, then records the outcome in kafka.delivered or kafka.failed
 *	  with its next batch of outcomes.
 *
 *	  A slot goes FREE -> REQUESTED (backend) -> SENT (worker took it) ->
 *	  ANSWERED (worker), and back to FREE when the backend's call ends, also
 *	  when an ERROR or a cancel ends its wait.  The request
 *	  number tells the worker whether an answer is still awaited.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/dsm.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "delivery.h"

PG_FUNCTION_INFO_V1(kafka_send_sync);

/*
 * How long after kafka.message_timeout_ms a backend stops waiting on its
 * own: librdkafka's timeout normally answers first.
 */
#define KP_SYNC_GRACE_MS 5000
/*
 * Outcomes are recorded at most this long after their answer, or once this
 * many are waiting: a commit per outcome would delay the next caller.
 */
#define KP_SYNC_RECORD_DELAY_MS 50
#define KP_SYNC_RECORD_BATCH 1000
/* how often a waiting backend checks that the worker is still there */
#define KP_SYNC_CHECK_MS 1000

typedef enum KpSyncState
{
	KP_SYNC_FREE,
	KP_SYNC_REQUESTED,
	KP_SYNC_SENT,
	KP_SYNC_ANSWERED
} KpSyncState;

/*
 * A message this large or smaller travels in the slot itself: creating and
 * mapping a segment would cost a good part of a round trip to the broker.
 */
#define KP_SYNC_INLINE_SIZE 4096

typedef struct KpSyncSlot
{
	slock_t		mutex;
	KpSyncState state;
	uint64		request;		/* the backend's request counter */
	Oid			database;		/* the backend's, whose worker sends it */
	dsm_handle	segment;		/* DSM_HANDLE_INVALID: the message is inline */
	pid_t		worker_pid;		/* the worker that took the message */
	int32		partition;		/* the answer, once ANSWERED */
	int64		offset;
	rd_kafka_resp_err_t err;
	/* written by the backend while FREE, copied by the worker as it takes it */
	char		inline_message[KP_SYNC_INLINE_SIZE];
} KpSyncSlot;

/* one per backend, indexed by pgprocno */
static KpSyncSlot *sync_slots = NULL;

/* in each database's slot: how many of its backends' slots are REQUESTED */
static int	requested_part = -1;

/* The message as the backend writes it into its slot or a segment. */
typedef struct KpSyncMessage
{
	int64		id;
	TimestampTz enqueued_at;
	Oid			enqueued_by;
	int32		partition;
	int32		key_len;		/* -1: no key */
	int32		value_len;		/* -1: a tombstone */
	int32		headers_len;	/* -1: no headers */
	char		topic[KP_TOPIC_NAME_MAX + 1];
	char		data[FLEXIBLE_ARRAY_MEMBER];	/* key, value, headers */
} KpSyncMessage;

static Size
shmem_size(void)
{
	return mul_size(MaxBackends, sizeof(KpSyncSlot));
}

static void
shmem_attach(void *memory, bool found)
{
	sync_slots = memory;
	if (found)
		return;
	for (int i = 0; i < MaxBackends; i++)
	{
		SpinLockInit(&sync_slots[i].mutex);
		sync_slots[i].state = KP_SYNC_FREE;
		sync_slots[i].request = 0;
	}
}

static void
requested_reset(void *memory)
{
	pg_atomic_init_u32((pg_atomic_uint32 *) memory, 0);
}

/* this database's count of requests */
static pg_atomic_uint32 *
requested(void)
{
	return kp_shmem_database_part(requested_part, false);
}

void
kp_sync_init(void)
{
	kp_shmem_add("kafka_producer sync sends", shmem_size, shmem_attach);
	requested_part = kp_shmem_add_database_part(sizeof(pg_atomic_uint32),
												requested_reset);
}

/* ---------------------------------------------------------------------
 * The backend's side
 * ---------------------------------------------------------------------
 */

static int32
length_or_none(bytea *bytes)
{
	return bytes == NULL ? -1 : (int32) VARSIZE_ANY_EXHDR(bytes);
}

static char *
append_bytes(char *to, const void *from, int32 len)
{
	if (len > 0)
		memcpy(to, from, len);
	return to + Max(len, 0);
}

static KpSyncSlot *
my_slot(void)
{
	return &sync_slots[MyProc->pgprocno];
}

static Size
message_size(int32 key_len, int32 value_len, int32 headers_len)
{
	return offsetof(KpSyncMessage, data) + Max(key_len, 0) +
		Max(value_len, 0) + Max(headers_len, 0);
}

/*
 * Writes the message into the backend's slot, or into a new segment
 * returned in *segment when it does not fit there.
 */
static void
write_message(KpNewMessage *msg, int64 id, dsm_segment **segment)
{
	int32		key_len = length_or_none(msg->key);
	int32		value_len = length_or_none(msg->value);
	int32		headers_len = msg->headers ? (int32) VARSIZE(msg->headers) : -1;
	Size		size = message_size(key_len, value_len, headers_len);
	KpSyncMessage *out;
	char	   *data;

	*segment = NULL;
	if (size <= KP_SYNC_INLINE_SIZE)
		out = (KpSyncMessage *) my_slot()->inline_message;
	else
	{
		*segment = dsm_create(size, 0);
		out = dsm_segment_address(*segment);
	}
	out->id = id;
	out->enqueued_at = GetCurrentTimestamp();
	out->enqueued_by = GetUserId();
	out->partition = msg->partition;
	out->key_len = key_len;
	out->value_len = value_len;
	out->headers_len = headers_len;
	text_to_cstring_buffer(msg->topic, out->topic, sizeof(out->topic));
	data = append_bytes(out->data, msg->key ? VARDATA_ANY(msg->key) : NULL,
						key_len);
	data = append_bytes(data, msg->value ? VARDATA_ANY(msg->value) : NULL,
						value_len);
	append_bytes(data, msg->headers, headers_len);
}

/* Whatever ended the call, the slot is free again. */
static void
withdraw_request(void)
{
	KpSyncSlot *slot = my_slot();
	pg_atomic_uint32 *count = requested();

	SpinLockAcquire(&slot->mutex);
	if (slot->state == KP_SYNC_REQUESTED)
		pg_atomic_fetch_sub_u32(count, 1);
	slot->state = KP_SYNC_FREE;
	SpinLockRelease(&slot->mutex);
}

static void
request_send(dsm_segment *segment)
{
	KpSyncSlot *slot = my_slot();

	SpinLockAcquire(&slot->mutex);
	slot->request++;
	slot->database = MyDatabaseId;
	slot->segment = segment ? dsm_segment_handle(segment) : DSM_HANDLE_INVALID;
	slot->state = KP_SYNC_REQUESTED;
	SpinLockRelease(&slot->mutex);
	pg_atomic_fetch_add_u32(requested(), 1);
	kp_shmem_wake_worker();
}

static KpSyncState
slot_state(KpSyncSlot *slot, pid_t *worker_pid)
{
	KpSyncState state;

	SpinLockAcquire(&slot->mutex);
	state = slot->state;
	*worker_pid = slot->worker_pid;
	SpinLockRelease(&slot->mutex);
	return state;
}

/* errcontext of the wait: says whether the message may have been sent */
static void
wait_error_context(void *arg)
{
	int64		id = *(int64 *) arg;
	pid_t		worker_pid;

	if (slot_state(my_slot(), &worker_pid) == KP_SYNC_REQUESTED)
		errcontext("Kafka message " INT64_FORMAT " was not sent", id);
	else
		errcontext("Kafka message " INT64_FORMAT " was sent; its outcome will be recorded in kafka.messages",
				   id);
}

/* Sleeps until the worker answers; an ERROR for a timeout or a lost worker. */
static void
wait_for_answer(int64 id)
{
	KpSyncSlot *slot = my_slot();
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   (int64) kp_producer_message_timeout_ms() +
													   KP_SYNC_GRACE_MS);
	ErrorContextCallback context;
	KpSyncState state;
	pid_t		worker_pid;

	context.callback = wait_error_context;
	context.arg = &id;
	context.previous = error_context_stack;
	error_context_stack = &context;

	while ((state = slot_state(slot, &worker_pid)) != KP_SYNC_ANSWERED)
	{
		long		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
																deadline);

		if (state == KP_SYNC_SENT && worker_pid != kp_shmem_worker_pid())
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("kafka_producer worker exited before Kafka acknowledged message " INT64_FORMAT,
							id),
					 errdetail("The message may or may not have been delivered.")));
		if (remaining <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("Kafka did not acknowledge message " INT64_FORMAT " within kafka.message_timeout_ms",
							id),
					 errhint(state == KP_SYNC_REQUESTED ?
							 "Check that the kafka_producer worker is running." :
							 "Check kafka_brokers() and the server log.")));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(remaining, KP_SYNC_CHECK_MS), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	error_context_stack = context.previous;
}

/* The SQLSTATE for a message Kafka refused, by what the caller can do. */
static int
errcode_for_kafka(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
			return ERRCODE_PROGRAM_LIMIT_EXCEEDED;
		case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
		case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
		case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
			return ERRCODE_UNDEFINED_OBJECT;
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
			return ERRCODE_INSUFFICIENT_PRIVILEGE;
		case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
		case RD_KAFKA_RESP_ERR__TIMED_OUT:
		case RD_KAFKA_RESP_ERR__TRANSPORT:
		case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
		case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
		case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
		case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
			return ERRCODE_CONNECTION_FAILURE;
		default:
			return ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
	}
}

/*
 * kafka_send_sync(topic text, value "any", key "any", partition int,
 *				   headers jsonb) returns kafka.delivery
 */
Datum
kafka_send_sync(PG_FUNCTION_ARGS)
{
	KpNewMessage msg;
	KpSyncSlot *slot;
	dsm_segment *segment;
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	int64		id;

	kp_check_serving_database();
	PreventCommandIfReadOnly("kafka_send_sync()");
	PreventCommandIfParallelMode("kafka_send_sync()");
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "kafka_send_sync must return a composite type");
	kp_message_from_args(fcinfo, &msg);
	kp_message_check(&msg);

	id = kp_next_message_id();
	write_message(&msg, id, &segment);
	PG_TRY();
	{
		request_send(segment);
		wait_for_answer(id);
	}
	PG_FINALLY();
	{
		withdraw_request();
		if (segment != NULL)
			dsm_detach(segment);
	}
	PG_END_TRY();

	slot = my_slot();
	values[0] = Int64GetDatum(id);
	values[1] = Int32GetDatum(slot->partition);
	values[2] = Int64GetDatum(slot->offset);
	nulls[2] = slot->offset < 0;
	if (slot->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errcode(errcode_for_kafka(slot->err)),
				 errmsg("could not deliver Kafka message " INT64_FORMAT ": %s",
						id, rd_kafka_err2str(slot->err)),
				 errdetail("Kafka error %s.", rd_kafka_err2name(slot->err)),
				 errhint("The message is in kafka.messages with status 'failed'; kafka_retry() sends it again.")));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc),
													  values, nulls)));
}

/* ---------------------------------------------------------------------
 * The worker's side
 * ---------------------------------------------------------------------
 */

static rd_kafka_t *sync_producer = NULL;
static rd_kafka_queue_t *sync_queue = NULL;
static HTAB *sync_topics = NULL;
static long sync_in_flight = 0;

/* a message handed to the sync producer: its delivery report's opaque */
typedef struct KpSyncSent
{
	int			procno;
	uint64		request;
	int64		id;
	TimestampTz enqueued_at;
	Oid			enqueued_by;
	Jsonb	   *headers;		/* kept for kafka.failed */
} KpSyncSent;

/* an answered message whose outcome is not recorded yet */
typedef struct KpSyncOutcome
{
	KpSyncSent *sent;
	char	   *topic;
	bytea	   *key;
	bytea	   *value;
	int32		partition;
	int64		offset;
	rd_kafka_resp_err_t err;
	TimestampTz at;
} KpSyncOutcome;

/* what is sent and what is answered live here until recorded */
static MemoryContext sync_context = NULL;
static List *outcomes = NIL;
static int	outcomes_recorded = 0;

static bytea *
bytes_copy(const void *data, size_t len)
{
	bytea	   *result;

	if (data == NULL)
		return NULL;
	result = palloc(VARHDRSZ + len);
	SET_VARSIZE(result, VARHDRSZ + len);
	memcpy(VARDATA(result), data, len);
	return result;
}

/* Answers the waiting backend, if it still waits, and keeps the outcome. */
static void
answer(KpSyncSent *sent, const char *topic, const void *key, size_t key_len,
	   const void *value, size_t value_len, int32 partition, int64 offset,
	   rd_kafka_resp_err_t err)
{
	KpSyncSlot *slot = &sync_slots[sent->procno];
	MemoryContext old = MemoryContextSwitchTo(sync_context);
	KpSyncOutcome *outcome = palloc(sizeof(KpSyncOutcome));

	SpinLockAcquire(&slot->mutex);
	if (slot->state == KP_SYNC_SENT && slot->request == sent->request)
	{
		slot->partition = partition;
		slot->offset = offset;
		slot->err = err;
		slot->state = KP_SYNC_ANSWERED;
	}
	SpinLockRelease(&slot->mutex);
	SetLatch(&ProcGlobal->allProcs[sent->procno].procLatch);

	outcome->sent = sent;
	outcome->topic = pstrdup(topic);
	outcome->key = bytes_copy(key, key_len);
	outcome->value = err == RD_KAFKA_RESP_ERR_NO_ERROR ? NULL :
		bytes_copy(value, value_len);
	outcome->partition = partition;
	outcome->offset = offset;
	outcome->err = err;
	outcome->at = GetCurrentTimestamp();
	outcomes = lappend(outcomes, outcome);
	MemoryContextSwitchTo(old);
	kp_shmem_count(err == RD_KAFKA_RESP_ERR_NO_ERROR ?
				   KP_COUNT_DELIVERED : KP_COUNT_FAILED, 1);
}

/* Hands one requested message to the sync producer. */
static void
send_message(KpSyncSent *sent, KpSyncMessage *msg)
{
	const char *key = msg->key_len < 0 ? NULL : msg->data;
	const char *value = msg->value_len < 0 ? NULL :
		msg->data + Max(msg->key_len, 0);
	rd_kafka_headers_t *headers = NULL;
	rd_kafka_resp_err_t err;

	if (msg->headers_len >= 0)
	{
		sent->headers = MemoryContextAlloc(sync_context, msg->headers_len);
		memcpy(sent->headers,
			   msg->data + Max(msg->key_len, 0) + Max(msg->value_len, 0),
			   msg->headers_len);
		headers = kp_headers_from_jsonb(sent->headers);
	}
	headers = kp_kafka_identity_headers(headers, sent->id);
	if (sync_producer == NULL)
		sync_producer = kp_kafka_new(0, false, &sync_queue);
	if (sync_producer == NULL)
		err = RD_KAFKA_RESP_ERR__INVALID_ARG;
	else
		err = rd_kafka_producev(sync_producer,
								RD_KAFKA_V_RKT(kp_kafka_topic(sync_producer,
															  &sync_topics,
															  msg->topic)),
								RD_KAFKA_V_PARTITION(msg->partition),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_VALUE((void *) value,
												 Max(msg->value_len, 0)),
								RD_KAFKA_V_KEY(key, Max(msg->key_len, 0)),
								RD_KAFKA_V_HEADERS(headers),
								RD_KAFKA_V_OPAQUE(sent),
								RD_KAFKA_V_END);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		sync_in_flight++;
		kp_shmem_count(KP_COUNT_SENT, 1);
		kp_shmem_count(KP_COUNT_SENT_BYTES, Max(msg->key_len, 0) +
					   Max(msg->value_len, 0));
		return;
	}
	if (headers != NULL)
		rd_kafka_headers_destroy(headers);
	answer(sent, msg->topic, key, Max(msg->key_len, 0), value,
		   Max(msg->value_len, 0), msg->partition, -1, err);
}

/*
 * Takes the request of one slot, if it still stands: copies the message
 * out of the slot or its segment, and sends it.
 */
static void
take_request(int procno)
{
	KpSyncSlot *slot = &sync_slots[procno];
	pg_atomic_uint32 *count = requested();
	KpSyncSent *sent;
	dsm_handle handle;
	uint64		request;
	KpSyncMessage *msg;

	if (sync_context == NULL)
		sync_context = AllocSetContextCreate(TopMemoryContext,
											 "kafka_producer sync sends",
											 ALLOCSET_DEFAULT_SIZES);
	msg = MemoryContextAlloc(sync_context, KP_SYNC_INLINE_SIZE);
	SpinLockAcquire(&slot->mutex);
	if (slot->state != KP_SYNC_REQUESTED || slot->database != MyDatabaseId)
	{
		SpinLockRelease(&slot->mutex);
		pfree(msg);
		return;
	}
	slot->state = KP_SYNC_SENT;
	slot->worker_pid = MyProcPid;
	request = slot->request;
	handle = slot->segment;
	if (handle == DSM_HANDLE_INVALID)
	{
		KpSyncMessage *in_slot = (KpSyncMessage *) slot->inline_message;

		memcpy(msg, in_slot, message_size(in_slot->key_len, in_slot->value_len,
										  in_slot->headers_len));
	}
	pg_atomic_fetch_sub_u32(count, 1);
	SpinLockRelease(&slot->mutex);

	if (handle != DSM_HANDLE_INVALID)
	{
		/* NULL when the backend gave up in between: nothing to send */
		dsm_segment *segment = dsm_attach(handle);

		pfree(msg);
		if (segment == NULL)
			return;
		msg = MemoryContextAlloc(sync_context, dsm_segment_map_length(segment));
		memcpy(msg, dsm_segment_address(segment), dsm_segment_map_length(segment));
		dsm_detach(segment);
	}
	sent = MemoryContextAllocZero(sync_context, sizeof(KpSyncSent));
	sent->procno = procno;
	sent->request = request;
	sent->id = msg->id;
	sent->enqueued_at = msg->enqueued_at;
	sent->enqueued_by = msg->enqueued_by;
	send_message(sent, msg);
	pfree(msg);
}

/* Sends what backends have requested; the caller guards against ERRORs. */
void
kp_sync_send_requested(void)
{
	for (int procno = 0;
		 procno < MaxBackends && pg_atomic_read_u32(requested()) > 0;
		 procno++)
		take_request(procno);
}

bool
kp_sync_requested(void)
{
	return pg_atomic_read_u32(requested()) > 0;
}

static void
stop_sync_producer(void)
{
	kp_kafka_destroy(sync_producer, sync_queue, &sync_topics);
	sync_producer = NULL;
	sync_queue = NULL;
}

/*
 * Answers the delivery reports that have arrived.  The waiting backends
 * are told at once; the outcomes are recorded later by kp_sync_record.
 */
static void
answer_report(const rd_kafka_message_t *msg, void *arg)
{
	answer(msg->_private, rd_kafka_topic_name(msg->rkt), msg->key, msg->key_len,
		   msg->payload, msg->len, msg->partition, msg->offset, msg->err);
	sync_in_flight--;
}

void
kp_sync_poll(void)
{
	if (sync_producer != NULL &&
		kp_kafka_drain(sync_queue, answer_report, NULL))
		kp_sync_stop();
}

long
kp_sync_in_flight(void)
{
	return sync_in_flight;
}

/*
 * Destroys the sync producer, answering what it still held as failed
 * (purged); the next request starts a new one.
 */
void
kp_sync_stop(void)
{
	if (sync_producer == NULL)
		return;
	rd_kafka_purge(sync_producer,
				   RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	while (sync_in_flight > 0)
	{
		long		before = sync_in_flight;

		kp_sync_poll();
		if (sync_in_flight == before)
			break;
	}
	stop_sync_producer();
}

static SPIPlanPtr delivered_plan = NULL;
static SPIPlanPtr failed_plan = NULL;

static void
record_outcome(KpSyncOutcome *outcome)
{
	bool		delivered = outcome->err == RD_KAFKA_RESP_ERR_NO_ERROR;
	Datum		args[11];
	char		nulls[11];
	int			rc;

	memset(nulls, ' ', sizeof(nulls));
	args[0] = Int64GetDatum(outcome->sent->id);
	args[1] = CStringGetTextDatum(outcome->topic);
	args[2] = PointerGetDatum(outcome->key);
	nulls[2] = outcome->key ? ' ' : 'n';
	args[3] = Int32GetDatum(outcome->partition);
	nulls[3] = outcome->partition < 0 ? 'n' : ' ';
	args[4] = TimestampTzGetDatum(outcome->sent->enqueued_at);
	args[5] = TimestampTzGetDatum(outcome->at);
	args[6] = ObjectIdGetDatum(outcome->sent->enqueued_by);
	if (delivered)
	{
		args[7] = Int64GetDatum(outcome->offset);
		nulls[7] = outcome->offset < 0 ? 'n' : ' ';
		rc = SPI_execute_plan(delivered_plan, args, nulls, false, 0);
	}
	else
	{
		args[7] = PointerGetDatum(outcome->value);
		nulls[7] = outcome->value ? ' ' : 'n';
		args[8] = PointerGetDatum(outcome->sent->headers);
		nulls[8] = outcome->sent->headers ? ' ' : 'n';
		args[9] = CStringGetTextDatum(rd_kafka_err2name(outcome->err));
		args[10] = CStringGetTextDatum(rd_kafka_err2str(outcome->err));
		rc = SPI_execute_plan(failed_plan, args, nulls, false, 0);
	}
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "recording the outcome of Kafka message " INT64_FORMAT " failed: %s",
			 outcome->sent->id, SPI_result_code_string(rc));
	kp_notify_ids(delivered ? "delivered" : "failed", &outcome->sent->id, 1);
}

static void
prepare_plans(void)
{
	Oid			delivered_types[] = {INT8OID, TEXTOID, BYTEAOID, INT4OID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, REGROLEOID, INT8OID};
	Oid			failed_types[] = {INT8OID, TEXTOID, BYTEAOID, INT4OID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, REGROLEOID, BYTEAOID, JSONBOID, TEXTOID, TEXTOID};

	if (delivered_plan != NULL)
		return;
	delivered_plan = SPI_prepare("INSERT INTO kafka.delivered (id, topic, key, \"partition\", "
								 "  \"offset\", attempts, enqueued_at, delivered_at, enqueued_by) "
								 "VALUES ($1, $2, $3, $4, $8, 1, $5, $6, $7)",
								 8, delivered_types);
	failed_plan = SPI_prepare("INSERT INTO kafka.failed (id, topic, key, \"partition\", "
							  "  enqueued_at, failed_at, value, headers, attempts, "
							  "  error_code, error, enqueued_by) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $8, $9, 1, $10, $11, $7)",
							  11, failed_types);
	if (delivered_plan == NULL || failed_plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(delivered_plan);
	SPI_keepplan(failed_plan);
}

/* Whether answered outcomes should be recorded now; all: any there are. */
bool
kp_sync_record_due(bool all)
{
	KpSyncOutcome *oldest;

	if (outcomes == NIL)
		return false;
	oldest = linitial(outcomes);
	return all || list_length(outcomes) >= KP_SYNC_RECORD_BATCH ||
		TimestampDifferenceExceeds(oldest->at, GetCurrentTimestamp(),
								   KP_SYNC_RECORD_DELAY_MS);
}

/* How long the worker may sleep before outcomes are due to be recorded. */
long
kp_sync_ms_until_record(void)
{
	KpSyncOutcome *oldest;

	if (outcomes == NIL)
		return LONG_MAX;
	oldest = linitial(outcomes);
	return TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
										   TimestampTzPlusMilliseconds(oldest->at,
																	   KP_SYNC_RECORD_DELAY_MS));
}

/*
 * In the worker's recording transaction: writes the answered outcomes.
 * Returns how many; kp_sync_forget_recorded drops them once committed.
 */
int
kp_sync_record(void)
{
	ListCell   *lc;

	outcomes_recorded = list_length(outcomes);
	if (outcomes_recorded == 0)
		return 0;
	prepare_plans();
	foreach(lc, outcomes)
		record_outcome(lfirst(lc));
	return outcomes_recorded;
}

void
kp_sync_forget_recorded(void)
{
	if (outcomes_recorded == 0)
		return;
	for (int i = 0; i < outcomes_recorded; i++)
	{
		KpSyncOutcome *outcome = list_nth(outcomes, i);

		if (outcome->sent->headers)
			pfree(outcome->sent->headers);
		pfree(outcome->sent);
		pfree(outcome->topic);
		if (outcome->key)
			pfree(outcome->key);
		if (outcome->value)
			pfree(outcome->value);
		pfree(outcome);
	}
	outcomes = list_delete_first_n(outcomes, outcomes_recorded);
	outcomes_recorded = 0;
}
