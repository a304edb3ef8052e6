/*-------------------------------------------------------------------------
 *
 * send_avro.c
 *	  kafka_send_avro(): a row (or any supported value) as an Avro message
 *	  in single-object encoding: 0xC3 0x01, the 8-byte little-endian
 *	  CRC-64-AVRO fingerprint of the schema's canonical form, then the Avro
 *	  binary.  Every schema used is kept in kafka.schemas under its
 *	  fingerprint and subject (<topic>-value, <topic>-key), so consumers
 *	  can look it up.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "avro_schema.h"
#include "kafka_producer.h"

PG_FUNCTION_INFO_V1(kafka_send_avro);


/* a schema known to be in kafka.schemas under a subject */
typedef struct KpStoredSchema
{
	uint64		fingerprint;
	char		subject[KP_SUBJECT_MAX];
} KpStoredSchema;

/*
 * Known to be in kafka.schemas: committed, and written by the current
 * transaction (a few schemas at most: a list).
 */
static HTAB *stored = NULL;
static List *stored_in_transaction = NIL;

/*
 * The last schema found stored for a key and for a value, by topic: a
 * published table's events find theirs here without making the subject.
 */
typedef struct KpRecentSchema
{
	bool		valid;
	uint64		fingerprint;
	char		topic[KP_TOPIC_NAME_MAX + 1];
} KpRecentSchema;

static KpRecentSchema recent[2];	/* [is_key] */

static void
forget_recent(void)
{
	recent[0].valid = recent[1].valid = false;
}

static void
send_avro_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
		foreach(lc, stored_in_transaction)
			hash_search(stored, lfirst(lc), HASH_ENTER, NULL);
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		forget_recent();
	/* the list lived in TopTransactionContext */
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		stored_in_transaction = NIL;
}

/*
 * A subtransaction that rolls back takes its kafka.schemas rows with it:
 * what this transaction stored is stored again when next used.
 */
static void
send_avro_subxact_callback(SubXactEvent event, SubTransactionId subid,
						   SubTransactionId parent, void *arg)
{
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	stored_in_transaction = NIL;
	forget_recent();
}

static bool
recently_stored(uint64 fingerprint, text *topic, bool is_key)
{
	KpRecentSchema *r = &recent[is_key];
	int			len = VARSIZE_ANY_EXHDR(topic);

	return r->valid && r->fingerprint == fingerprint &&
		len <= KP_TOPIC_NAME_MAX &&
		memcmp(r->topic, VARDATA_ANY(topic), len) == 0 && r->topic[len] == '\0';
}

static void
remember_recent(uint64 fingerprint, text *topic, bool is_key)
{
	KpRecentSchema *r = &recent[is_key];

	r->fingerprint = fingerprint;
	text_to_cstring_buffer(topic, r->topic, sizeof(r->topic));
	r->valid = true;
}

/* Makes sure kafka.schemas has the schema under subject. */
static void
store_schema(KpAvroSchema *schema, const char *subject)
{
	KpStoredSchema key;
	Oid			argtypes[] = {BYTEAOID, TEXTOID, TEXTOID};
	Datum		args[3];
	MemoryContext old;
	KpStoredSchema *copy;
	ListCell   *lc;
	KpSavedUser saved;

	if (stored == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(KpStoredSchema);
		ctl.entrysize = sizeof(KpStoredSchema);
		stored = hash_create("kafka_producer stored Avro schemas", 16, &ctl,
							 HASH_ELEM | HASH_BLOBS);
		RegisterXactCallback(send_avro_xact_callback, NULL);
		RegisterSubXactCallback(send_avro_subxact_callback, NULL);
	}
	memset(&key, 0, sizeof(key));
	key.fingerprint = kp_avro_schema_fingerprint(schema);
	strlcpy(key.subject, subject, sizeof(key.subject));
	if (hash_search(stored, &key, HASH_FIND, NULL) != NULL)
		return;
	foreach(lc, stored_in_transaction)
		if (memcmp(lfirst(lc), &key, sizeof(key)) == 0)
			return;

	args[0] = PointerGetDatum(kp_avro_fingerprint_bytea(key.fingerprint));
	args[1] = CStringGetTextDatum(subject);
	args[2] = CStringGetTextDatum(kp_avro_schema_json(schema));
	/* whoever enqueues the message, with or without rights on kafka.* */
	kp_begin_as_owner(&saved);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("INSERT INTO kafka.schemas (fingerprint, subject, schema) "
							  "VALUES ($1, $2, $3::jsonb) ON CONFLICT DO NOTHING",
							  3, argtypes, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not store Avro schema of subject \"%s\"", subject);
	SPI_finish();
	kp_end_as_owner(&saved);
	old = MemoryContextSwitchTo(TopTransactionContext);
	copy = palloc(sizeof(KpStoredSchema));
	memcpy(copy, &key, sizeof(key));
	stored_in_transaction = lappend(stored_in_transaction, copy);
	MemoryContextSwitchTo(old);
}

/*
 * Frames encoded, written after KP_SINGLE_OBJECT_HEADER bytes, in
 * single-object encoding, and stores its schema under <topic>-value or
 * <topic>-key.
 */
bytea *
kp_avro_single_object(KpAvroSchema *schema, bytea *encoded, text *topic,
					  bool is_key)
{
	uint64		fingerprint = kp_avro_schema_fingerprint(schema);
	char	   *data = VARDATA(encoded);
	char		subject[KP_SUBJECT_MAX];

	data[0] = (char) 0xC3;
	data[1] = 0x01;
	kp_avro_fingerprint_put(fingerprint, data + 2);
	if (recently_stored(fingerprint, topic, is_key))
		return encoded;
	kp_avro_subject(subject, text_to_cstring(topic), is_key);
	store_schema(schema, subject);
	remember_recent(fingerprint, topic, is_key);
	return encoded;
}

static bytea *
single_object(Oid typid, Datum value, bool is_key, text *topic)
{
	KpAvroSchema *schema;

	/* an untyped literal is text, as it is for kafka_send() */
	if (typid == UNKNOWNOID)
	{
		typid = TEXTOID;
		value = CStringGetTextDatum(DatumGetCString(value));
	}
	schema = kp_avro_schema(typid, is_key);

	return kp_avro_single_object(schema,
								 kp_avro_encode(schema, value, KP_SINGLE_OBJECT_HEADER),
								 topic, is_key);
}

/*
 * kafka_send_avro(topic text, value "any", key "any", partition int,
 *				   headers jsonb) returns the new message's id
 */
Datum
kafka_send_avro(PG_FUNCTION_ARGS)
{
	KpNewMessage msg;

	kp_check_serving_database();
	kp_message_options_from_args(fcinfo, &msg);
	kp_check_topic(msg.topic);
	msg.value = PG_ARGISNULL(1) ? NULL :
		single_object(get_fn_expr_argtype(fcinfo->flinfo, 1),
					  PG_GETARG_DATUM(1), false, msg.topic);
	msg.key = PG_ARGISNULL(2) ? NULL :
		single_object(get_fn_expr_argtype(fcinfo->flinfo, 2),
					  PG_GETARG_DATUM(2), true, msg.topic);
	PG_RETURN_INT64(kp_enqueue(&msg));
}
