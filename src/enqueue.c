/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  kafka_send(): validates a message and writes it to the queue in the
 *	  caller's transaction, so that it exists only if that transaction
 *	  commits; at commit the worker is told, through shared memory, that
 *	  there is something to deliver.
 *
 *	  Rows are written with heap_insert and index_insert directly: the
 *	  executor's per-statement setup would cost more than the insert itself
 *	  when kafka_send() is called once per row of a large query.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/toast_compression.h"
#include "access/toast_internals.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_sequence.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "kafka_producer.h"

PG_FUNCTION_INFO_V1(kafka_send);
PG_FUNCTION_INFO_V1(kafka_wake_worker);
PG_FUNCTION_INFO_V1(kafka_check_database);
PG_FUNCTION_INFO_V1(kafka_check_topic_name);


/*
 * Messages of triggers, and of kafka_send() without headers or partition,
 * wait here, in TopTransactionContext, and go to kafka.outbox_batch
 * several to a row: when KP_WRITE_CHUNK or KP_BUFFERED_BYTES are waiting,
 * at the end of the statement (kp_enqueue_flush from a statement trigger,
 * or from ExecutorEnd for the outermost query) and before commit.  A row
 * and an index entry per page of messages, where kafka_send() made one
 * per message, halves a bulk send, and the worker deletes as few rows.
 *
 * Their ids are taken when they are written, a block at a time under
 * kp_shmem_id_block_lock, so that a row's messages have consecutive ids
 * even while other sessions publish.  Taking them after the change keeps
 * per-key order: another transaction can change the same table row only
 * after this one commits, and so takes its ids later.  kafka_send() takes
 * its id at once, as it returns it, after giving ids to what waits here
 * without one, which keeps the order of enqueueing within a transaction;
 * runs of consecutive ids share a row.
 *
 * Each message remembers its subtransaction: only those of the current one
 * are written, since a row written in a deeper subtransaction would vanish
 * with it; those of an aborted one are dropped, and those of a committed
 * one pass to its parent.
 */
typedef struct KpBufferedMessage
{
	SubTransactionId subid;
	Oid			enqueued_by;
	int64		id;				/* 0 until assign_buffered_ids() */
	bool		counted;		/* in the backlog already (note_written) */
	text	   *topic;			/* the three in the same allocation */
	bytea	   *key;			/* NULL: no key */
	bytea	   *value;			/* NULL: a tombstone */
} KpBufferedMessage;

/* in TopTransactionContext */
static List *buffered = NIL;

/*
 * What the current subtransaction added to buffered since it was last
 * written: what waits for outer ones cannot be written until they are
 * current again, and must not make every message of an inner one be
 * written alone.
 */
static SubTransactionId buffered_subid = InvalidSubTransactionId;
static int	buffered_count = 0;
static Size buffered_bytes = 0;

/* past this many bytes waiting, they are written before the statement ends */
#define KP_BUFFERED_BYTES (8 * 1024 * 1024)

/* how deep in ExecutorRun and ExecutorFinish this backend is */
static int	executor_depth = 0;
static ExecutorRun_hook_type prev_executor_run = NULL;
static ExecutorFinish_hook_type prev_executor_finish = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;

static void enqueue_subxact_callback(SubXactEvent event, SubTransactionId subid,
									 SubTransactionId parent, void *arg);
static void assign_buffered_ids(void);
static void buffer_message(KpNewMessage *msg, int64 id);

/* lowest and highest message id enqueued by the current transaction */
static int64 xact_first_id = -1;
static int64 xact_last_id = -1;
static bool xact_callback_registered = false;
static bool request_worker_at_commit = false;

/*
 * Id ranges of the messages this session committed since its last
 * kafka_flush(), one per transaction; past KP_MAX_SESSION_RANGES they are
 * merged into one, which may also cover other sessions' messages.
 */
/*
 * What the current transaction wrote to the queue, per subtransaction (a
 * list of KpWritten in TopTransactionContext), and in all: it joins the
 * backlog at commit, without what aborted subtransactions wrote.
 */
typedef struct KpWritten
{
	SubTransactionId subid;
	int64		messages;
	int64		bytes;			/* of keys and values */
} KpWritten;

static List *written = NIL;
static int64 written_messages = 0;
static int64 written_bytes = 0;

static int64
payload_bytes(const struct varlena *key, const struct varlena *value)
{
	return (key ? VARSIZE_ANY_EXHDR(key) : 0) +
		(value ? VARSIZE_ANY_EXHDR(value) : 0);
}

/* Counts messages about to be written, refused past the backlog's limit. */
static void
note_written(int64 messages, int64 bytes)
{
	SubTransactionId current = GetCurrentSubTransactionId();
	KpWritten  *last = written != NIL ? llast(written) : NULL;
	MemoryContext old;

	kp_backlog_check(written_messages + messages, written_bytes + bytes,
					 messages, bytes);
	if (last == NULL || last->subid != current)
	{
		old = MemoryContextSwitchTo(TopTransactionContext);
		last = palloc0(sizeof(KpWritten));
		last->subid = current;
		written = lappend(written, last);
		MemoryContextSwitchTo(old);
	}
	last->messages += messages;
	last->bytes += bytes;
	written_messages += messages;
	written_bytes += bytes;
}

static void
forget_written(void)
{
	written = NIL;
	written_messages = written_bytes = 0;
}

#define KP_MAX_SESSION_RANGES 1024
static KpIdRange session_ranges[KP_MAX_SESSION_RANGES];
static int	session_range_count = 0;

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
	/* before PREPARE too: the messages get ids, and so an ERROR below */
	if (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_PARALLEL_PRE_COMMIT ||
		event == XACT_EVENT_PRE_PREPARE)
		kp_enqueue_flush();
	/* while nobody can see the transaction yet: see committing.c */
	if (event == XACT_EVENT_PRE_COMMIT && xact_first_id >= 0 &&
		TransactionIdIsValid(GetTopTransactionIdIfAny()))
		kp_committing_register(GetTopTransactionIdIfAny(), xact_first_id);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
	{
		kp_backlog_add(written_messages, written_bytes);
		if (request_worker_at_commit)
			kp_shmem_request_worker();
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
		request_worker_at_commit = false;
	if (event != XACT_EVENT_PRE_COMMIT && event != XACT_EVENT_PARALLEL_PRE_COMMIT &&
		event != XACT_EVENT_PRE_PREPARE)
	{
		/* they lived in TopTransactionContext */
		buffered = NIL;
		buffered_count = 0;
		buffered_bytes = 0;
		forget_written();
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

static void
register_callbacks(void)
{
	if (xact_callback_registered)
		return;
	RegisterXactCallback(enqueue_xact_callback, NULL);
	RegisterSubXactCallback(enqueue_subxact_callback, NULL);
	xact_callback_registered = true;
}

/*
 * Makes sure the worker hears of messages from id on once the current
 * transaction commits.
 */
void
kp_enqueue_wake_at_commit(int64 id)
{
	register_callbacks();
	if (xact_first_id < 0 || id < xact_first_id)
		xact_first_id = id;
	if (id > xact_last_id)
		xact_last_id = id;
}

/*
 * CREATE EXTENSION runs this: ERROR where nobody would deliver, and once
 * the extension is committed, the launcher starts this database's worker.
 */
Datum
kafka_check_database(PG_FUNCTION_ARGS)
{
	kp_check_serving_database();
	register_callbacks();
	request_worker_at_commit = true;
	PG_RETURN_VOID();
}

Datum
kafka_check_topic_name(PG_FUNCTION_ARGS)
{
	kp_check_topic(PG_GETARG_TEXT_PP(0));
	PG_RETURN_VOID();
}

Datum
kafka_wake_worker(PG_FUNCTION_ARGS)
{
	kp_check_serving_database();
	kp_enqueue_wake_at_commit(PG_GETARG_INT64(0));
	PG_RETURN_VOID();
}

/* A block is first + 0 .. count - 1: nextval must step by 1, uncached. */
static void
check_sequence_steps(Oid sequence)
{
	HeapTuple	tuple = SearchSysCache1(SEQRELID, ObjectIdGetDatum(sequence));
	Form_pg_sequence form;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for sequence %u", sequence);
	form = (Form_pg_sequence) GETSTRUCT(tuple);
	if (form->seqincrement != 1 || form->seqcache != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sequence %s.message_id_seq must have INCREMENT 1 and CACHE 1",
						KP_SCHEMA_NAME),
				 errdetail("Its increment is " INT64_FORMAT " and its cache " INT64_FORMAT ".",
						   form->seqincrement, form->seqcache),
				 errhint("Restore them with ALTER SEQUENCE %s.message_id_seq INCREMENT 1 CACHE 1.",
						 KP_SCHEMA_NAME)));
	ReleaseSysCache(tuple);
}

/*
 * Locks kafka.message_id_seq for nextval: a backend that takes a block of
 * ids (and setval) takes it exclusively, anyone else shared.  Nothing may
 * wait under the LWLock, where no cancel and no deadlock check reaches:
 * nextval's lock is taken, and what nextval and setval look up is loaded
 * (the relation, the privileges), before it.
 */
static Oid
lock_message_ids(LWLockMode mode)
{
	Oid			sequence = kp_relation_oid("message_id_seq");

	LockRelationOid(sequence, RowExclusiveLock);
	relation_close(relation_open(sequence, NoLock), NoLock);
	if (mode == LW_EXCLUSIVE)
	{
		check_sequence_steps(sequence);
		(void) pg_class_aclcheck(sequence, GetUserId(), ACL_UPDATE);
	}
	LWLockAcquire(kp_shmem_id_block_lock(), mode);
	return sequence;
}

/* A new message id, never inside another backend's block of ids. */
int64
kp_next_message_id(void)
{
	Oid			sequence = lock_message_ids(LW_SHARED);
	int64		id = nextval_internal(sequence, false);

	LWLockRelease(kp_shmem_id_block_lock());
	return id;
}

/* Whether msg may be enqueued here and now. */
static void
check_enqueue(KpNewMessage *msg)
{
	kp_check_serving_database();
	PreventCommandIfReadOnly("kafka_send()");
	PreventCommandIfParallelMode("kafka_send()");
	kp_message_check(msg);
}

/* a queue table, opened when first written to */
typedef struct KpLazyTable
{
	Relation	(*open) (LOCKMODE lockmode);
	Relation	rel;
	KpIndexes	indexes;
} KpLazyTable;

static Relation
lazy_table(KpLazyTable *table)
{
	if (table->rel == NULL)
	{
		table->rel = table->open(RowExclusiveLock);
		kp_indexes_open(table->rel, &table->indexes);
	}
	return table->rel;
}

static void
lazy_table_close(KpLazyTable *table)
{
	if (table->rel == NULL)
		return;
	kp_indexes_close(&table->indexes);
	table_close(table->rel, NoLock);
}

/* Writes msg, with id, as a kafka.outbox row. */
static void
insert_outbox_row(KpLazyTable *outbox, KpNewMessage *msg, int64 id,
				  TimestampTz enqueued_at, Oid enqueued_by)
{
	Datum		values[OUTBOX_NATTS];
	bool		nulls[OUTBOX_NATTS] = {false};

	values[OUTBOX_ID] = Int64GetDatum(id);
	values[OUTBOX_TOPIC] = PointerGetDatum(msg->topic);
	values[OUTBOX_KEY] = PointerGetDatum(msg->key);
	nulls[OUTBOX_KEY] = msg->key == NULL;
	values[OUTBOX_VALUE] = PointerGetDatum(msg->value);
	nulls[OUTBOX_VALUE] = msg->value == NULL;
	values[OUTBOX_HEADERS] = PointerGetDatum(msg->headers);
	nulls[OUTBOX_HEADERS] = msg->headers == NULL;
	values[OUTBOX_PARTITION] = Int32GetDatum(msg->partition);
	nulls[OUTBOX_PARTITION] = msg->partition == KP_PARTITION_ANY;
	values[OUTBOX_ATTEMPTS] = Int32GetDatum(0);
	nulls[OUTBOX_LAST_ERROR] = true;
	values[OUTBOX_ENQUEUED_AT] = TimestampTzGetDatum(enqueued_at);
	values[OUTBOX_ENQUEUED_BY] = ObjectIdGetDatum(enqueued_by);
	kp_insert_row(lazy_table(outbox), &outbox->indexes, values, nulls, NULL);
}

/*
 * Enqueues a message in the current transaction: the worker delivers it
 * once the transaction commits.  Returns its id.  With headers or a
 * partition it is a kafka.outbox row at once; otherwise it waits to share
 * a kafka.outbox_batch row with the statement's others.
 */
int64
kp_enqueue(KpNewMessage *msg)
{
	int64		id;

	check_enqueue(msg);
	/* refused here past the backlog's limit, even if written later */
	note_written(1, payload_bytes(msg->key, msg->value));
	if (buffered != NIL)
		assign_buffered_ids();
	id = kp_next_message_id();
	kp_enqueue_wake_at_commit(id);
	if (msg->headers == NULL && msg->partition == KP_PARTITION_ANY)
		buffer_message(msg, id);
	else
	{
		KpLazyTable outbox = {.open = kp_outbox_open};

		insert_outbox_row(&outbox, msg, id, GetCurrentTimestamp(), GetUserId());
		lazy_table_close(&outbox);
	}
	return id;
}

/* a copy of bytes in *space, with a 4-byte header as arrays want */
static bytea *
copy_bytes(const struct varlena *bytes, char **space)
{
	bytea	   *copy = (bytea *) *space;
	Size		len = VARSIZE_ANY_EXHDR(bytes);

	SET_VARSIZE(copy, VARHDRSZ + len);
	memcpy(VARDATA(copy), VARDATA_ANY(bytes), len);
	*space += INTALIGN(VARHDRSZ + len);
	return copy;
}

static Size
copy_size(const struct varlena *bytes)
{
	return bytes == NULL ? 0 : INTALIGN(VARHDRSZ + VARSIZE_ANY_EXHDR(bytes));
}

/*
 * Adds msg to the messages waiting for kafka.outbox_batch, with its id, or
 * 0 to be given one when written.
 */
static void
buffer_message(KpNewMessage *msg, int64 id)
{
	KpBufferedMessage *buffered_msg;
	char	   *space;
	Size		size;
	MemoryContext old;

	Assert(msg->headers == NULL && msg->partition == KP_PARTITION_ANY);
	/* to write what waits at commit, and drop what a subtransaction undoes */
	register_callbacks();
	size = MAXALIGN(sizeof(KpBufferedMessage)) + copy_size(msg->topic) +
		copy_size(msg->key) + copy_size(msg->value);
	space = MemoryContextAlloc(TopTransactionContext, size);
	buffered_msg = (KpBufferedMessage *) space;
	space += MAXALIGN(sizeof(KpBufferedMessage));
	buffered_msg->subid = GetCurrentSubTransactionId();
	buffered_msg->enqueued_by = GetUserId();
	buffered_msg->id = id;
	buffered_msg->counted = id != 0;
	buffered_msg->topic = copy_bytes(msg->topic, &space);
	buffered_msg->key = msg->key ? copy_bytes(msg->key, &space) : NULL;
	buffered_msg->value = msg->value ? copy_bytes(msg->value, &space) : NULL;
	old = MemoryContextSwitchTo(TopTransactionContext);
	buffered = lappend(buffered, buffered_msg);
	MemoryContextSwitchTo(old);
	if (buffered_subid != buffered_msg->subid)
	{
		buffered_subid = buffered_msg->subid;
		buffered_count = 0;
		buffered_bytes = 0;
	}
	buffered_count++;
	buffered_bytes += size;
	if (buffered_count >= KP_WRITE_CHUNK || buffered_bytes >= KP_BUFFERED_BYTES)
		kp_enqueue_flush();
}

/* As kp_enqueue, but for a trigger: the id is taken when written. */
void
kp_enqueue_buffered(KpNewMessage *msg)
{
	check_enqueue(msg);
	buffer_message(msg, 0);
}

/*
 * Takes count consecutive message ids; returns the first.  Nobody takes
 * an id between nextval and setval: they all hold the LWLock.  setval runs
 * as the sequence's owner: the publishing user need not have UPDATE on it.
 */
static int64
take_id_block(int count)
{
	KpSavedUser saved;
	Oid			sequence;
	int64		first;

	kp_begin_as_owner(&saved);
	sequence = lock_message_ids(LW_EXCLUSIVE);
	first = nextval_internal(sequence, false);
	if (count > 1)
		DirectFunctionCall2(setval_oid, ObjectIdGetDatum(sequence),
							Int64GetDatum(first + count - 1));
	LWLockRelease(kp_shmem_id_block_lock());
	kp_end_as_owner(&saved);
	return first;
}

/* Gives consecutive ids, in order, to the waiting messages without one. */
static void
assign_buffered_ids(void)
{
	int			count = 0;
	int64		next;
	ListCell   *lc;

	foreach(lc, buffered)
		count += ((KpBufferedMessage *) lfirst(lc))->id == 0;
	if (count == 0)
		return;
	next = take_id_block(count);
	kp_enqueue_wake_at_commit(next);
	kp_enqueue_wake_at_commit(next + count - 1);
	foreach(lc, buffered)
	{
		KpBufferedMessage *msg = lfirst(lc);

		if (msg->id == 0)
			msg->id = next++;
	}
}

/* what a message adds to a batch row: two array elements, two null bits */
static Size
batch_row_share(KpBufferedMessage *msg)
{
	return copy_size(msg->key) + copy_size(msg->value) + 1;
}

static Datum
bytea_array(KpBufferedMessage **msgs, int count, bool keys)
{
	Datum	   *elements = palloc(count * sizeof(Datum));
	bool	   *nulls = palloc(count * sizeof(bool));
	int			dims[1] = {count};
	int			lbs[1] = {1};
	ArrayType  *array;

	for (int i = 0; i < count; i++)
	{
		bytea	   *bytes = keys ? msgs[i]->key : msgs[i]->value;

		elements[i] = PointerGetDatum(bytes);
		nulls[i] = bytes == NULL;
	}
	array = construct_md_array(elements, nulls, 1, dims, lbs, BYTEAOID, -1,
							   false, TYPALIGN_INT);
	pfree(elements);
	pfree(nulls);
	return PointerGetDatum(array);
}

/*
 * Whether kafka.outbox_batch stores its keys and values compressed with
 * lz4 (see the extension script): then rows are sized by what they take
 * once compressed.
 */
static bool
batch_compressed(Relation batch)
{
	Form_pg_attribute values = TupleDescAttr(RelationGetDescr(batch),
											 BATCH_VALUES);

	return values->attcompression == TOAST_LZ4_COMPRESSION;
}

/* keys or values compressed with the column's method; NULL: they do not */
static struct varlena *
compressed_array(Relation batch, int column, Datum array)
{
	Form_pg_attribute attr = TupleDescAttr(RelationGetDescr(batch), column);

	Assert(CompressionMethodIsValid(attr->attcompression));
	return (struct varlena *)
		DatumGetPointer(toast_compress_datum(array, attr->attcompression));
}

/*
 * Replaces the arrays of a row of more than KP_BATCH_ROW_BYTES by their
 * compressed forms, which the toaster keeps as they are, if those fit in
 * KP_BATCH_ROW_BYTES; false if they do not.
 */
static bool
compress_large_row(Relation batch, Datum *values)
{
	struct varlena *keys = compressed_array(batch, BATCH_KEYS,
											values[BATCH_KEYS]);
	struct varlena *vals = keys == NULL ? NULL :
		compressed_array(batch, BATCH_VALUES, values[BATCH_VALUES]);
	Size		topic = VARSIZE_ANY(DatumGetPointer(values[BATCH_TOPIC]));
	bool		fits = vals != NULL &&
		VARSIZE(keys) + VARSIZE(vals) + topic <= KP_BATCH_ROW_BYTES;

	if (fits)
	{
		pfree(DatumGetPointer(values[BATCH_KEYS]));
		pfree(DatumGetPointer(values[BATCH_VALUES]));
		values[BATCH_KEYS] = PointerGetDatum(keys);
		values[BATCH_VALUES] = PointerGetDatum(vals);
		return true;
	}
	if (keys != NULL)
		pfree(keys);
	if (vals != NULL)
		pfree(vals);
	return false;
}

/*
 * Writes the row holding msgs[0 .. count - 1], which take bytes of it;
 * false, writing nothing, if they take more than KP_BATCH_ROW_BYTES and
 * do not compress into it.  A row at a time, not with table_multi_insert:
 * a row fills most of a page, and a thousand of them held for a
 * multi-insert made the backend's heap grow and shrink.
 */
static bool
insert_batch_row(KpLazyTable *batch, TimestampTz enqueued_at,
				 KpBufferedMessage **msgs, int count, Size bytes)
{
	Datum		values[BATCH_NATTS];
	bool		nulls[BATCH_NATTS] = {false};
	Relation	rel = lazy_table(batch);

	values[BATCH_FIRST_ID] = Int64GetDatum(msgs[0]->id);
	values[BATCH_TOPIC] = PointerGetDatum(msgs[0]->topic);
	values[BATCH_KEYS] = bytea_array(msgs, count, true);
	values[BATCH_VALUES] = bytea_array(msgs, count, false);
	values[BATCH_ENQUEUED_AT] = TimestampTzGetDatum(enqueued_at);
	values[BATCH_ENQUEUED_BY] = ObjectIdGetDatum(msgs[0]->enqueued_by);
	if (bytes <= KP_BATCH_ROW_BYTES || compress_large_row(rel, values))
		kp_insert_row(rel, &batch->indexes, values, nulls, NULL);
	else
		count = 0;
	pfree(DatumGetPointer(values[BATCH_KEYS]));
	pfree(DatumGetPointer(values[BATCH_VALUES]));
	return count > 0;
}

/*
 * Writes a message alone in its run of ids as a kafka.outbox row: the
 * worker's scans of kafka.outbox_batch start a row's length before their
 * position, and with a row per message (8 sessions committing three
 * statements of one message each) every scan read hundreds of rows.
 */
static void
insert_single_row(KpLazyTable *outbox, TimestampTz enqueued_at,
				  KpBufferedMessage *msg)
{
	KpNewMessage single = {
		.topic = msg->topic,
		.key = msg->key,
		.value = msg->value,
		.partition = KP_PARTITION_ANY,
	};

	insert_outbox_row(outbox, &single, msg->id, enqueued_at, msg->enqueued_by);
}

/*
 * Whether msgs[i] may join the row of msgs[first .. i - 1], which take
 * bytes of it: the next id, of the same topic and role, with room left
 * of limit.
 */
static bool
joins_row(KpBufferedMessage **msgs, int first, int i, Size bytes, Size limit)
{
	return msgs[i]->id == msgs[i - 1]->id + 1 &&
		datum_image_eq(PointerGetDatum(msgs[i]->topic),
					   PointerGetDatum(msgs[first]->topic), false, -1) &&
		msgs[i]->enqueued_by == msgs[first]->enqueued_by &&
		i - first < KP_BATCH_ROW_MESSAGES &&
		bytes + batch_row_share(msgs[i]) <= limit;
}

/*
 * Writes msgs[0 .. count - 1], in id order, as rows of consecutive ids of
 * one topic of at most limit bytes; a row over KP_BATCH_ROW_BYTES that
 * does not compress into it is written again as rows of that size, which
 * fit in a page as they are.
 */
static void
write_rows(KpLazyTable *batch, KpLazyTable *outbox, TimestampTz now,
		   KpBufferedMessage **msgs, int count, Size limit)
{
	int			first = 0;
	Size		bytes = 0;

	for (int i = 0; i < count; i++)
	{
		bytes += batch_row_share(msgs[i]);
		if (i + 1 < count && joins_row(msgs, first, i + 1, bytes, limit))
			continue;
		if (i == first)
			insert_single_row(outbox, now, msgs[i]);
		else if (!insert_batch_row(batch, now, msgs + first, i + 1 - first,
								   bytes))
			write_rows(batch, outbox, now, msgs + first, i + 1 - first,
					   KP_BATCH_ROW_BYTES);
		first = i + 1;
		bytes = 0;
	}
}

/*
 * Writes msgs[0 .. count - 1] as rows of up to KP_BATCH_ROW_RAW_BYTES that
 * fit in a page once compressed (of KP_BATCH_ROW_BYTES where the table is
 * stored uncompressed), stored without TOAST unless a single message is
 * larger.  They count as enqueued now, at the end of their statement at
 * the latest: a clock reading per event showed in profiles.
 */
static void
write_batch_rows(KpBufferedMessage **msgs, int count)
{
	KpLazyTable batch = {.open = kp_outbox_batch_open};
	KpLazyTable outbox = {.open = kp_outbox_open};
	int64		uncounted = 0;
	int64		payload = 0;

	for (int i = 0; i < count; i++)
	{
		if (msgs[i]->counted)
			continue;
		uncounted++;
		payload += payload_bytes(msgs[i]->key, msgs[i]->value);
	}
	if (uncounted > 0)
		note_written(uncounted, payload);
	write_rows(&batch, &outbox, GetCurrentTimestamp(), msgs, count,
			   batch_compressed(lazy_table(&batch)) ?
			   KP_BATCH_ROW_RAW_BYTES : KP_BATCH_ROW_BYTES);
	lazy_table_close(&outbox);
	lazy_table_close(&batch);
}

/* Writes the waiting messages of the current subtransaction. */
void
kp_enqueue_flush(void)
{
	SubTransactionId current = GetCurrentSubTransactionId();
	KpBufferedMessage **msgs;
	List	   *kept = NIL;
	int			count = 0;
	ListCell   *lc;
	MemoryContext old;

	if (buffered == NIL)
		return;
	assign_buffered_ids();
	msgs = palloc(list_length(buffered) * sizeof(KpBufferedMessage *));
	old = MemoryContextSwitchTo(TopTransactionContext);
	foreach(lc, buffered)
	{
		KpBufferedMessage *msg = lfirst(lc);

		if (msg->subid == current)
			msgs[count++] = msg;
		else
			kept = lappend(kept, msg);
	}
	MemoryContextSwitchTo(old);
	if (count > 0)
		write_batch_rows(msgs, count);
	/* a large transaction would otherwise hold all of its events */
	for (int i = 0; i < count; i++)
		pfree(msgs[i]);
	pfree(msgs);
	list_free(buffered);
	buffered = kept;
	buffered_count = 0;
	buffered_bytes = 0;
}

static void
executor_run(QueryDesc *query, ScanDirection direction, uint64 count,
			 bool execute_once)
{
	executor_depth++;
	PG_TRY();
	{
		if (prev_executor_run)
			prev_executor_run(query, direction, count, execute_once);
		else
			standard_ExecutorRun(query, direction, count, execute_once);
	}
	PG_FINALLY();
	{
		executor_depth--;
	}
	PG_END_TRY();
}

static void
executor_finish(QueryDesc *query)
{
	executor_depth++;
	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(query);
		else
			standard_ExecutorFinish(query);
	}
	PG_FINALLY();
	{
		executor_depth--;
	}
	PG_END_TRY();
}

/*
 * The end of an outermost query is the end of a statement: what it sent
 * is written, and the next statement sees it in kafka.messages.  Nested
 * queries (a function's, once per row) leave it waiting to share rows.
 */
static void
executor_end(QueryDesc *query)
{
	if (prev_executor_end)
		prev_executor_end(query);
	else
		standard_ExecutorEnd(query);
	if (executor_depth == 0)
		kp_enqueue_flush();
}

void
kp_enqueue_init(void)
{
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = executor_run;
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = executor_finish;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = executor_end;
}

static void
enqueue_subxact_callback(SubXactEvent event, SubTransactionId subid,
						 SubTransactionId parent, void *arg)
{
	ListCell   *lc;

	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, buffered)
			if (((KpBufferedMessage *) lfirst(lc))->subid == subid)
				((KpBufferedMessage *) lfirst(lc))->subid = parent;
		foreach(lc, written)
			if (((KpWritten *) lfirst(lc))->subid == subid)
				((KpWritten *) lfirst(lc))->subid = parent;
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, buffered)
		{
			KpBufferedMessage *msg = lfirst(lc);

			if (msg->subid < subid)
				continue;
			buffered = foreach_delete_current(buffered, lc);
			pfree(msg);
		}
		foreach(lc, written)
		{
			KpWritten  *w = lfirst(lc);

			if (w->subid < subid)
				continue;
			written_messages -= w->messages;
			written_bytes -= w->bytes;
			written = foreach_delete_current(written, lc);
			pfree(w);
		}
	}
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
