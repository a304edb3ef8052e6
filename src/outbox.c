/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The worker's reads and writes of the queue tables: each round of
 *	  sending scans them, and each step that records delivery reports
 *	  writes their outcomes.
 *
 *	  Per message, after kafka_send()'s insert, the worker writes once, in
 *	  chunks: it deletes the delivered rows from kafka.outbox and inserts
 *	  their delivery records (partition, offset) into kafka.delivered, with
 *	  heap functions; an SQL statement moves failures to kafka.failed, or
 *	  counts the attempt of a transient one.  Published changes wait in
 *	  kafka.outbox_batch, many to a row, deleted once all are delivered.
 *	  Reading is a range scan of both tables' primary keys, merged; they
 *	  hold undelivered messages only.
 *
 *	  Every function here runs inside the worker's transaction, with SPI
 *	  connected.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/vacuum.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/bufmgr.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "delivery.h"

/* a round of sending ends after this many messages or bytes, whichever first */
#define KP_ROUND_MESSAGES 10000
#define KP_ROUND_BYTES (32 * 1024 * 1024)

/* see kp_outbox_vacuum_due() */
#define KP_VACUUM_MIN_ROWS 20000
#define KP_VACUUM_MAX_BACKLOG 1000000

static SPIPlanPtr failed_plan = NULL;
static SPIPlanPtr prune_plan = NULL;
static SPIPlanPtr summarize_plan = NULL;

/*
 * Plans are generic, always: a custom plan for a batch of 10,000 ids would
 * estimate unnest() exactly and could prefer a hash join over a sequential
 * scan of the whole outbox to 10,000 index probes.
 */
static SPIPlanPtr
prepare_once(SPIPlanPtr *plan, const char *query, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare_cursor(query, nargs, argtypes,
										   CURSOR_OPT_GENERIC_PLAN);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", query,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

static void
bytes_of(TupleTableSlot *slot, int column, const char **data, size_t *len)
{
	bytea	   *bytes;

	*data = NULL;
	*len = 0;
	if (slot->tts_isnull[column])
		return;
	bytes = DatumGetByteaPP(slot->tts_values[column]);
	*data = VARDATA_ANY(bytes);
	*len = VARSIZE_ANY_EXHDR(bytes);
}

static TransactionId
raw_xmin(TupleTableSlot *slot)
{
	bool		isnull;

	return DatumGetTransactionId(slot_getsysattr(slot,
												 MinTransactionIdAttributeNumber,
												 &isnull));
}

/*
 * Puts msg's Avro key and value in Confluent's wire format.  Returns
 * KP_SEND_QUEUED when msg can be sent, else what became of it.
 */
static KpSendResult
frame_for_registry(KpMessage *msg, KpReportBuffer *buf)
{
	const char *refusal = NULL;
	KpRegistryResult key = kp_registry_frame(msg->topic, true, &msg->key,
											 &msg->key_len, &refusal);
	KpRegistryResult value = key == KP_REGISTRY_UNAVAILABLE ? key :
		kp_registry_frame(msg->topic, false, &msg->value, &msg->value_len,
						  &refusal);

	if (key == KP_REGISTRY_UNAVAILABLE || value == KP_REGISTRY_UNAVAILABLE)
		return KP_SEND_HELD_BACK;
	if (refusal != NULL)
		return kp_producer_refuse(msg, buf, "SCHEMA_REGISTRY_REFUSED", refusal);
	return KP_SEND_QUEUED;
}

/*
 * Where a scan reads messages from: kafka.outbox, a message per row, or
 * kafka.outbox_batch, several; either in id order through the primary key.
 */
typedef struct KpScanSource
{
	bool		batched;
	Relation	rel;
	Relation	index;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	MemoryContext row_context;	/* what is made of the current row */
	bool		exhausted;
	int64		first_id;		/* the current row's first message id */
	int			count;			/* and how many messages it holds (0: none
								 * read yet) */
	int			next;			/* the next of them to send */
	char	   *topic;
	Datum	   *keys;
	bool	   *key_nulls;
	Datum	   *values;
	bool	   *value_nulls;
} KpScanSource;

static void
source_open(KpScanSource *src, bool batched, int64 after_id)
{
	ScanKeyData key;

	memset(src, 0, sizeof(*src));
	src->batched = batched;
	src->rel = batched ? kp_outbox_batch_open(AccessShareLock) :
		kp_outbox_open(AccessShareLock);
	src->index = index_open(RelationGetPrimaryKeyIndex(src->rel),
							AccessShareLock);
	src->slot = table_slot_create(src->rel, NULL);
	src->row_context = AllocSetContextCreate(CurrentMemoryContext,
											 "kafka_producer outbox row",
											 ALLOCSET_DEFAULT_SIZES);
	src->scan = index_beginscan(src->rel, src->index, GetActiveSnapshot(), 1, 0);
	/* a batch row that starts at or before after_id may end after it */
	ScanKeyInit(&key, 1, BTGreaterStrategyNumber, F_INT8GT,
				Int64GetDatum(batched ? after_id - KP_BATCH_ROW_MESSAGES : after_id));
	index_rescan(src->scan, &key, 1, NULL, 0);
}

static void
source_close(KpScanSource *src)
{
	index_endscan(src->scan);
	ExecDropSingleTupleTableSlot(src->slot);
	MemoryContextDelete(src->row_context);
	index_close(src->index, AccessShareLock);
	table_close(src->rel, AccessShareLock);
}

static void
deconstruct_bytes(Datum array, Datum **elements, bool **nulls, int *count)
{
	deconstruct_array(DatumGetArrayTypeP(array), BYTEAOID, -1, false,
					  TYPALIGN_INT, elements, nulls, count);
}

/*
 * The values of the batch row in slot, which has key_count keys.  Read
 * only when needed: they are most of a row, and may be TOASTed.
 */
static void
batch_row_values(TupleTableSlot *slot, int key_count, Datum **values,
				 bool **nulls)
{
	int			count;

	deconstruct_bytes(slot->tts_values[BATCH_VALUES], values, nulls, &count);
	if (count != key_count)
		elog(ERROR, "kafka.outbox_batch row " INT64_FORMAT " has %d keys and %d values",
			 DatumGetInt64(slot->tts_values[BATCH_FIRST_ID]), key_count, count);
}

/*
 * Reads the batch row in the slot: its keys, and its values only if it
 * holds a message after after_id.  A scan starts up to a row's length
 * before its position, and the rows it passes over may be large.
 */
static void
load_batch_row(KpScanSource *src, int64 after_id)
{
	TupleTableSlot *slot = src->slot;
	MemoryContext outer = MemoryContextSwitchTo(src->row_context);

	src->first_id = DatumGetInt64(slot->tts_values[BATCH_FIRST_ID]);
	deconstruct_bytes(slot->tts_values[BATCH_KEYS], &src->keys,
					  &src->key_nulls, &src->count);
	if (src->first_id + src->count - 1 > after_id)
	{
		src->topic = TextDatumGetCString(slot->tts_values[BATCH_TOPIC]);
		batch_row_values(slot, src->count, &src->values, &src->value_nulls);
	}
	MemoryContextSwitchTo(outer);
}

/*
 * Makes the source's next message the first after after_id, reading rows
 * as needed; false when it has no more.
 */
static bool
source_ready(KpScanSource *src, int64 after_id)
{
	while (src->next >= src->count)
	{
		if (src->exhausted ||
			!index_getnext_slot(src->scan, ForwardScanDirection, src->slot))
		{
			src->exhausted = true;
			return false;
		}
		MemoryContextReset(src->row_context);
		slot_getallattrs(src->slot);
		if (src->batched)
			load_batch_row(src, after_id);
		else
		{
			src->first_id = DatumGetInt64(src->slot->tts_values[OUTBOX_ID]);
			src->count = 1;
		}
		src->next = Max(0, after_id + 1 - src->first_id);
	}
	return true;
}

static int64
source_id(KpScanSource *src)
{
	return src->first_id + src->next;
}

/* The source whose next message comes first, or NULL when both are done. */
static KpScanSource *
next_source(KpScanSource *outbox, KpScanSource *batch, int64 after_id)
{
	bool		outbox_ready = source_ready(outbox, after_id);
	bool		batch_ready = source_ready(batch, after_id);

	if (outbox_ready && batch_ready)
		return source_id(outbox) < source_id(batch) ? outbox : batch;
	return outbox_ready ? outbox : batch_ready ? batch : NULL;
}

static void
batch_bytes_of(Datum *elements, bool *nulls, int i, const char **data,
			   size_t *len)
{
	*data = NULL;
	*len = 0;
	if (nulls[i])
		return;
	*data = VARDATA_ANY(DatumGetPointer(elements[i]));
	*len = VARSIZE_ANY_EXHDR(DatumGetPointer(elements[i]));
}

/* The source's next message, its payload where the source keeps it. */
static void
source_message(KpScanSource *src, KpMessage *msg)
{
	TupleTableSlot *slot = src->slot;

	msg->id = source_id(src);
	msg->outbox_row.tid = slot->tts_tid;
	msg->outbox_row.xmin = raw_xmin(slot);
	/* before the headers, which librdkafka owns once they are made */
	msg->headers = NULL;
	msg->enqueued_at = DatumGetTimestampTz(slot->tts_values[src->batched ?
															BATCH_ENQUEUED_AT :
															OUTBOX_ENQUEUED_AT]);
	if (src->batched)
	{
		msg->outbox_row.batch_first_id = src->first_id;
		msg->topic = src->topic;
		batch_bytes_of(src->keys, src->key_nulls, src->next, &msg->key,
					   &msg->key_len);
		batch_bytes_of(src->values, src->value_nulls, src->next, &msg->value,
					   &msg->value_len);
		msg->partition = RD_KAFKA_PARTITION_UA;
		msg->stored_bytes = msg->key_len + msg->value_len;
		return;
	}
	msg->outbox_row.batch_first_id = 0;
	msg->topic = TextDatumGetCString(slot->tts_values[OUTBOX_TOPIC]);
	bytes_of(slot, OUTBOX_KEY, &msg->key, &msg->key_len);
	bytes_of(slot, OUTBOX_VALUE, &msg->value, &msg->value_len);
	msg->partition = slot->tts_isnull[OUTBOX_PARTITION] ? RD_KAFKA_PARTITION_UA :
		DatumGetInt32(slot->tts_values[OUTBOX_PARTITION]);
	msg->stored_bytes = msg->key_len + msg->value_len;
}

/* Hands the source's next message to the producer. */
static KpSendResult
send_next(KpScanSource *src, KpReportBuffer *buf, size_t *bytes)
{
	KpMessage	msg;
	int32		partition;
	int64		offset;

	source_message(src, &msg);
	if (kp_reconcile_found(&msg, &partition, &offset))
		return kp_producer_found(&msg, buf, partition, offset);
	if (kp_registry_enabled())
	{
		KpSendResult held_or_refused = frame_for_registry(&msg, buf);

		if (held_or_refused != KP_SEND_QUEUED)
			return held_or_refused;
	}
	if (!src->batched && !src->slot->tts_isnull[OUTBOX_HEADERS])
		msg.headers = kp_headers_from_jsonb(DatumGetJsonbP(src->slot->tts_values[OUTBOX_HEADERS]));
	*bytes += msg.key_len + msg.value_len;
	return kp_producer_send(&msg, buf);
}

/*
 * Sends the messages after after_id in id order, from kafka.outbox and
 * kafka.outbox_batch, skipping those already in flight, until max_messages
 * are sent or the round is full (but never leaving a batch row half sent),
 * librdkafka's queue is, or a message must wait for the schema registry.
 * Returns the id up to which everything is now in flight or done: the next
 * scan starts after it.  *exhausted: it read all there was to read.
 *
 * The scan walks the primary key indexes itself rather than asking the
 * planner: a queue table's statistics are always stale (it was empty at
 * the last ANALYZE, or full), and a plan that sorts the whole outbox for
 * each round made draining a million messages five times slower.
 */
int64
kp_outbox_send_round(int64 after_id, int max_messages, KpReportBuffer *buf,
					 bool *queue_full, bool *held_back, bool *exhausted)
{
	KpScanSource outbox;
	KpScanSource batch;
	KpScanSource *src;
	MemoryContext message_context = AllocSetContextCreate(CurrentMemoryContext,
														  "kafka_producer message",
														  ALLOCSET_DEFAULT_SIZES);
	int64		last_id = after_id;
	int			sent = 0;
	size_t		bytes = 0;

	*queue_full = false;
	*held_back = false;
	*exhausted = false;
	max_messages = Min(max_messages, KP_ROUND_MESSAGES);
	source_open(&outbox, false, after_id);
	source_open(&batch, true, after_id);

	while ((src = next_source(&outbox, &batch, last_id)) != NULL)
	{
		int64		id = source_id(src);
		bool		mid_row = src->next > 0;

		if ((sent >= max_messages || bytes >= KP_ROUND_BYTES) && !mid_row)
			break;
		if (!kp_producer_is_in_flight(id))
		{
			MemoryContext outer = MemoryContextSwitchTo(message_context);
			KpSendResult result = send_next(src, buf, &bytes);

			MemoryContextSwitchTo(outer);
			MemoryContextReset(message_context);
			*queue_full = result == KP_SEND_QUEUE_FULL;
			*held_back = result == KP_SEND_HELD_BACK;
			if (result == KP_SEND_QUEUE_FULL || result == KP_SEND_HELD_BACK)
				break;
			sent++;
		}
		last_id = id;
		src->next++;
	}
	*exhausted = src == NULL;

	source_close(&outbox);
	source_close(&batch);
	MemoryContextDelete(message_context);
	return last_id;
}

/*
 * Messages the worker deleted from the queue tables (a batch row of many
 * is most of a page), and rows from kafka.delivered, since it last
 * vacuumed them.
 */
static int64 queue_messages_deleted = 0;
static int64 delivered_rows_deleted = 0;
/* whether it deleted any since its last VACUUM that let them shrink */
static bool shrinkable = false;

static void
execute_plan(SPIPlanPtr plan, Datum *args, int expected)
{
	int			rc = SPI_execute_plan(plan, args, NULL, false, 0);

	if (rc != expected)
		elog(ERROR, "recording Kafka delivery reports failed: %s",
			 SPI_result_code_string(rc));
}

static void
notify_datums(const char *status, Datum *ids, int count)
{
	int64	   *values = palloc(count * sizeof(int64));

	for (int i = 0; i < count; i++)
		values[i] = DatumGetInt64(ids[i]);
	kp_notify_ids(status, values, count);
}

/* rows written a chunk at a time with table_multi_insert */
typedef struct KpSlotCache
{
	struct TupleDescData *desc;
	struct TupleTableSlot *slots[KP_WRITE_CHUNK];
} KpSlotCache;

typedef struct KpChunkWriter
{
	Relation	rel;
	KpIndexes	indexes;
	CommandId	cid;
	int			count;
	struct TupleTableSlot **slots;
} KpChunkWriter;


/* kafka.delivered's columns, in table order */
typedef enum KpDeliveredColumn
{
	DELIVERED_ID,
	DELIVERED_TOPIC,
	DELIVERED_KEY,
	DELIVERED_PARTITION,
	DELIVERED_OFFSET,
	DELIVERED_ATTEMPTS,
	DELIVERED_ENQUEUED_AT,
	DELIVERED_AT,
	DELIVERED_ENQUEUED_BY,
	DELIVERED_NATTS
} KpDeliveredColumn;

static const char *const delivered_columns[DELIVERED_NATTS] = {
	[DELIVERED_ID] = "id",
	[DELIVERED_TOPIC] = "topic",
	[DELIVERED_KEY] = "key",
	[DELIVERED_PARTITION] = "partition",
	[DELIVERED_OFFSET] = "offset",
	[DELIVERED_ATTEMPTS] = "attempts",
	[DELIVERED_ENQUEUED_AT] = "enqueued_at",
	[DELIVERED_AT] = "delivered_at",
	[DELIVERED_ENQUEUED_BY] = "enqueued_by",
};

/*
 * A chunk writer: rows go to the heap with table_multi_insert, a chunk at
 * a time, then into the indexes.  Its slots are kept from chunk to chunk
 * in a KpSlotCache of the caller's: making a thousand slots showed in
 * profiles.  The copy keeps the constraints, which equalTupleDescs
 * compares: without them no table with a NOT NULL column matched.
 */
static void
chunk_open(KpChunkWriter *writer, Relation rel, KpSlotCache *cache)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (cache->desc == NULL || !equalTupleDescs(desc, cache->desc))
	{
		MemoryContext outer = MemoryContextSwitchTo(TopMemoryContext);

		for (int i = 0; i < KP_WRITE_CHUNK; i++)
		{
			if (cache->slots[i] != NULL)
				ExecDropSingleTupleTableSlot(cache->slots[i]);
			cache->slots[i] = NULL;
		}
		if (cache->desc != NULL)
			FreeTupleDesc(cache->desc);
		cache->desc = CreateTupleDescCopyConstr(desc);
		for (int i = 0; i < KP_WRITE_CHUNK; i++)
			cache->slots[i] = MakeSingleTupleTableSlot(cache->desc,
													   &TTSOpsHeapTuple);
		MemoryContextSwitchTo(outer);
	}
	writer->rel = rel;
	writer->slots = cache->slots;
	writer->count = 0;
	kp_indexes_open(rel, &writer->indexes);
	writer->cid = GetCurrentCommandId(true);
}

static void
chunk_flush(KpChunkWriter *writer)
{
	table_multi_insert(writer->rel, writer->slots, writer->count, writer->cid,
					   0, NULL);
	for (int i = 0; i < writer->count; i++)
		slot_getallattrs(writer->slots[i]);
	kp_indexes_insert_chunk(&writer->indexes, writer->rel, writer->slots,
							writer->count);
	for (int i = 0; i < writer->count; i++)
		ExecClearTuple(writer->slots[i]);
	writer->count = 0;
}

/* The slot to fill for the next row; kp_batch_added once it is stored. */
static TupleTableSlot *
chunk_next_slot(KpChunkWriter *writer)
{
	return writer->slots[writer->count];
}

static void
chunk_added(KpChunkWriter *writer)
{
	if (++writer->count == KP_WRITE_CHUNK)
		chunk_flush(writer);
}

static void
chunk_close(KpChunkWriter *writer)
{
	if (writer->count > 0)
		chunk_flush(writer);
	kp_indexes_close(&writer->indexes);
}

static KpSlotCache delivered_slots;

static void
delivered_writer_open(KpChunkWriter *writer)
{
	chunk_open(writer, kp_table_open("delivered", delivered_columns, DELIVERED_NATTS,
							 RowExclusiveLock),
				  &delivered_slots);
}

static void
delivered_writer_close(KpChunkWriter *writer)
{
	chunk_close(writer);
	table_close(writer->rel, NoLock);
}

/* what a delivery record keeps of a message besides its report */
typedef struct KpDeliveredMessage
{
	Datum		topic;
	Datum		key;
	bool		key_isnull;
	int32		attempts;		/* before this one */
	Datum		enqueued_at;
	Datum		enqueued_by;
	bool		enqueued_by_isnull;
} KpDeliveredMessage;

/* Adds the delivery record of msg, reported delivered by report. */
static void
delivered_writer_add(KpChunkWriter *writer, KpDeliveredMessage *msg,
					 KpReport *report)
{
	TupleTableSlot *slot;
	Datum	   *values;
	bool	   *nulls;

	slot = chunk_next_slot(writer);
	values = slot->tts_values;
	nulls = slot->tts_isnull;
	memset(nulls, false, DELIVERED_NATTS * sizeof(bool));
	values[DELIVERED_ID] = Int64GetDatum(report->id);
	values[DELIVERED_TOPIC] = msg->topic;
	values[DELIVERED_KEY] = msg->key;
	nulls[DELIVERED_KEY] = msg->key_isnull;
	values[DELIVERED_PARTITION] = Int32GetDatum(report->partition);
	values[DELIVERED_OFFSET] = Int64GetDatum(report->offset);
	nulls[DELIVERED_OFFSET] = report->offset < 0;
	values[DELIVERED_ATTEMPTS] = Int32GetDatum(msg->attempts + 1);
	values[DELIVERED_ENQUEUED_AT] = msg->enqueued_at;
	values[DELIVERED_AT] = TimestampTzGetDatum(report->received_at);
	values[DELIVERED_ENQUEUED_BY] = msg->enqueued_by;
	nulls[DELIVERED_ENQUEUED_BY] = msg->enqueued_by_isnull;
	kp_recorded_offsets_note(msg->topic, report->partition, report->offset);
	ExecStoreVirtualTuple(slot);
	/* the outbox row's buffer is released before the chunk is written */
	ExecMaterializeSlot(slot);
	chunk_added(writer);
}

static bool
row_by_id(Relation rel, Relation primary_key, int64 id, TupleTableSlot *slot)
{
	IndexScanDesc scan = index_beginscan(rel, primary_key, GetActiveSnapshot(),
										 1, 0);
	ScanKeyData key;
	bool		found;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(id));
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	return found;
}

/*
 * Finds the version sent of the row whose first column is id: where the
 * worker read it, or, if a rewrite (VACUUM FULL, CLUSTER) moved it,
 * through the primary key.  An UPDATE makes a version that was not sent:
 * not found.  nblocks is the table's size.
 */
static bool
fetch_sent_row(Relation rel, Relation primary_key, BlockNumber nblocks,
			   int64 id, KpRowVersion *sent, TupleTableSlot *slot)
{
	/* a rewrite may also have left the old position beyond the end */
	if (ItemPointerGetBlockNumber(&sent->tid) < nblocks &&
		table_tuple_fetch_row_version(rel, &sent->tid, GetActiveSnapshot(),
									  slot))
	{
		slot_getallattrs(slot);
		if (DatumGetInt64(slot->tts_values[0]) == id &&
			raw_xmin(slot) == sent->xmin)
			return true;
	}
	if (!row_by_id(rel, primary_key, id, slot))
		return false;
	slot_getallattrs(slot);
	return raw_xmin(slot) == sent->xmin;
}

/* Deletes the row version in slot; false if someone else changed it first. */
static bool
delete_sent_row(Relation rel, TupleTableSlot *slot, CommandId cid)
{
	TM_FailureData failure;

	return table_tuple_delete(rel, &slot->tts_tid, cid, GetActiveSnapshot(),
							  InvalidSnapshot, true, &failure, false) == TM_Ok;
}

/* ---------------------------------------------------------------------
 * kafka.outbox_batch rows: recorded when all of their messages are
 * delivered; until then their delivered reports are held, unless one of
 * their messages failed, was returned or is not in flight, and then the
 * undelivered messages move to kafka.outbox, a row each, to be retried
 * or failed there.
 * ---------------------------------------------------------------------
 */

/* What a record step writes besides rows. */
typedef struct KpRecording
{
	Relation	batch;
	Relation	batch_key;
	BlockNumber batch_blocks;
	Relation	outbox;
	KpIndexes	outbox_indexes;
	TupleTableSlot *row;
	KpChunkWriter *delivered;
	int64	   *delivered_ids;
	int			delivered_count;
} KpRecording;

/*
 * In-flight messages moved out of a batch row by the current record step,
 * told to the producer once that step commits.
 */
typedef struct KpMove
{
	int64		id;
	KpRowVersion row;
} KpMove;

static KpMove *moves = NULL;
static int	move_count = 0;
static int	move_capacity = 0;

static void
remember_move(int64 id, ItemPointer tid)
{
	if (move_count == move_capacity)
	{
		move_capacity = Max(256, move_capacity * 2);
		moves = moves == NULL ?
			MemoryContextAlloc(TopMemoryContext, move_capacity * sizeof(KpMove)) :
			repalloc(moves, move_capacity * sizeof(KpMove));
	}
	moves[move_count].id = id;
	moves[move_count].row.tid = *tid;
	moves[move_count].row.xmin = GetCurrentTransactionId();
	moves[move_count].row.batch_first_id = 0;
	move_count++;
}

void
kp_outbox_apply_moves(void)
{
	for (int i = 0; i < move_count; i++)
		kp_producer_moved(moves[i].id, &moves[i].row);
	move_count = 0;
}

/* a report on a message of a batch row */
typedef struct KpBatchReport
{
	KpRowVersion row;
	KpReport   *report;
} KpBatchReport;

/*
 * Where a batch report goes in id order: its id, doubled, plus one for a
 * return, so that a message's delivery sorts before its return by a
 * producer that stopped.  The reports held back for incomplete rows are
 * sorted again at each step, and sorting these 16 bytes rather than the
 * reports took the sort from 7% of the worker's time during a drain.
 */
typedef struct KpBatchOrder
{
	int64		key;
	int			index;
} KpBatchOrder;

/*
 * The comparison inlined: through qsort's calls the sort took 5% of the
 * worker's main thread during a drain.
 */
#define ST_SORT sort_batch_order
#define ST_ELEMENT_TYPE KpBatchOrder
#define ST_COMPARE(a, b) ((a)->key < (b)->key ? -1 : (a)->key > (b)->key)
#define ST_SCOPE static
#define ST_DEFINE
#include "lib/sort_template.h"

static void
record_batch_delivery(KpRecording *rec, KpDeliveredMessage *msg,
					  KpReport *report)
{
	delivered_writer_add(rec->delivered, msg, report);
	rec->delivered_ids[rec->delivered_count++] = report->id;
}

/* Moves message i of the batch row in rec->row to a kafka.outbox row. */
static void
move_to_outbox(KpRecording *rec, int64 id, KpDeliveredMessage *msg,
			   Datum value, bool value_isnull)
{
	Datum		values[OUTBOX_NATTS];
	bool		nulls[OUTBOX_NATTS] = {false};
	ItemPointerData tid;

	values[OUTBOX_ID] = Int64GetDatum(id);
	values[OUTBOX_TOPIC] = msg->topic;
	values[OUTBOX_KEY] = msg->key;
	nulls[OUTBOX_KEY] = msg->key_isnull;
	values[OUTBOX_VALUE] = value;
	nulls[OUTBOX_VALUE] = value_isnull;
	nulls[OUTBOX_HEADERS] = true;
	nulls[OUTBOX_PARTITION] = true;
	values[OUTBOX_ATTEMPTS] = Int32GetDatum(0);
	nulls[OUTBOX_LAST_ERROR] = true;
	values[OUTBOX_ENQUEUED_AT] = msg->enqueued_at;
	values[OUTBOX_ENQUEUED_BY] = msg->enqueued_by;
	nulls[OUTBOX_ENQUEUED_BY] = msg->enqueued_by_isnull;
	kp_insert_row(rec->outbox, &rec->outbox_indexes, values, nulls, &tid);
	/* a report still to come must find the message where it now is */
	if (kp_producer_is_in_flight(id))
		remember_move(id, &tid);
}

/*
 * Records the reports on the messages of one batch row, by[i] the report
 * on message first_id + i or NULL: all delivered, the row goes; else the
 * reports wait (held) while the rest are in flight; else the row's
 * undelivered messages move to kafka.outbox.
 */
static void
record_batch_row(KpRecording *rec, int64 first_id, KpReport **by, int count,
				 Datum *keys, bool *key_nulls)
{
	TupleTableSlot *row = rec->row;
	KpDeliveredMessage msg;
	Datum	   *values = NULL;
	bool	   *value_nulls = NULL;
	int			delivered = 0;
	bool		waiting_only = true;

	for (int i = 0; i < count; i++)
	{
		if (by[i] != NULL && by[i]->outcome == KP_DELIVERED)
			delivered++;
		else if (by[i] != NULL || !kp_producer_is_in_flight(first_id + i))
			waiting_only = false;
	}
	if (delivered < count && waiting_only)
	{
		for (int i = 0; i < count; i++)
		{
			if (by[i] == NULL)
				continue;
			by[i]->held = true;
			kp_recorded_offsets_hold(row->tts_values[BATCH_TOPIC],
									 by[i]->partition, by[i]->offset);
		}
		return;
	}
	if (!delete_sent_row(rec->batch, row, rec->delivered->cid))
	{
		kp_shmem_request_rescan(first_id);
		return;
	}
	queue_messages_deleted += count;
	msg.topic = row->tts_values[BATCH_TOPIC];
	msg.attempts = 0;
	msg.enqueued_at = row->tts_values[BATCH_ENQUEUED_AT];
	msg.enqueued_by = row->tts_values[BATCH_ENQUEUED_BY];
	msg.enqueued_by_isnull = row->tts_isnull[BATCH_ENQUEUED_BY];
	if (delivered < count)
		batch_row_values(row, count, &values, &value_nulls);
	for (int i = 0; i < count; i++)
	{
		msg.key = keys[i];
		msg.key_isnull = key_nulls[i];
		if (by[i] != NULL && by[i]->outcome == KP_DELIVERED)
			record_batch_delivery(rec, &msg, by[i]);
		else
		{
			move_to_outbox(rec, first_id + i, &msg, values[i], value_nulls[i]);
			/* failures are recorded on the moved rows, with the others */
			if (by[i] != NULL)
				by[i]->done_with_batch = false;
		}
	}
}

/* Records reports[0 .. n - 1], on messages of the batch row first_id. */
static void
record_batch_reports(KpRecording *rec, KpBatchReport *reports, int n)
{
	int64		first_id = reports[0].row.batch_first_id;
	Datum	   *keys;
	bool	   *key_nulls;
	int			count;
	KpReport  **by;

	for (int i = 0; i < n; i++)
		reports[i].report->done_with_batch = true;
	if (!fetch_sent_row(rec->batch, rec->batch_key, rec->batch_blocks, first_id,
						&reports[0].row, rec->row))
	{
		/* a new version, if any, must be found by a scan to be sent */
		kp_shmem_request_rescan(first_id);
		return;
	}
	deconstruct_bytes(rec->row->tts_values[BATCH_KEYS], &keys, &key_nulls, &count);
	by = palloc0(count * sizeof(KpReport *));
	for (int i = 0; i < n; i++)
	{
		KpReport   *report = reports[i].report;
		int64		index = report->id - first_id;

		/* sorted: a delivery comes before a return of the same message */
		if (index >= 0 && index < count && by[index] == NULL)
			by[index] = report;
	}
	record_batch_row(rec, first_id, by, count, keys, key_nulls);
	ExecClearTuple(rec->row);
}

static void
recording_open(KpRecording *rec, KpChunkWriter *delivered, int capacity)
{
	rec->batch = kp_outbox_batch_open(RowExclusiveLock);
	rec->batch_key = index_open(RelationGetPrimaryKeyIndex(rec->batch),
								AccessShareLock);
	rec->batch_blocks = RelationGetNumberOfBlocks(rec->batch);
	rec->outbox = kp_outbox_open(RowExclusiveLock);
	kp_indexes_open(rec->outbox, &rec->outbox_indexes);
	rec->row = table_slot_create(rec->batch, NULL);
	rec->delivered = delivered;
	delivered_writer_open(delivered);
	rec->delivered_ids = palloc(capacity * sizeof(int64));
	rec->delivered_count = 0;
}

static void
recording_close(KpRecording *rec)
{
	delivered_writer_close(rec->delivered);
	ExecDropSingleTupleTableSlot(rec->row);
	kp_indexes_close(&rec->outbox_indexes);
	table_close(rec->outbox, NoLock);
	index_close(rec->batch_key, AccessShareLock);
	table_close(rec->batch, NoLock);
	CommandCounterIncrement();
	kp_notify_ids("delivered", rec->delivered_ids, rec->delivered_count);
}

/*
 * Records the reports in buf on messages of kafka.outbox_batch rows, and
 * marks them done_with_batch, or held.
 */
static void
record_batches(KpReportBuffer *buf)
{
	KpBatchReport *found = palloc(buf->count * sizeof(KpBatchReport));
	KpBatchOrder *order = palloc(buf->count * sizeof(KpBatchOrder));
	KpBatchReport *reports;
	KpRecording rec;
	KpChunkWriter delivered;
	int			n = 0;
	int			start = 0;

	for (int i = 0; i < buf->count; i++)
	{
		KpRowVersion row;

		if (kp_producer_outbox_row(buf->reports[i].id, &row) &&
			row.batch_first_id != 0)
		{
			order[n].key = buf->reports[i].id * 2 +
				(buf->reports[i].outcome != KP_DELIVERED);
			order[n].index = n;
			found[n].row = row;
			found[n].report = &buf->reports[i];
			n++;
		}
	}
	if (n == 0)
		return;
	sort_batch_order(order, n);
	reports = palloc(n * sizeof(KpBatchReport));
	for (int i = 0; i < n; i++)
		reports[i] = found[order[i].index];
	recording_open(&rec, &delivered, n);
	for (int i = 1; i <= n; i++)
	{
		if (i < n && reports[i].row.batch_first_id == reports[start].row.batch_first_id)
			continue;
		record_batch_reports(&rec, reports + start, i - start);
		start = i;
	}
	recording_close(&rec);
}

/*
 * Moves delivered messages from kafka.outbox to kafka.delivered.  Per
 * message this is the worker's only write, so it bypasses the executor:
 * the row is found by the position it was read from, deleted, and its
 * record written with the next thousand in one heap_multi_insert.  A row
 * deleted or changed by someone else meanwhile is left alone; the worker
 * rescans from it, so a changed one is sent again.
 */
static void
record_delivered(KpReportBuffer *buf, int count)
{
	Relation	outbox = kp_outbox_open(RowExclusiveLock);
	Relation	primary_key = index_open(RelationGetPrimaryKeyIndex(outbox),
										 AccessShareLock);
	TupleTableSlot *outbox_row = table_slot_create(outbox, NULL);
	KpChunkWriter writer;
	BlockNumber nblocks = RelationGetNumberOfBlocks(outbox);
	int64	   *ids = palloc(count * sizeof(int64));
	int			recorded = 0;

	delivered_writer_open(&writer);

	for (int i = 0; i < buf->count; i++)
	{
		KpReport   *report = &buf->reports[i];
		KpRowVersion sent;
		KpDeliveredMessage msg;

		if (report->outcome != KP_DELIVERED || report->done_with_batch)
			continue;
		if (!kp_producer_outbox_row(report->id, &sent) ||
			!fetch_sent_row(outbox, primary_key, nblocks, report->id, &sent,
							outbox_row) ||
			!delete_sent_row(outbox, outbox_row, writer.cid))
		{
			/* a new version, if any, must be found by a scan to be sent */
			kp_shmem_request_rescan(report->id);
			continue;
		}
		queue_messages_deleted++;
		msg.topic = outbox_row->tts_values[OUTBOX_TOPIC];
		msg.key = outbox_row->tts_values[OUTBOX_KEY];
		msg.key_isnull = outbox_row->tts_isnull[OUTBOX_KEY];
		msg.attempts = DatumGetInt32(outbox_row->tts_values[OUTBOX_ATTEMPTS]);
		msg.enqueued_at = outbox_row->tts_values[OUTBOX_ENQUEUED_AT];
		msg.enqueued_by = outbox_row->tts_values[OUTBOX_ENQUEUED_BY];
		msg.enqueued_by_isnull = outbox_row->tts_isnull[OUTBOX_ENQUEUED_BY];
		delivered_writer_add(&writer, &msg, report);
		ExecClearTuple(outbox_row);
		ids[recorded++] = report->id;
	}
	delivered_writer_close(&writer);
	ExecDropSingleTupleTableSlot(outbox_row);
	index_close(primary_key, AccessShareLock);
	table_close(outbox, NoLock);
	CommandCounterIncrement();
	kp_notify_ids("delivered", ids, recorded);
}

/*
 * The raw xmin of the kafka.outbox row version that a report on in-flight
 * message id concerns; -1, which no row has, if unknown.  A message sent
 * from a batch row was moved to a row of its own by this step
 * (record_batch_row) before its failure is recorded.
 */
static int64
reported_row_xmin(int64 id)
{
	KpRowVersion sent;

	if (!kp_producer_outbox_row(id, &sent))
		return -1;
	if (sent.batch_first_id != 0)
		return (int64) GetCurrentTransactionId();
	return (int64) sent.xmin;
}

/* Puts the ids that the failure SQL moved to kafka.failed in ids. */
static int
failed_ids(Datum *ids)
{
	int			failed = 0;

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i],
									   SPI_tuptable->tupdesc, 2, &isnull)))
			ids[failed++] = SPI_getbinval(SPI_tuptable->vals[i],
										  SPI_tuptable->tupdesc, 1, &isnull);
	}
	return failed;
}

/*
 * Permanent failures, and transient ones that used up kafka.max_attempts,
 * move to kafka.failed with their payload; other transient failures stay
 * pending with the attempt counted and the error shown.  Only the row
 * version that was sent is: one UPDATEd in flight is a message not sent
 * yet, which a rescan then finds.
 */
static void
record_failures(KpReportBuffer *buf, int count)
{
	Oid			argtypes[] = {INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, BOOLARRAYOID, INT4OID};
	Datum	   *ids = palloc(count * sizeof(Datum));
	Datum	   *xmins = palloc(count * sizeof(Datum));
	Datum	   *codes = palloc(count * sizeof(Datum));
	Datum	   *texts = palloc(count * sizeof(Datum));
	Datum	   *permanent = palloc(count * sizeof(Datum));
	Datum		args[6];
	int			n = 0;
	int64		lowest = PG_INT64_MAX;

	for (int i = 0; i < buf->count; i++)
	{
		KpReport   *r = &buf->reports[i];

		if ((r->outcome != KP_FAILED && r->outcome != KP_RETRIABLE) ||
			r->done_with_batch)
			continue;
		ids[n] = Int64GetDatum(r->id);
		xmins[n] = Int64GetDatum(reported_row_xmin(r->id));
		codes[n] = CStringGetTextDatum(kp_report_error_name(r));
		texts[n] = CStringGetTextDatum(kp_report_error_text(r));
		permanent[n] = BoolGetDatum(r->outcome == KP_FAILED);
		lowest = Min(lowest, r->id);
		n++;
	}
	prepare_once(&failed_plan,
				 "WITH r AS (SELECT * FROM unnest($1, $2, $3, $4, $5) "
				 "    AS r(id, xmin, code, msg, permanent)), "
				 "gone AS (DELETE FROM kafka.outbox o USING r WHERE o.id = r.id "
				 "    AND o.xmin::text::bigint = r.xmin "
				 "    AND (r.permanent OR ($6 > 0 AND o.attempts + 1 >= $6)) "
				 "  RETURNING o.id, o.topic, o.key, o.value, o.headers, o.\"partition\", "
				 "    o.attempts + 1, r.code, r.msg, o.enqueued_at, now(), o.enqueued_by), "
				 "failed AS (INSERT INTO kafka.failed "
				 "  (id, topic, key, value, headers, \"partition\", attempts, error_code, "
				 "   error, enqueued_at, failed_at, enqueued_by) "
				 "  SELECT * FROM gone RETURNING id), "
				 "retried AS (UPDATE kafka.outbox o SET attempts = o.attempts + 1, "
				 "  last_error = r.code || ': ' || r.msg "
				 "  FROM r WHERE o.id = r.id AND o.xmin::text::bigint = r.xmin "
				 "  AND NOT (r.permanent OR ($6 > 0 AND o.attempts + 1 >= $6)) "
				 "  RETURNING o.id) "
				 "SELECT id, true FROM failed UNION ALL SELECT id, false FROM retried",
				 6, argtypes);
	args[0] = kp_datum_array(ids, n, INT8OID);
	args[1] = kp_datum_array(xmins, n, INT8OID);
	args[2] = kp_datum_array(codes, n, TEXTOID);
	args[3] = kp_datum_array(texts, n, TEXTOID);
	args[4] = kp_datum_array(permanent, n, BOOLOID);
	args[5] = Int32GetDatum(kp_max_attempts);
	execute_plan(failed_plan, args, SPI_OK_SELECT);
	/* a row that changed in flight holds a message still to be sent */
	if (SPI_processed < (uint64) n)
		kp_shmem_request_rescan(lowest);
	notify_datums("failed", ids, failed_ids(ids));
}

/* Writes the outcome of every report in buf; returned messages need none. */
void
kp_outbox_record(KpReportBuffer *buf)
{
	int			delivered = 0;
	int			failed = 0;

	/* this may be a second try after an error */
	move_count = 0;
	for (int i = 0; i < buf->count; i++)
		buf->reports[i].held = buf->reports[i].done_with_batch = false;
	record_batches(buf);
	for (int i = 0; i < buf->count; i++)
	{
		if (buf->reports[i].done_with_batch)
			continue;
		if (buf->reports[i].outcome == KP_DELIVERED)
			delivered++;
		else if (buf->reports[i].outcome != KP_RETURNED)
			failed++;
	}
	if (delivered > 0)
		record_delivered(buf, delivered);
	if (failed > 0)
		record_failures(buf, failed);
	kp_recorded_offsets_save();
}

/*
 * Removes delivery records older than kafka.status_retention, and
 * summarizes the BRIN ranges written since the last call: until then a
 * lookup by id reads every row of them.
 */
void
kp_outbox_prune(void)
{
	Oid			argtypes[] = {INT4OID};
	Datum		args[1];

	prepare_once(&summarize_plan,
				 "SELECT pg_catalog.brin_summarize_new_values("
				 "'kafka.delivered_brin'::pg_catalog.regclass)",
				 0, NULL);
	execute_plan(summarize_plan, NULL, SPI_OK_SELECT);
	if (kp_status_retention < 0)
		return;
	prepare_once(&prune_plan,
				 "DELETE FROM kafka.delivered "
				 "WHERE delivered_at < now() - make_interval(secs => $1)",
				 1, argtypes);
	args[0] = Int32GetDatum(kp_status_retention);
	execute_plan(prune_plan, args, SPI_OK_DELETE);
	delivered_rows_deleted += SPI_processed;
}

/*
 * Whether the tables the worker deletes from are due a VACUUM of its own:
 * once it deleted KP_VACUUM_MIN_ROWS messages or rows from them, or a
 * fifth of the backlog if that is more, for a VACUUM scans every index
 * page, while the backlog is small enough for a VACUUM to be quick; or
 * anything, once the queue is idle.
 * Autovacuum looks at a table once a minute at best (autovacuum_naptime),
 * and in a minute of 8 sessions committing 3 messages a transaction
 * kafka.outbox gathered 150,000 dead rows, through which each of the
 * worker's scans walks: the sessions' throughput fell by a quarter in a
 * minute.
 */
bool
kp_outbox_vacuum_due(int64 backlog, bool idle)
{
	int64		threshold = Max(KP_VACUUM_MIN_ROWS, backlog / 5);

	if (queue_messages_deleted > 0 || delivered_rows_deleted > 0)
		shrinkable = true;
	if (idle)
		return shrinkable;
	/* a VACUUM would hold up delivery too long: autovacuum's, then */
	if (backlog > KP_VACUUM_MAX_BACKLOG)
		return false;
	return queue_messages_deleted >= threshold || delivered_rows_deleted >= threshold;
}

/*
 * VACUUMs kafka.<name>, outside any transaction, as autovacuum does; if
 * someone else holds it locked, it is skipped.  vacuum() commits the
 * transaction it is called in: the table's entry, and the context it makes
 * in PortalContext, must be in portal, which outlives it.  After an error
 * PortalContext stays there, a context still valid.
 */
static void
vacuum_table(MemoryContext portal, const char *name, bool truncate)
{
	VacuumParams params = {
		.options = VACOPT_VACUUM | VACOPT_SKIP_LOCKED | VACOPT_PROCESS_TOAST,
		.freeze_min_age = -1,
		.freeze_table_age = -1,
		.multixact_freeze_min_age = -1,
		.multixact_freeze_table_age = -1,
		.log_min_duration = -1,
		.index_cleanup = VACOPTVALUE_UNSPECIFIED,
		.truncate = truncate ? VACOPTVALUE_ENABLED : VACOPTVALUE_UNSPECIFIED,
		.nworkers = -1,
	};
	List	   *relations;
	MemoryContext outer;

	MemoryContextReset(portal);
	StartTransactionCommand();
	outer = MemoryContextSwitchTo(portal);
	relations = list_make1(makeVacuumRelation(NULL, kp_relation_oid(name), NIL));
	MemoryContextSwitchTo(outer);
	PortalContext = portal;
	vacuum(relations, &params, NULL, true);
	PortalContext = NULL;
	CommitTransactionCommand();
}

/*
 * VACUUMs the tables due.  The rows deleted so far count as vacuumed even
 * if this fails: autovacuum remains.  With truncate, the queue tables give
 * their empty end pages back to the system too, which they otherwise keep
 * (vacuum_truncate = false): the caller knows the queue idle, and so no
 * session held up by the lock that takes, which VACUUM only takes if free.
 */
void
kp_outbox_vacuum(bool truncate)
{
	static MemoryContext portal = NULL;
	bool		queue = queue_messages_deleted > 0 || truncate;
	bool		delivered = delivered_rows_deleted > 0 || truncate;

	if (portal == NULL)
		portal = AllocSetContextCreate(TopMemoryContext, "kafka_producer vacuum",
									   ALLOCSET_SMALL_SIZES);
	queue_messages_deleted = delivered_rows_deleted = 0;
	if (truncate)
		shrinkable = false;
	/* one at a time: vacuum() makes each table's options those of the next */
	if (queue)
	{
		vacuum_table(portal, "outbox", truncate);
		vacuum_table(portal, "outbox_batch", truncate);
	}
	if (delivered)
		vacuum_table(portal, "delivered", truncate);
}
