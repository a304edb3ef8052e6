/*-------------------------------------------------------------------------
 *
 * reconcile.c
 *	  Before a new producer sends anything, finds which pending messages
 *	  Kafka already holds: those that an earlier producer had sent when
 *	  the worker crashed, the server stopped or a standby was promoted, and
 *	  whose delivery was never recorded.
 *
 *	  For every topic with pending messages, each partition is read with a
 *	  librdkafka consumer from just after the offset kafka.recorded_offsets
 *	  holds for it (or, for a partition without one, the last
 *	  KP_RECONCILE_WINDOW records) up to its high watermark.  A record
 *	  whose id header names an id that may be pending is remembered with
 *	  its partition, offset and key; when the scan then reaches that
 *	  message and its key matches, the message is recorded as delivered
 *	  there instead of being sent again (kp_reconcile_found).
 *
 *	  Messages sent with acks=0 or without the id header cannot be found
 *	  this way: Kafka gave no offset, or the record names no id.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "datatype/timestamp.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "delivery.h"

/*
 * A partition without a recorded offset is read this far back from its
 * end: at most KP_MAX_IN_FLIGHT of ours can have been unrecorded, and
 * the rest leaves room for other producers' records in between.
 */
#define KP_RECONCILE_WINDOW 100000
/* how long one reconciliation may take before it is tried again */
#define KP_RECONCILE_TIMEOUT_MS 30000
#define KP_METADATA_TIMEOUT_MS 5000

typedef struct KpFoundRecord
{
	int64		id;				/* hash key */
	int32		partition;
	int64		offset;
	uint32		topic_hash;
	uint32		key_hash;		/* of the whole key */
	uint32		framed_key_hash;	/* of its Avro body, if in Confluent's
									 * wire format; else 0 */
	TimestampTz produced_at;	/* the record's CreateTime */
} KpFoundRecord;

static HTAB *found = NULL;
static bool failing = false;	/* the last reconciliation could not read
								 * Kafka */
static MemoryContext found_context = NULL;
static bool found_any = false;

/* what this reconciliation reads */
typedef struct KpReadRange
{
	char	   *topic;
	int32		partition;
	int64		start;
	int64		end;			/* the high watermark: read up to end - 1 */
} KpReadRange;

typedef struct KpReconcileScope
{
	List	   *topics;			/* char *, topics with pending messages */
	int64		min_id;			/* lowest pending id */
	int64		max_id;			/* highest pending id */
	HTAB	   *marks;			/* "topic/partition" -> recorded offset */
} KpReconcileScope;

typedef struct KpMarkEntry
{
	char		name[KP_TOPIC_NAME_MAX + 16];	/* hash key */
	int64		offset;
} KpMarkEntry;

/* a record's clock may lag the database's by this much */
#define KP_CLOCK_SLACK_US (1000 * 1000)

/* never 0, which stands for no key */
static uint32
bytes_hash(const char *bytes, size_t len)
{
	return hash_bytes((const unsigned char *) bytes, (int) len) | 1;
}

static uint32
key_hash(const char *key, size_t len)
{
	return key == NULL ? 0 : bytes_hash(key, len);
}

/*
 * Whether a stored key is the record's: the same bytes, or an Avro key
 * stored in single-object encoding (C3 01, 8-byte fingerprint) that was
 * sent in Confluent's wire format (0, 4-byte schema id) with the same body.
 */
static bool
same_key(KpFoundRecord *entry, const char *key, size_t len)
{
	if (key_hash(key, len) == entry->key_hash)
		return true;
	return entry->framed_key_hash != 0 && key != NULL && len >= 10 &&
		(unsigned char) key[0] == 0xC3 && (unsigned char) key[1] == 0x01 &&
		bytes_hash(key + 10, len - 10) == entry->framed_key_hash;
}

static void
forget_found(void)
{
	if (found_context != NULL)
		MemoryContextReset(found_context);
	found = NULL;
	found_any = false;
}

static void
mark_name(char *name, const char *topic, int32 partition)
{
	snprintf(name, KP_TOPIC_NAME_MAX + 16, "%s/%d", topic, partition);
}

/* Reads the topics with pending messages and their recorded offsets. */
static void
read_scope(KpReconcileScope *scope)
{
	HASHCTL		ctl;
	int			rc;

	scope->topics = NIL;
	rc = SPI_execute("SELECT topic, min(first_id), max(last_id) FROM ("
					 "  SELECT topic, id AS first_id, id AS last_id FROM kafka.outbox"
					 "  UNION ALL SELECT topic, first_id, first_id + cardinality(keys) - 1"
					 "  FROM kafka.outbox_batch) p "
					 "GROUP BY topic", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading pending topics failed: %s", SPI_result_code_string(rc));
	scope->min_id = PG_INT64_MAX;
	scope->max_id = 0;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		scope->topics = lappend(scope->topics, SPI_getvalue(tuple, desc, 1));
		scope->min_id = Min(scope->min_id,
							DatumGetInt64(SPI_getbinval(tuple, desc, 2, &isnull)));
		scope->max_id = Max(scope->max_id,
							DatumGetInt64(SPI_getbinval(tuple, desc, 3, &isnull)));
	}

	ctl.keysize = KP_TOPIC_NAME_MAX + 16;
	ctl.entrysize = sizeof(KpMarkEntry);
	ctl.hcxt = CurrentMemoryContext;
	scope->marks = hash_create("kafka_producer recorded offsets", 64, &ctl,
							   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	if (scope->topics == NIL || !kp_recorded_offsets_present())
		return;
	rc = SPI_execute("SELECT topic, \"partition\", \"offset\" "
					 "FROM kafka.recorded_offsets", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading kafka.recorded_offsets failed: %s",
			 SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char		name[KP_TOPIC_NAME_MAX + 16];
		KpMarkEntry *entry;

		mark_name(name, SPI_getvalue(tuple, desc, 1),
				  DatumGetInt32(SPI_getbinval(tuple, desc, 2, &isnull)));
		entry = hash_search(scope->marks, name, HASH_ENTER, NULL);
		entry->offset = DatumGetInt64(SPI_getbinval(tuple, desc, 3, &isnull));
	}
}

static rd_kafka_t *
new_consumer(void)
{
	char		errstr[512];
	rd_kafka_conf_t *conf = kp_producer_conf(errstr, sizeof(errstr));
	rd_kafka_t *rk;

	/* the producer's properties, of which it needs the connection's */
	if (conf == NULL ||
		rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		/* up to the high watermark, past other producers' open transactions */
		rd_kafka_conf_set(conf, "isolation.level", "read_uncommitted", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		/* what it fetches ahead stays in the worker's memory */
		rd_kafka_conf_set(conf, "queued.max.messages.kbytes", "16384", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "group.id", "kafka_producer.reconcile", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		if (conf != NULL)
			rd_kafka_conf_destroy(conf);
		ereport(LOG,
				(errmsg("could not configure the Kafka consumer that reconciles pending messages: %s",
						errstr)));
		return NULL;
	}
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		ereport(LOG,
				(errmsg("could not create the Kafka consumer that reconciles pending messages: %s",
						errstr)));
	}
	return rk;
}

/*
 * Credentials that may write but not read a topic: reconciliation cannot
 * help there, and must not stop the sending.
 */
static bool
read_refused(rd_kafka_resp_err_t err, const char *topic)
{
	if (err != RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED &&
		err != RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED &&
		err != RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED)
		return false;
	ereport(WARNING,
			(errmsg("could not read Kafka topic \"%s\" to reconcile its pending messages: %s",
					topic, rd_kafka_err2str(err)),
			 errdetail("Messages that were sent but not recorded before the restart are sent again."),
			 errhint("Grant the producer's principal READ on the topic.")));
	return true;
}

/*
 * Adds to *ranges what must be read of topic's partitions.  Returns false
 * with *error set when Kafka could not say.
 */
static bool
plan_topic(rd_kafka_t *rk, KpReconcileScope *scope, const char *topic,
		   List **ranges, const char **error)
{
	rd_kafka_topic_t *handle = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *metadata;
	rd_kafka_resp_err_t err;

	err = rd_kafka_metadata(rk, 0, handle, &metadata, KP_METADATA_TIMEOUT_MS);
	rd_kafka_topic_destroy(handle);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		*error = rd_kafka_err2str(err);
		return false;
	}
	err = metadata->topic_cnt == 1 ? metadata->topics[0].err :
		RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
	/* nothing was ever written there, or nothing we may read */
	if (err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || read_refused(err, topic))
	{
		rd_kafka_metadata_destroy(metadata);
		return true;
	}
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		rd_kafka_metadata_destroy(metadata);
		*error = rd_kafka_err2str(err);
		return false;
	}
	for (int p = 0; p < metadata->topics[0].partition_cnt; p++)
	{
		int32		partition = metadata->topics[0].partitions[p].id;
		char		name[KP_TOPIC_NAME_MAX + 16];
		KpMarkEntry *mark;
		int64		low;
		int64		high;
		KpReadRange *range;

		err = rd_kafka_query_watermark_offsets(rk, topic, partition, &low, &high,
											   KP_METADATA_TIMEOUT_MS);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			rd_kafka_metadata_destroy(metadata);
			*error = rd_kafka_err2str(err);
			return false;
		}
		mark_name(name, topic, partition);
		mark = hash_search(scope->marks, name, HASH_FIND, NULL);
		range = palloc(sizeof(KpReadRange));
		range->topic = pstrdup(topic);
		range->partition = partition;
		range->start = Max(low, mark != NULL ? mark->offset + 1 :
						   high - KP_RECONCILE_WINDOW);
		range->end = high;
		if (range->start < range->end)
			*ranges = lappend(*ranges, range);
	}
	rd_kafka_metadata_destroy(metadata);
	return true;
}

/* Remembers the record if its id header names an id that may be pending. */
static void
note_record(KpReconcileScope *scope, rd_kafka_message_t *msg)
{
	rd_kafka_headers_t *headers;
	const void *value;
	size_t		size;
	const void *database;
	size_t		database_size;
	char		digits[MAXINT8LEN + 1];
	char	   *end;
	int64		id;
	KpFoundRecord *entry;
	bool		exists;
	/* record timestamps count milliseconds since 1970, ours microseconds since 2000 */
	const int64 unix_epoch_ms =
		(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
	TimestampTz produced_at;

	if (rd_kafka_message_headers(msg, &headers) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		rd_kafka_header_get_last(headers, kp_id_header, &value, &size) !=
		RD_KAFKA_RESP_ERR_NO_ERROR ||
		value == NULL || size == 0 || size > MAXINT8LEN)
		return;
	/* another database's message, with an id of its own */
	if (kp_database_header != NULL && kp_database_header[0] != '\0' &&
		rd_kafka_header_get_last(headers, kp_database_header, &database,
								 &database_size) == RD_KAFKA_RESP_ERR_NO_ERROR &&
		!kp_kafka_is_our_database(database, database_size))
		return;
	memcpy(digits, value, size);
	digits[size] = '\0';
	errno = 0;
	id = strtoll(digits, &end, 10);
	if (errno != 0 || *end != '\0' || id < scope->min_id || id > scope->max_id)
		return;
	produced_at = (rd_kafka_message_timestamp(msg, NULL) - unix_epoch_ms) * 1000;
	entry = hash_search(found, &id, HASH_ENTER, &exists);
	/* of several records naming the id, the last produced may be ours */
	if (exists && entry->produced_at > produced_at)
		return;
	entry->produced_at = produced_at;
	entry->partition = msg->partition;
	entry->offset = msg->offset;
	entry->topic_hash = bytes_hash(rd_kafka_topic_name(msg->rkt),
								   strlen(rd_kafka_topic_name(msg->rkt)));
	entry->key_hash = key_hash(msg->key, msg->key_len);
	entry->framed_key_hash = msg->key != NULL && msg->key_len >= 5 &&
		((const char *) msg->key)[0] == 0 ?
		bytes_hash((const char *) msg->key + 5, msg->key_len - 5) : 0;
	found_any = true;
}

/*
 * Reads the ranges to their ends.  Returns false with *error set when
 * that failed or took longer than KP_RECONCILE_TIMEOUT_MS.
 */
static bool
read_ranges(rd_kafka_t *rk, KpReconcileScope *scope, List *ranges,
			const char **error)
{
	rd_kafka_topic_partition_list_t *assignment =
		rd_kafka_topic_partition_list_new(list_length(ranges));
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   KP_RECONCILE_TIMEOUT_MS);
	int			unfinished = list_length(ranges);
	ListCell   *lc;
	rd_kafka_resp_err_t err;

	foreach(lc, ranges)
	{
		KpReadRange *range = lfirst(lc);

		rd_kafka_topic_partition_list_add(assignment, range->topic,
										  range->partition)->offset = range->start;
	}
	err = rd_kafka_assign(rk, assignment);
	rd_kafka_topic_partition_list_destroy(assignment);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		*error = rd_kafka_err2str(err);
		return false;
	}
	while (unfinished > 0)
	{
		rd_kafka_message_t *msg;

		CHECK_FOR_INTERRUPTS();
		if (GetCurrentTimestamp() > deadline)
		{
			*error = "timed out reading the partitions";
			return false;
		}
		msg = rd_kafka_consumer_poll(rk, 100);
		if (msg == NULL)
			continue;
		if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR &&
			msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF &&
			(msg->rkt == NULL ||
			 !read_refused(msg->err, rd_kafka_topic_name(msg->rkt))))
		{
			*error = rd_kafka_err2str(msg->err);
			rd_kafka_message_destroy(msg);
			return false;
		}
		if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR)
			note_record(scope, msg);
		foreach(lc, ranges)
		{
			KpReadRange *range = lfirst(lc);

			/* done at its end, or when it may not be read */
			if (range->end > range->start && msg->rkt != NULL &&
				range->partition == msg->partition &&
				strcmp(range->topic, rd_kafka_topic_name(msg->rkt)) == 0 &&
				(msg->offset + 1 >= range->end ||
				 (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR &&
				  msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)))
			{
				range->start = range->end;	/* done */
				unfinished--;
			}
		}
		rd_kafka_message_destroy(msg);
	}
	return true;
}

/*
 * Reads with rk what scope needs of Kafka into found; *reads is how many
 * records that is.  Returns false with *error set when Kafka could not be
 * read.
 */
static bool
read_scope_from_kafka(rd_kafka_t *rk, KpReconcileScope *scope, long *reads,
					  const char **error)
{
	List	   *ranges = NIL;
	ListCell   *lc;

	foreach(lc, scope->topics)
	{
		if (!plan_topic(rk, scope, lfirst(lc), &ranges, error))
			return false;
	}
	foreach(lc, ranges)
	{
		KpReadRange *range = lfirst(lc);

		*reads += range->end - range->start;
	}
	return ranges == NIL || read_ranges(rk, scope, ranges, error);
}

/*
 * Reconciles, in the worker's transaction.  Returns false, having logged
 * why, when Kafka could not be read: nothing may be sent until it can.
 */
bool
kp_reconcile(void)
{
	KpReconcileScope scope;
	rd_kafka_t *rk;
	const char *error = NULL;
	volatile bool ok = false;
	HASHCTL		ctl;
	TimestampTz started = GetCurrentTimestamp();
	long		reads = 0;

	forget_found();
	if (kp_id_header == NULL || kp_id_header[0] == '\0')
		return true;
	read_scope(&scope);
	if (scope.topics == NIL)
		return true;
	if (found_context == NULL)
		found_context = AllocSetContextCreate(TopMemoryContext,
											  "kafka_producer reconciled records",
											  ALLOCSET_DEFAULT_SIZES);
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(KpFoundRecord);
	ctl.hcxt = found_context;
	found = hash_create("kafka_producer reconciled records", 1024, &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	rk = new_consumer();
	if (rk == NULL)
		return false;
	/* an ERROR (an interrupt) must not leave the consumer's threads behind */
	PG_TRY();
	{
		ok = read_scope_from_kafka(rk, &scope, &reads, &error);
	}
	PG_FINALLY();
	{
		rd_kafka_consumer_close(rk);
		rd_kafka_destroy(rk);
	}
	PG_END_TRY();
	if (!ok)
	{
		forget_found();
		/* once per outage: the worker tries again every second */
		ereport(failing ? DEBUG1 : LOG,
				(errmsg("could not reconcile pending messages with Kafka: %s", error),
				 errdetail("No message is sent until Kafka can be read; the worker tries again.")));
		failing = true;
		return false;
	}
	failing = false;
	ereport(found_any ? LOG : DEBUG1,
			(errmsg("reconciled pending messages with Kafka: %ld records read in %ld ms, %ld of them name ids that may be pending",
					reads,
					TimestampDifferenceMilliseconds(started, GetCurrentTimestamp()),
					found_any ? hash_get_num_entries(found) : 0L)));
	return true;
}

/*
 * Whether msg was found in Kafka by the last reconciliation; if so, where,
 * and it is forgotten.  A record is msg only if it names msg's id, and has
 * its topic, key and partition (when msg names one), and was produced
 * after msg was enqueued: a record of an earlier id space (the extension
 * dropped and created again, a standby promoted without the last commits)
 * was produced before.
 */
bool
kp_reconcile_found(KpMessage *msg, int32 *partition, int64 *offset)
{
	KpFoundRecord *entry;

	if (!found_any)
		return false;
	entry = hash_search(found, &msg->id, HASH_FIND, NULL);
	if (entry == NULL ||
		entry->topic_hash != bytes_hash(msg->topic, strlen(msg->topic)) ||
		!same_key(entry, msg->key, msg->key_len) ||
		(msg->partition != RD_KAFKA_PARTITION_UA &&
		 msg->partition != entry->partition) ||
		entry->produced_at + KP_CLOCK_SLACK_US < msg->enqueued_at)
		return false;
	*partition = entry->partition;
	*offset = entry->offset;
	hash_search(found, &msg->id, HASH_REMOVE, NULL);
	return true;
}

/* Called once a scan found nothing more to send: the rest is not ours. */
void
kp_reconcile_done(void)
{
	if (found_any)
		forget_found();
}
