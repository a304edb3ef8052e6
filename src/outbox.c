/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The worker's reads and writes of the kafka.* tables.
 *
 *	  Per message, after kafka_send()'s insert, the worker writes once, in
 *	  batches: one statement deletes the delivered rows from kafka.outbox
 *	  and inserts their delivery records (partition, offset) into
 *	  kafka.delivered; another moves failures to kafka.failed, or counts
 *	  the attempt of a transient one.  Reading is a range scan of
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
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "executor/spi.h"
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

static SPIPlanPtr delivered_plan = NULL;
static SPIPlanPtr failed_plan = NULL;
static SPIPlanPtr prune_plan = NULL;

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

bool
kp_outbox_present(void)
{
	return OidIsValid(get_extension_oid(KP_EXTENSION_NAME, true));
}

static rd_kafka_headers_t *
headers_from_jsonb(Jsonb *jb)
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

/* Hands one outbox row to the producer. */
static KpSendResult
send_row(TupleTableSlot *slot, int64 id, KpReportBuffer *buf, size_t *bytes)
{
	KpMessage	msg;

	msg.id = id;
	msg.topic = TextDatumGetCString(slot->tts_values[OUTBOX_TOPIC]);
	bytes_of(slot, OUTBOX_KEY, &msg.key, &msg.key_len);
	bytes_of(slot, OUTBOX_VALUE, &msg.value, &msg.value_len);
	msg.headers = slot->tts_isnull[OUTBOX_HEADERS] ? NULL :
		headers_from_jsonb(DatumGetJsonbP(slot->tts_values[OUTBOX_HEADERS]));
	msg.partition = slot->tts_isnull[OUTBOX_PARTITION] ? RD_KAFKA_PARTITION_UA :
		DatumGetInt32(slot->tts_values[OUTBOX_PARTITION]);
	*bytes += msg.key_len + msg.value_len;
	return kp_producer_send(&msg, buf);
}

/*
 * Sends the messages after after_id in id order, skipping those already
 * in flight, until a batch is full or librdkafka's queue is.  Returns the
 * id up to which everything is now in flight or done: the next scan
 * starts after it.
 *
 * The scan walks the primary key index itself rather than asking the
 * planner: a queue table's statistics are always stale (it was empty at
 * the last ANALYZE, or full), and a plan that sorts the whole outbox for
 * each batch made draining a million messages five times slower.
 */
int64
kp_outbox_send_batch(int64 after_id, KpReportBuffer *buf, bool *queue_full)
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
	ScanKeyInit(&key, 1, BTGreaterStrategyNumber, F_INT8GT,
				Int64GetDatum(after_id));
	index_rescan(scan, &key, 1, NULL, 0);

	while (sent < KP_BATCH_MESSAGES && bytes < KP_BATCH_BYTES &&
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
			{
				*queue_full = true;
				break;
			}
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

static void
record_delivered(KpReportBuffer *buf, int count)
{
	Oid			argtypes[] = {INT8ARRAYOID, INT4ARRAYOID, INT8ARRAYOID};
	Datum	   *ids = palloc(count * sizeof(Datum));
	Datum	   *partitions = palloc(count * sizeof(Datum));
	Datum	   *offsets = palloc(count * sizeof(Datum));
	Datum		args[3];
	int			n = 0;

	for (int i = 0; i < buf->count; i++)
	{
		KpReport   *r = &buf->reports[i];

		if (r->outcome != KP_DELIVERED)
			continue;
		ids[n] = Int64GetDatum(r->id);
		partitions[n] = Int32GetDatum(r->partition);
		offsets[n] = Int64GetDatum(r->offset);
		n++;
	}
	prepare_once(&delivered_plan,
				 "WITH r AS (SELECT * FROM unnest($1, $2, $3) AS r(id, part, off)), "
				 "moved AS (DELETE FROM kafka.outbox o USING r WHERE o.id = r.id "
				 "  RETURNING o.id, o.topic, o.key, r.part, r.off, o.attempts, o.enqueued_at) "
				 "INSERT INTO kafka.delivered "
				 "  (id, topic, key, \"partition\", \"offset\", attempts, enqueued_at, delivered_at) "
				 "SELECT id, topic, key, part, CASE WHEN off >= 0 THEN off END, "
				 "  attempts + 1, enqueued_at, now() FROM moved",
				 3, argtypes);
	args[0] = kp_datum_array(ids, n, INT8OID);
	args[1] = kp_datum_array(partitions, n, INT4OID);
	args[2] = kp_datum_array(offsets, n, INT8OID);
	execute_plan(delivered_plan, args, SPI_OK_INSERT);
	notify_datums("delivered", ids, n);
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
		codes[n] = CStringGetTextDatum(rd_kafka_err2name(r->err));
		texts[n] = CStringGetTextDatum(rd_kafka_err2str(r->err));
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

/* Removes delivery records older than kafka.status_retention. */
void
kp_outbox_prune(void)
{
	Oid			argtypes[] = {INT4OID};
	Datum		args[1];

	if (kp_status_retention < 0)
		return;
	prepare_once(&prune_plan,
				 "DELETE FROM kafka.delivered "
				 "WHERE delivered_at < now() - make_interval(secs => $1)",
				 1, argtypes);
	args[0] = Int32GetDatum(kp_status_retention);
	execute_plan(prune_plan, args, SPI_OK_DELETE);
}
