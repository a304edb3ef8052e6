/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  kafka_send(): validates a message and inserts it into kafka.outbox in
 *	  the caller's transaction, so that it exists only if that transaction
 *	  commits; at commit the worker is told, through shared memory, that
 *	  there is something to deliver.
 *
 *	  The row is written with heap_insert and index_insert directly: the
 *	  executor's per-statement setup would cost more than the insert itself
 *	  when kafka_send() is called once per row of a large query.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/sequence.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "kafka_producer.h"

PG_FUNCTION_INFO_V1(kafka_send);
PG_FUNCTION_INFO_V1(kafka_wake_worker);
PG_FUNCTION_INFO_V1(kafka_check_database);
PG_FUNCTION_INFO_V1(kafka_check_topic_name);


/*
 * What librdkafka adds to key, value and headers when it checks a message
 * against message.max.bytes: the record's varint fields (Kafka's record
 * format v2), and a key and a value length for each header.
 */
#define KP_RECORD_OVERHEAD (5 + 1 + 10 + 5 + 5 + 5 + 5)
#define KP_HEADER_OVERHEAD (5 + 5)

/* How a key or value argument of a given type becomes bytes. */
typedef enum KpArgKind
{
	KP_ARG_BYTES,				/* bytea: sent as is */
	KP_ARG_TEXT,				/* text, varchar: UTF-8 */
	KP_ARG_CSTRING,				/* an untyped literal */
	KP_ARG_OUTPUT				/* anything else: its text output, UTF-8 */
} KpArgKind;

typedef struct KpArgEncoder
{
	Oid			typid;
	KpArgKind	kind;
	FmgrInfo	output;
} KpArgEncoder;

typedef struct KpSendCache
{
	KpArgEncoder value;
	KpArgEncoder key;
} KpSendCache;

/*
 * Messages of triggers wait here as outbox rows, ids taken, and go to
 * kafka.outbox a chunk at a time with table_multi_insert: when a chunk is
 * full, at the end of the statement (kp_enqueue_flush from a statement
 * trigger) and before commit.  Each row remembers its subtransaction: only
 * those of the current one are written, since a row written in a deeper
 * subtransaction would vanish with it; those of an aborted one are
 * dropped, and those of a committed one pass to its parent.
 */
typedef struct KpBufferedRow
{
	SubTransactionId subid;
	HeapTuple	tuple;
} KpBufferedRow;

/* all in TopTransactionContext */
static List *buffered_rows = NIL;
static TupleDesc buffered_desc = NULL;
static Oid	buffered_sequence = InvalidOid;
static KpSlotCache outbox_slots;

static void enqueue_subxact_callback(SubXactEvent event, SubTransactionId subid,
									 SubTransactionId parent, void *arg);

/* lowest and highest message id enqueued by the current transaction */
static int64 xact_first_id = -1;
static int64 xact_last_id = -1;
static bool xact_callback_registered = false;

/*
 * Id ranges of the messages this session committed since its last
 * kafka_flush(), one per transaction; past KP_MAX_SESSION_RANGES they are
 * merged into one, which may also cover other sessions' messages.
 */
#define KP_MAX_SESSION_RANGES 1024
static KpIdRange session_ranges[KP_MAX_SESSION_RANGES];
static int	session_range_count = 0;
static bool database_checked = false;

static void
remember_committed(int64 first, int64 last)
{
	if (session_range_count == KP_MAX_SESSION_RANGES)
	{
		for (int i = 1; i < session_range_count; i++)
		{
			session_ranges[0].first = Min(session_ranges[0].first,
										  session_ranges[i].first);
			session_ranges[0].last = Max(session_ranges[0].last,
										 session_ranges[i].last);
		}
		session_range_count = 1;
	}
	session_ranges[session_range_count].first = first;
	session_ranges[session_range_count].last = last;
	session_range_count++;
}

/* The id ranges of what this session committed since the last flush. */
int
kp_enqueue_committed_ranges(KpIdRange **ranges)
{
	*ranges = session_ranges;
	return session_range_count;
}

void
kp_enqueue_forget_committed(void)
{
	session_range_count = 0;
}

static void
enqueue_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_PARALLEL_PRE_COMMIT)
		kp_enqueue_flush();
	if (event != XACT_EVENT_PRE_COMMIT && event != XACT_EVENT_PARALLEL_PRE_COMMIT &&
		event != XACT_EVENT_PRE_PREPARE)
	{
		/* they lived in TopTransactionContext */
		buffered_rows = NIL;
		buffered_desc = NULL;
	}
	if (xact_first_id < 0)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			{
				int64		first_id = xact_first_id;
				int64		last_id = xact_last_id;

				kp_shmem_request_rescan(first_id);
				remember_committed(first_id, last_id);
				xact_first_id = xact_last_id = -1;
				if (kp_wait_on_commit)
					kp_commit_wait(first_id, last_id);
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			xact_first_id = xact_last_id = -1;
			break;
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot prepare a transaction that enqueued Kafka messages")));
			break;
		default:
			break;
	}
}

/*
 * Makes sure the worker hears of messages from id on once the current
 * transaction commits.
 */
void
kp_enqueue_wake_at_commit(int64 id)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(enqueue_xact_callback, NULL);
		RegisterSubXactCallback(enqueue_subxact_callback, NULL);
		xact_callback_registered = true;
	}
	if (xact_first_id < 0 || id < xact_first_id)
		xact_first_id = id;
	if (id > xact_last_id)
		xact_last_id = id;
}

void
kp_check_serving_database(void)
{
	char	   *current;

	if (database_checked)
		return;
	kp_shmem_check_preloaded();
	current = get_database_name(MyDatabaseId);
	if (strcmp(current, kp_database) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kafka_producer does not serve database \"%s\"", current),
				 errdetail("Its worker delivers the messages of database \"%s\", named by kafka.database.",
						   kp_database),
				 errhint("Use kafka_producer in database \"%s\", or set kafka.database to \"%s\" and restart the server.",
						 kp_database, current)));
	database_checked = true;
}

Datum
kafka_check_database(PG_FUNCTION_ARGS)
{
	kp_check_serving_database();
	PG_RETURN_VOID();
}

Datum
kafka_wake_worker(PG_FUNCTION_ARGS)
{
	kp_check_serving_database();
	kp_enqueue_wake_at_commit(PG_GETARG_INT64(0));
	PG_RETURN_VOID();
}

/* Kafka's rules for topic names: 1 to 249 of [a-zA-Z0-9._-], not . or .. */
void
kp_check_topic(text *topic)
{
	const char *name = VARDATA_ANY(topic);
	int			len = VARSIZE_ANY_EXHDR(topic);

	if (len == 0 || len > KP_TOPIC_NAME_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Kafka topic name \"%s\"", text_to_cstring(topic)),
				 errdetail("A topic name has 1 to %d characters.", KP_TOPIC_NAME_MAX)));
	if ((len == 1 && name[0] == '.') ||
		(len == 2 && name[0] == '.' && name[1] == '.'))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Kafka topic name \"%s\"", text_to_cstring(topic)),
				 errdetail("\".\" and \"..\" are reserved.")));
	for (int i = 0; i < len; i++)
	{
		char		c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid Kafka topic name \"%s\"",
							text_to_cstring(topic)),
					 errdetail("A topic name may contain only ASCII letters, digits, \".\", \"_\" and \"-\".")));
	}
}

Datum
kafka_check_topic_name(PG_FUNCTION_ARGS)
{
	kp_check_topic(PG_GETARG_TEXT_PP(0));
	PG_RETURN_VOID();
}

/* A JSON object whose values are strings or null: Kafka's headers. */
static Size
check_headers(Jsonb *headers)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	Size		size = 0;

	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Kafka headers must be a JSON object"),
				 errhint("Pass headers as an object of strings, such as '{\"trace-id\": \"abc\"}'.")));

	it = JsonbIteratorInit(&headers->root);
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
			size += KP_HEADER_OVERHEAD + v.val.string.len;
		else if (token == WJB_VALUE)
		{
			if (v.type == jbvString)
				size += v.val.string.len;
			else if (v.type != jbvNull)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("Kafka header values must be strings or null"),
						 errhint("Convert numbers and other JSON values to strings.")));
		}
	}
	return size;
}

static void
init_encoder(KpArgEncoder *enc, Oid typid, MemoryContext mcxt)
{
	Oid			outfunc;
	bool		isvarlena;

	enc->typid = typid;
	switch (typid)
	{
		case BYTEAOID:
			enc->kind = KP_ARG_BYTES;
			break;
		case TEXTOID:
		case VARCHAROID:
			enc->kind = KP_ARG_TEXT;
			break;
		case UNKNOWNOID:
			enc->kind = KP_ARG_CSTRING;
			break;
		default:
			enc->kind = KP_ARG_OUTPUT;
			getTypeOutputInfo(typid, &outfunc, &isvarlena);
			fmgr_info_cxt(outfunc, &enc->output, mcxt);
			break;
	}
}

static bytea *
bytes_from_chars(const char *chars, int len, bool convert)
{
	char	   *utf8 = convert ? pg_server_to_any(chars, len, PG_UTF8) :
		(char *) chars;
	bytea	   *result;

	if (utf8 != chars)
		len = strlen(utf8);
	result = (bytea *) palloc(VARHDRSZ + len);
	SET_VARSIZE(result, VARHDRSZ + len);
	memcpy(VARDATA(result), utf8, len);
	return result;
}

/* The bytes Kafka receives for a key or value: text in UTF-8. */
static bytea *
encode_argument(KpArgEncoder *enc, Datum datum)
{
	bool		convert = GetDatabaseEncoding() != PG_UTF8;
	text	   *txt;
	char	   *str;

	switch (enc->kind)
	{
		case KP_ARG_BYTES:
			return DatumGetByteaPP(datum);
		case KP_ARG_TEXT:
			txt = DatumGetTextPP(datum);
			if (!convert)
				return (bytea *) txt;
			return bytes_from_chars(VARDATA_ANY(txt), VARSIZE_ANY_EXHDR(txt),
									true);
		case KP_ARG_CSTRING:
			str = DatumGetCString(datum);
			return bytes_from_chars(str, strlen(str), convert);
		case KP_ARG_OUTPUT:
			str = OutputFunctionCall(&enc->output, datum);
			return bytes_from_chars(str, strlen(str), convert);
	}
	pg_unreachable();
}

static KpSendCache *
send_cache(FunctionCallInfo fcinfo)
{
	KpSendCache *cache = (KpSendCache *) fcinfo->flinfo->fn_extra;
	Oid			value_type = get_fn_expr_argtype(fcinfo->flinfo, 1);
	Oid			key_type = get_fn_expr_argtype(fcinfo->flinfo, 2);

	if (cache == NULL)
	{
		cache = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt,
									   sizeof(KpSendCache));
		fcinfo->flinfo->fn_extra = cache;
	}
	if (cache->value.typid != value_type)
		init_encoder(&cache->value, value_type, fcinfo->flinfo->fn_mcxt);
	if (cache->key.typid != key_type)
		init_encoder(&cache->key, key_type, fcinfo->flinfo->fn_mcxt);
	return cache;
}

static int64
insert_outbox_row(Datum *values, bool *nulls)
{
	Relation	rel = kp_outbox_open(RowExclusiveLock);
	KpIndexes	indexes;
	HeapTuple	tuple;
	int64		id;

	id = nextval_internal(kp_relation_oid("message_id_seq"), false);
	values[OUTBOX_ID] = Int64GetDatum(id);
	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	simple_heap_insert(rel, tuple);
	kp_indexes_open(rel, &indexes);
	kp_indexes_insert(&indexes, rel, &tuple->t_self, values, nulls);
	kp_indexes_close(&indexes);
	table_close(rel, NoLock);
	return id;
}

/*
 * Checks a message against Kafka's rules and kafka.message_max_bytes;
 * returns its size as librdkafka counts it.
 */
Size
kp_message_check(KpNewMessage *msg)
{
	Size		size = KP_RECORD_OVERHEAD;

	kp_check_topic(msg->topic);
	if (msg->value != NULL)
		size += VARSIZE_ANY_EXHDR(msg->value);
	if (msg->key != NULL)
		size += VARSIZE_ANY_EXHDR(msg->key);
	if (msg->headers != NULL)
		size += check_headers(msg->headers);
	if (size > (Size) kp_message_max_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("Kafka message is too large"),
				 errdetail("With key, headers and Kafka's record overhead it takes %zu bytes; kafka.message_max_bytes is %d.",
						   size, kp_message_max_bytes),
				 errhint("Raise kafka.message_max_bytes, and the topic's max.message.bytes on the brokers.")));
	return size;
}

/* Checks msg and fills the columns of its outbox row, but its id. */
static void
outbox_columns(KpNewMessage *msg, Datum *values, bool *nulls)
{
	kp_check_serving_database();
	PreventCommandIfReadOnly("kafka_send()");
	PreventCommandIfParallelMode("kafka_send()");
	kp_message_check(msg);

	memset(nulls, false, OUTBOX_NATTS * sizeof(bool));
	values[OUTBOX_TOPIC] = PointerGetDatum(msg->topic);
	values[OUTBOX_KEY] = PointerGetDatum(msg->key);
	nulls[OUTBOX_KEY] = msg->key == NULL;
	values[OUTBOX_VALUE] = PointerGetDatum(msg->value);
	nulls[OUTBOX_VALUE] = msg->value == NULL;
	values[OUTBOX_HEADERS] = PointerGetDatum(msg->headers);
	nulls[OUTBOX_HEADERS] = msg->headers == NULL;
	values[OUTBOX_PARTITION] = Int32GetDatum(msg->partition);
	nulls[OUTBOX_PARTITION] = msg->partition == RD_KAFKA_PARTITION_UA;
	values[OUTBOX_ATTEMPTS] = Int32GetDatum(0);
	nulls[OUTBOX_LAST_ERROR] = true;
	values[OUTBOX_ENQUEUED_AT] = TimestampTzGetDatum(GetCurrentTimestamp());
}

/*
 * Enqueues a message in the current transaction: the worker delivers it
 * once the transaction commits.  Returns its id.
 */
int64
kp_enqueue(KpNewMessage *msg)
{
	Datum		values[OUTBOX_NATTS];
	bool		nulls[OUTBOX_NATTS];
	int64		id;

	outbox_columns(msg, values, nulls);
	id = insert_outbox_row(values, nulls);
	kp_enqueue_wake_at_commit(id);
	return id;
}

static void
prepare_buffering(void)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	Relation	rel = kp_outbox_open(AccessShareLock);

	buffered_desc = CreateTupleDescCopy(RelationGetDescr(rel));
	table_close(rel, NoLock);
	buffered_sequence = kp_relation_oid("message_id_seq");
	MemoryContextSwitchTo(old);
}

/* As kp_enqueue, the row written to kafka.outbox a chunk at a time. */
int64
kp_enqueue_buffered(KpNewMessage *msg)
{
	Datum		values[OUTBOX_NATTS];
	bool		nulls[OUTBOX_NATTS];
	KpBufferedRow *row;
	MemoryContext old;
	int64		id;

	outbox_columns(msg, values, nulls);
	if (buffered_desc == NULL)
		prepare_buffering();
	id = nextval_internal(buffered_sequence, false);
	values[OUTBOX_ID] = Int64GetDatum(id);
	old = MemoryContextSwitchTo(TopTransactionContext);
	row = palloc(sizeof(KpBufferedRow));
	row->subid = GetCurrentSubTransactionId();
	row->tuple = heap_form_tuple(buffered_desc, values, nulls);
	buffered_rows = lappend(buffered_rows, row);
	MemoryContextSwitchTo(old);
	kp_enqueue_wake_at_commit(id);
	if (list_length(buffered_rows) >= KP_BATCH_CHUNK)
		kp_enqueue_flush();
	return id;
}

/*
 * Frees the rows of subtransaction subid once written: a large transaction
 * would otherwise hold all of its events in memory until it ends.
 */
static void
free_written(List *rows, SubTransactionId subid)
{
	ListCell   *lc;

	foreach(lc, rows)
	{
		KpBufferedRow *row = lfirst(lc);

		if (row->subid != subid)
			continue;
		heap_freetuple(row->tuple);
		pfree(row);
	}
}

/* Writes the buffered rows of the current subtransaction to kafka.outbox. */
void
kp_enqueue_flush(void)
{
	SubTransactionId current = GetCurrentSubTransactionId();
	List	   *kept = NIL;
	KpBatchWriter writer;
	Relation	rel;
	ListCell   *lc;
	MemoryContext old;

	if (buffered_rows == NIL)
		return;
	rel = kp_outbox_open(RowExclusiveLock);
	kp_batch_open(&writer, rel, &outbox_slots);
	old = MemoryContextSwitchTo(TopTransactionContext);
	foreach(lc, buffered_rows)
	{
		KpBufferedRow *row = lfirst(lc);

		if (row->subid != current)
		{
			kept = lappend(kept, row);
			continue;
		}
		ExecStoreHeapTuple(row->tuple, kp_batch_next_slot(&writer), false);
		kp_batch_added(&writer);
	}
	MemoryContextSwitchTo(old);
	kp_batch_close(&writer);
	table_close(rel, NoLock);
	free_written(buffered_rows, current);
	list_free(buffered_rows);
	buffered_rows = kept;
}

static void
enqueue_subxact_callback(SubXactEvent event, SubTransactionId subid,
						 SubTransactionId parent, void *arg)
{
	ListCell   *lc;

	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, buffered_rows)
			if (((KpBufferedRow *) lfirst(lc))->subid == subid)
				((KpBufferedRow *) lfirst(lc))->subid = parent;
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, buffered_rows)
		{
			KpBufferedRow *row = lfirst(lc);

			if (row->subid < subid)
				continue;
			buffered_rows = foreach_delete_current(buffered_rows, lc);
			heap_freetuple(row->tuple);
			pfree(row);
		}
	}
}

/*
 * The topic, partition and headers of a message, from arguments 0, 3 and 4
 * (topic text, ..., partition int, headers jsonb) of the send functions.
 */
void
kp_message_options_from_args(FunctionCallInfo fcinfo, KpNewMessage *msg)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("Kafka topic must not be null")));
	msg->topic = PG_GETARG_TEXT_PP(0);
	msg->partition = PG_ARGISNULL(3) ? RD_KAFKA_PARTITION_UA : PG_GETARG_INT32(3);
	if (msg->partition < 0 && !PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Kafka partition must not be negative"),
				 errhint("Pass NULL to let the partitioner choose.")));
	msg->headers = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
}

/*
 * The message described by the arguments (topic text, value "any",
 * key "any", partition int, headers jsonb) of kafka_send() and
 * kafka_send_sync().
 */
void
kp_message_from_args(FunctionCallInfo fcinfo, KpNewMessage *msg)
{
	KpSendCache *cache;

	kp_message_options_from_args(fcinfo, msg);
	cache = send_cache(fcinfo);
	msg->value = PG_ARGISNULL(1) ? NULL :
		encode_argument(&cache->value, PG_GETARG_DATUM(1));
	msg->key = PG_ARGISNULL(2) ? NULL :
		encode_argument(&cache->key, PG_GETARG_DATUM(2));
}

/*
 * kafka_send(topic text, value "any", key "any", partition int, headers jsonb)
 *		returns the new message's id
 */
Datum
kafka_send(PG_FUNCTION_ARGS)
{
	KpNewMessage msg;

	kp_message_from_args(fcinfo, &msg);
	PG_RETURN_INT64(kp_enqueue(&msg));
}
