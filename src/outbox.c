/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The worker's reads and writes of the kafka.* tables.
 *
 *	  Per message, after kafka_send()'s insert, the worker writes once, in
 *	  batches: it deletes the delivered rows from kafka.outbox and inserts
 *	  their delivery records (partition, offset) into kafka.delivered, with
 *	  heap functions; an SQL statement moves failures to kafka.failed, or
 *	  counts the attempt of a transient one.  Reading is a range scan of
 *	  kafka.outbox's primary key; the table holds undelivered messages only.
 *
 *	  Every function here runs inside the worker's transaction, with SPI
 *	  connected.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "storage/bufmgr.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "kafka_producer.h"

/* a batch ends after this many messages or bytes, whichever comes first */
#define KP_BATCH_MESSAGES 10000
#define KP_BATCH_BYTES (32 * 1024 * 1024)

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

Oid
kp_relation_oid(const char *name)
{
	Oid			nsp = get_namespace_oid(KP_SCHEMA_NAME, false);
	Oid			relid = get_relname_relid(name, nsp);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s.%s\" of extension \"%s\" is missing",
						KP_SCHEMA_NAME, name, KP_EXTENSION_NAME),
				 errhint("Drop and create the extension again.")));
	return relid;
}

/* Opens kafka.outbox, checking that it still has the expected shape. */
Relation
kp_outbox_open(LOCKMODE lockmode)
{
	Relation	rel = table_open(kp_relation_oid("outbox"), lockmode);

	if (RelationGetDescr(rel)->natts != OUTBOX_NATTS)
		elog(ERROR, "kafka.outbox has %d columns, expected %d",
			 RelationGetDescr(rel)->natts, OUTBOX_NATTS);
	return rel;
}

void
kp_indexes_open(Relation rel, KpIndexes *indexes)
{
	List	   *oids = RelationGetIndexList(rel);
	int			i = 0;
	ListCell   *lc;

	indexes->count = list_length(oids);
	indexes->indexes = palloc(indexes->count * sizeof(Relation));
	indexes->infos = palloc(indexes->count * sizeof(IndexInfo *));
	foreach(lc, oids)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);
		IndexInfo  *info = BuildIndexInfo(index);

		if (info->ii_Expressions != NIL || info->ii_Predicate != NIL)
			elog(ERROR, "index \"%s\" on %s.%s is not supported",
				 RelationGetRelationName(index), KP_SCHEMA_NAME,
				 RelationGetRelationName(rel));
		indexes->indexes[i] = index;
		indexes->infos[i] = info;
		i++;
	}
	list_free(oids);
}

/* Adds the heap tuple at tid, whose columns are values, to every index. */
void
kp_indexes_insert(KpIndexes *indexes, Relation rel, ItemPointer tid,
				  Datum *values, bool *nulls)
{
	for (int i = 0; i < indexes->count; i++)
	{
		IndexInfo  *info = indexes->infos[i];
		Datum		index_values[INDEX_MAX_KEYS];
		bool		index_nulls[INDEX_MAX_KEYS];

		for (int k = 0; k < info->ii_NumIndexAttrs; k++)
		{
			AttrNumber	attnum = info->ii_IndexAttrNumbers[k];

			index_values[k] = values[attnum - 1];
			index_nulls[k] = nulls[attnum - 1];
		}
		index_insert(indexes->indexes[i], index_values, index_nulls, tid, rel,
					 info->ii_Unique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
					 false, info);
	}
}

void
kp_indexes_close(KpIndexes *indexes)
{
	for (int i = 0; i < indexes->count; i++)
		index_close(indexes->indexes[i], RowExclusiveLock);
}

bool
kp_outbox_present(void)
{
	return OidIsValid(get_extension_oid(KP_EXTENSION_NAME, true));
}

rd_kafka_headers_t *
kp_headers_from_jsonb(Jsonb *jb)
{
	rd_kafka_headers_t *headers = rd_kafka_headers_new(JB_ROOT_COUNT(jb));
	JsonbIterator *it = JsonbIteratorInit(&jb->root);
	JsonbValue	v;
	JsonbValue	name = {0};
	JsonbIteratorToken token;

	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
			name = v;
		else if (token == WJB_VALUE)
			rd_kafka_header_add(headers, name.val.string.val,
								name.val.string.len,
								v.type == jbvString ? v.val.string.val : NULL,
								v.type == jbvString ? v.val.string.len : 0);
	}
	return headers;
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

/* Hands one outbox row to the producer. */
static KpSendResult
send_row(TupleTableSlot *slot, int64 id, KpReportBuffer *buf, size_t *bytes)
{
	KpMessage	msg;

	msg.id = id;
	msg.outbox_row.tid = slot->tts_tid;
	msg.outbox_row.xmin = raw_xmin(slot);
	msg.topic = TextDatumGetCString(slot->tts_values[OUTBOX_TOPIC]);
	bytes_of(slot, OUTBOX_KEY, &msg.key, &msg.key_len);
	bytes_of(slot, OUTBOX_VALUE, &msg.value, &msg.value_len);
	msg.partition = slot->tts_isnull[OUTBOX_PARTITION] ? RD_KAFKA_PARTITION_UA :
		DatumGetInt32(slot->tts_values[OUTBOX_PARTITION]);
	/* before the headers, which librdkafka owns once they are made */
	msg.headers = NULL;
	if (kp_registry_enabled())
	{
		KpSendResult held_or_refused = frame_for_registry(&msg, buf);

		if (held_or_refused != KP_SEND_QUEUED)
			return held_or_refused;
	}
	if (!slot->tts_isnull[OUTBOX_HEADERS])
		msg.headers = kp_headers_from_jsonb(DatumGetJsonbP(slot->tts_values[OUTBOX_HEADERS]));
	*bytes += msg.key_len + msg.value_len;
	return kp_producer_send(&msg, buf);
}

/*
 * Sends the messages after after_id in id order, skipping those already
 * in flight, until max_messages are sent, a batch is full, librdkafka's
 * queue is, or a message must wait for the schema registry.  Returns the
 * id up to which everything is now in flight or done: the next scan
 * starts after it.
 *
 * The scan walks the primary key index itself rather than asking the
 * planner: a queue table's statistics are always stale (it was empty at
 * the last ANALYZE, or full), and a plan that sorts the whole outbox for
 * each batch made draining a million messages five times slower.
 */
int64
kp_outbox_send_batch(int64 after_id, int max_messages, KpReportBuffer *buf,
					 bool *queue_full)
{
	Relation	rel = kp_outbox_open(AccessShareLock);
	Relation	index = index_open(RelationGetPrimaryKeyIndex(rel),
								   AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	IndexScanDesc scan = index_beginscan(rel, index, GetActiveSnapshot(), 1, 0);
	MemoryContext row_context = AllocSetContextCreate(CurrentMemoryContext,
													  "kafka_producer row",
													  ALLOCSET_DEFAULT_SIZES);
	ScanKeyData key;
	int64		last_id = after_id;
	int			sent = 0;
	size_t		bytes = 0;

	*queue_full = false;
	max_messages = Min(max_messages, KP_BATCH_MESSAGES);
	ScanKeyInit(&key, 1, BTGreaterStrategyNumber, F_INT8GT,
				Int64GetDatum(after_id));
	index_rescan(scan, &key, 1, NULL, 0);

	while (sent < max_messages && bytes < KP_BATCH_BYTES &&
		   index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		int64		id;

		slot_getallattrs(slot);
		id = DatumGetInt64(slot->tts_values[OUTBOX_ID]);
		if (!kp_producer_is_in_flight(id))
		{
			MemoryContext outer = MemoryContextSwitchTo(row_context);
			KpSendResult result = send_row(slot, id, buf, &bytes);

			MemoryContextSwitchTo(outer);
			MemoryContextReset(row_context);
			if (result == KP_SEND_QUEUE_FULL)
				*queue_full = true;
			if (result == KP_SEND_QUEUE_FULL || result == KP_SEND_HELD_BACK)
				break;
			sent++;
		}
		last_id = id;
	}

	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	MemoryContextDelete(row_context);
	index_close(index, AccessShareLock);
	table_close(rel, AccessShareLock);
	return last_id;
}

Datum
kp_datum_array(Datum *elements, int count, Oid element_type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(element_type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(elements, count, element_type,
										   typlen, typbyval, typalign));
}

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
	DELIVERED_NATTS
} KpDeliveredColumn;

/*
 * A batch writer: rows go to the heap with table_multi_insert, a chunk at
 * a time, then into the indexes.  Its slots are kept from batch to batch
 * in a KpSlotCache of the caller's: making a thousand slots showed in
 * profiles.
 */
void
kp_batch_open(KpBatchWriter *writer, Relation rel, KpSlotCache *cache)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (cache->desc == NULL || !equalTupleDescs(desc, cache->desc))
	{
		MemoryContext outer = MemoryContextSwitchTo(TopMemoryContext);

		for (int i = 0; i < KP_BATCH_CHUNK; i++)
		{
			if (cache->slots[i] != NULL)
				ExecDropSingleTupleTableSlot(cache->slots[i]);
			cache->slots[i] = NULL;
		}
		if (cache->desc != NULL)
			FreeTupleDesc(cache->desc);
		cache->desc = CreateTupleDescCopy(desc);
		for (int i = 0; i < KP_BATCH_CHUNK; i++)
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
batch_flush(KpBatchWriter *writer)
{
	table_multi_insert(writer->rel, writer->slots, writer->count, writer->cid,
					   0, NULL);
	for (int i = 0; i < writer->count; i++)
	{
		TupleTableSlot *slot = writer->slots[i];

		slot_getallattrs(slot);
		kp_indexes_insert(&writer->indexes, writer->rel, &slot->tts_tid,
						  slot->tts_values, slot->tts_isnull);
		ExecClearTuple(slot);
	}
	writer->count = 0;
}

/* The slot to fill for the next row; kp_batch_added once it is stored. */
TupleTableSlot *
kp_batch_next_slot(KpBatchWriter *writer)
{
	return writer->slots[writer->count];
}

void
kp_batch_added(KpBatchWriter *writer)
{
	if (++writer->count == KP_BATCH_CHUNK)
		batch_flush(writer);
}

void
kp_batch_close(KpBatchWriter *writer)
{
	if (writer->count > 0)
		batch_flush(writer);
	kp_indexes_close(&writer->indexes);
}

static KpSlotCache delivered_slots;

static void
delivered_writer_open(KpBatchWriter *writer)
{
	Relation	rel = table_open(kp_relation_oid("delivered"), RowExclusiveLock);

	if (RelationGetDescr(rel)->natts != DELIVERED_NATTS)
		elog(ERROR, "kafka.delivered has %d columns, expected %d",
			 RelationGetDescr(rel)->natts, DELIVERED_NATTS);
	kp_batch_open(writer, rel, &delivered_slots);
}

static void
delivered_writer_close(KpBatchWriter *writer)
{
	kp_batch_close(writer);
	table_close(writer->rel, NoLock);
}

/* Adds the delivery record of outbox row, reported delivered by report. */
static void
delivered_writer_add(KpBatchWriter *writer, TupleTableSlot *outbox_row,
					 KpReport *report)
{
	TupleTableSlot *slot;
	Datum	   *values;
	bool	   *nulls;

	slot = kp_batch_next_slot(writer);
	values = slot->tts_values;
	nulls = slot->tts_isnull;
	memset(nulls, false, DELIVERED_NATTS * sizeof(bool));
	values[DELIVERED_ID] = Int64GetDatum(report->id);
	values[DELIVERED_TOPIC] = outbox_row->tts_values[OUTBOX_TOPIC];
	values[DELIVERED_KEY] = outbox_row->tts_values[OUTBOX_KEY];
	nulls[DELIVERED_KEY] = outbox_row->tts_isnull[OUTBOX_KEY];
	values[DELIVERED_PARTITION] = Int32GetDatum(report->partition);
	values[DELIVERED_OFFSET] = Int64GetDatum(report->offset);
	nulls[DELIVERED_OFFSET] = report->offset < 0;
	values[DELIVERED_ATTEMPTS] =
		Int32GetDatum(DatumGetInt32(outbox_row->tts_values[OUTBOX_ATTEMPTS]) + 1);
	values[DELIVERED_ENQUEUED_AT] = outbox_row->tts_values[OUTBOX_ENQUEUED_AT];
	values[DELIVERED_AT] =
		TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	ExecStoreVirtualTuple(slot);
	/* the outbox row's buffer is released before the chunk is written */
	ExecMaterializeSlot(slot);
	kp_batch_added(writer);
}

static bool
outbox_row_by_id(Relation rel, Relation primary_key, int64 id,
				 TupleTableSlot *slot)
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
 * Finds the version of a delivered message's outbox row that the worker
 * read: where it read it, or, if a rewrite (VACUUM FULL, CLUSTER) moved
 * it, through the primary key.  An UPDATE makes a version that was not
 * sent: not found.  nblocks is the outbox's size.
 */
static bool
fetch_outbox_row(Relation rel, Relation primary_key, BlockNumber nblocks,
				 int64 id, TupleTableSlot *slot)
{
	KpRowVersion sent;

	if (!kp_producer_outbox_row(id, &sent))
		return false;
	/* a rewrite may also have left the old position beyond the end */
	if (ItemPointerGetBlockNumber(&sent.tid) < nblocks &&
		table_tuple_fetch_row_version(rel, &sent.tid, GetActiveSnapshot(),
									  slot))
	{
		slot_getallattrs(slot);
		if (DatumGetInt64(slot->tts_values[OUTBOX_ID]) == id &&
			raw_xmin(slot) == sent.xmin)
			return true;
	}
	if (!outbox_row_by_id(rel, primary_key, id, slot))
		return false;
	slot_getallattrs(slot);
	return raw_xmin(slot) == sent.xmin;
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
	KpBatchWriter writer;
	BlockNumber nblocks = RelationGetNumberOfBlocks(outbox);
	int64	   *ids = palloc(count * sizeof(int64));
	int			recorded = 0;

	delivered_writer_open(&writer);

	for (int i = 0; i < buf->count; i++)
	{
		KpReport   *report = &buf->reports[i];
		TM_FailureData failure;

		if (report->outcome != KP_DELIVERED)
			continue;
		if (!fetch_outbox_row(outbox, primary_key, nblocks, report->id,
							  outbox_row) ||
			table_tuple_delete(outbox, &outbox_row->tts_tid, writer.cid,
							   GetActiveSnapshot(), InvalidSnapshot, true,
							   &failure, false) != TM_Ok)
		{
			/* a new version, if any, must be found by a scan to be sent */
			kp_shmem_request_rescan(report->id);
			continue;
		}
		delivered_writer_add(&writer, outbox_row, report);
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
 * Permanent failures, and transient ones that used up kafka.max_attempts,
 * move to kafka.failed with their payload; other transient failures stay
 * pending with the attempt counted and the error shown.
 */
static void
record_failures(KpReportBuffer *buf, int count)
{
	Oid			argtypes[] = {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	BOOLARRAYOID, INT4OID};
	Datum	   *ids = palloc(count * sizeof(Datum));
	Datum	   *codes = palloc(count * sizeof(Datum));
	Datum	   *texts = palloc(count * sizeof(Datum));
	Datum	   *permanent = palloc(count * sizeof(Datum));
	Datum		args[5];
	int			n = 0;

	for (int i = 0; i < buf->count; i++)
	{
		KpReport   *r = &buf->reports[i];

		if (r->outcome != KP_FAILED && r->outcome != KP_RETRIABLE)
			continue;
		ids[n] = Int64GetDatum(r->id);
		codes[n] = CStringGetTextDatum(kp_report_error_name(r));
		texts[n] = CStringGetTextDatum(kp_report_error_text(r));
		permanent[n] = BoolGetDatum(r->outcome == KP_FAILED);
		n++;
	}
	prepare_once(&failed_plan,
				 "WITH r AS (SELECT * FROM unnest($1, $2, $3, $4) AS r(id, code, msg, permanent)), "
				 "gone AS (DELETE FROM kafka.outbox o USING r WHERE o.id = r.id "
				 "    AND (r.permanent OR ($5 > 0 AND o.attempts + 1 >= $5)) "
				 "  RETURNING o.id, o.topic, o.key, o.value, o.headers, o.\"partition\", "
				 "    o.attempts + 1, r.code, r.msg, o.enqueued_at), "
				 "failed AS (INSERT INTO kafka.failed "
				 "  (id, topic, key, value, headers, \"partition\", attempts, error_code, "
				 "   error, enqueued_at, failed_at) "
				 "  SELECT *, now() FROM gone RETURNING id), "
				 "retried AS (UPDATE kafka.outbox o SET attempts = o.attempts + 1, "
				 "  last_error = r.code || ': ' || r.msg "
				 "  FROM r WHERE o.id = r.id "
				 "  AND NOT (r.permanent OR ($5 > 0 AND o.attempts + 1 >= $5))) "
				 "SELECT id FROM failed",
				 5, argtypes);
	args[0] = kp_datum_array(ids, n, INT8OID);
	args[1] = kp_datum_array(codes, n, TEXTOID);
	args[2] = kp_datum_array(texts, n, TEXTOID);
	args[3] = kp_datum_array(permanent, n, BOOLOID);
	args[4] = Int32GetDatum(kp_max_attempts);
	execute_plan(failed_plan, args, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		ids[i] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
							   &isnull);
	}
	notify_datums("failed", ids, SPI_processed);
}

/* Writes the outcome of every report in buf; returned messages need none. */
void
kp_outbox_record(KpReportBuffer *buf)
{
	int			delivered = 0;
	int			failed = 0;

	for (int i = 0; i < buf->count; i++)
	{
		if (buf->reports[i].outcome == KP_DELIVERED)
			delivered++;
		else if (buf->reports[i].outcome != KP_RETURNED)
			failed++;
	}
	if (delivered > 0)
		record_delivered(buf, delivered);
	if (failed > 0)
		record_failures(buf, failed);
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
}
