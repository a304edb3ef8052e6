/*-------------------------------------------------------------------------
 *
 * message.c
 *	  A message from the arguments of the send functions, and the checks
 *	  every SQL entry point makes: the served database, Kafka's rules for
 *	  topics, headers and sizes.
 *
 *	  Keys and values of any type become bytes: bytea as is, text in
 *	  UTF-8, anything else as its text output in UTF-8.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_database.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "kafka_producer.h"

/*
 * What the producer adds to key, value and headers when it checks a message
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

/* the length of this database's name: a database in use is never renamed */
static Size
database_name_length(void)
{
	static Size length = 0;

	if (length == 0)
		length = strlen(get_database_name(MyDatabaseId));
	return length;
}

/* kp_databases_generation when this database was last found served */
static uint32 database_checked_at = 0;
static bool database_checked = false;

static bool
database_is_template(void)
{
	HeapTuple	tuple = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(MyDatabaseId));
	bool		is_template;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for database %u", MyDatabaseId);
	is_template = ((Form_pg_database) GETSTRUCT(tuple))->datistemplate;
	ReleaseSysCache(tuple);
	return is_template;
}

/*
 * ERROR unless this database is served, and has its slot of shared memory:
 * anywhere else nobody would deliver.
 */
void
kp_check_serving_database(void)
{
	char	   *current;
	const char *setting_name;
	const char *setting;
	bool		is_template;

	if (database_checked && database_checked_at == kp_databases_generation)
		return;
	kp_shmem_check_preloaded();
	current = get_database_name(MyDatabaseId);
	is_template = database_is_template();
	if (!kp_database_served(current, is_template))
	{
		setting = kp_databases_setting(&setting_name);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kafka_producer does not serve database \"%s\"", current),
				 is_template && kp_databases_listed() == NIL ?
				 errdetail("It is a template, and %s is \"%s\": a template is served only when named.",
						   setting_name, setting) :
				 errdetail("%s is \"%s\".", setting_name, setting),
				 errhint("Add \"%s\" to kafka.databases and reload the server configuration.",
						 current)));
	}
	kp_shmem_attach_database();
	database_checked = true;
	database_checked_at = kp_databases_generation;
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

/*
 * Calls each(name, value) for each of Kafka's headers in a JSON object of
 * strings or nulls (value NULL), in order, or raises an ERROR for anything
 * else.
 */
void
kp_headers_each(Jsonb *headers, KpHeaderFunc each, void *arg)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbValue	name = {0};
	JsonbIteratorToken token;

	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Kafka headers must be a JSON object"),
				 errhint("Pass headers as an object of strings, such as '{\"trace-id\": \"abc\"}'.")));

	it = JsonbIteratorInit(&headers->root);
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
			name = v;
		else if (token == WJB_VALUE)
		{
			if (v.type != jbvString && v.type != jbvNull)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("Kafka header values must be strings or null"),
						 errhint("Convert numbers and other JSON values to strings.")));
			each(name.val.string.val, name.val.string.len,
				 v.type == jbvString ? v.val.string.val : NULL,
				 v.type == jbvString ? v.val.string.len : 0, arg);
		}
	}
}

static void
add_header_size(const char *name, int name_len, const char *value,
				int value_len, void *arg)
{
	*(Size *) arg += KP_HEADER_OVERHEAD + name_len + value_len;
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

/*
 * Checks a message against Kafka's rules and kafka.message_max_bytes;
 * returns its size as the producer counts it.
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
		kp_headers_each(msg->headers, add_header_size, &size);
	/* the headers the worker adds, with the longest id and database name */
	if (kp_id_header != NULL && kp_id_header[0] != '\0')
		size += KP_HEADER_OVERHEAD + strlen(kp_id_header) + MAXINT8LEN;
	if (kp_database_header != NULL && kp_database_header[0] != '\0')
		size += KP_HEADER_OVERHEAD + strlen(kp_database_header) +
			database_name_length();
	if (size > (Size) kp_message_max_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("Kafka message is too large"),
				 errdetail("With key, headers and Kafka's record overhead it takes %zu bytes; kafka.message_max_bytes is %d.",
						   size, kp_message_max_bytes),
				 errhint("Raise kafka.message_max_bytes, and the topic's max.message.bytes on the brokers.")));
	return size;
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
	msg->partition = PG_ARGISNULL(3) ? KP_PARTITION_ANY : PG_GETARG_INT32(3);
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
