/*-------------------------------------------------------------------------
 *
 * schema_registry.c
 *	  Confluent Schema Registry support, in the worker.  Avro messages are
 *	  enqueued in single-object encoding (0xC3 0x01, 8-byte fingerprint,
 *	  Avro binary) with their schema in kafka.schemas.  When
 *	  kafka.schema_registry_url is set, the worker registers each schema
 *	  under its subject (<topic>-value, <topic>-key) with libcurl, the
 *	  first time it sends a message that uses it, and sends the message in
 *	  Confluent's wire format instead: magic byte 0, the 4-byte big-endian
 *	  schema id, the same Avro binary.
 *
 *	  Registration happens here, in the worker, so that no user transaction
 *	  waits on the network.  A registry that cannot be reached, or answers
 *	  with anything but an id or a refusal, holds the message (and those
 *	  after it) back until a later attempt succeeds; a refusal (HTTP 409,
 *	  incompatible, or 422, invalid) fails the message with the registry's
 *	  own words.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "postmaster/interrupt.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "avro_schema.h"
#include "kafka_producer.h"

#define KP_REGISTRY_CONNECT_TIMEOUT_MS 2000
#define KP_REGISTRY_TIMEOUT_MS 10000
/* a registry's answer is a small JSON object; one past this is not */
#define KP_REGISTRY_MAX_ANSWER (1024 * 1024)
/* how long an unreachable registry is left alone before the next attempt */
#define KP_REGISTRY_RETRY_MS 1000
/* how long a refusal stands before the registry is asked again */
#define KP_REGISTRY_REFUSAL_MS 1000

#define KP_SUBJECT_MAX (KP_TOPIC_NAME_MAX + sizeof("-value"))
#define KP_CONFLUENT_HEADER 5

typedef struct KpSchemaKey
{
	char		subject[KP_SUBJECT_MAX];
	uint64		fingerprint;
} KpSchemaKey;

typedef enum KpSchemaState
{
	KP_SCHEMA_REGISTERED,		/* registry_id is its id */
	KP_SCHEMA_UNKNOWN,			/* not in kafka.schemas: bytes, not Avro */
	KP_SCHEMA_REFUSED			/* refusal says why, since refused_at */
} KpSchemaState;

typedef struct KpSchemaEntry
{
	KpSchemaKey key;
	KpSchemaState state;
	uint32		registry_id;
	char	   *refusal;		/* in registry_context */
	TimestampTz refused_at;
} KpSchemaEntry;

/* what the registry said to one registration */
typedef struct KpRegistryAnswer
{
	bool		reached;		/* an HTTP answer arrived */
	long		status;
	StringInfoData body;
	char		curl_error[CURL_ERROR_SIZE];
} KpRegistryAnswer;

char	   *kp_schema_registry_url = NULL;
char	   *kp_schema_registry_user_info = NULL;
static char *kp_schema_registry_netrc_file = NULL;

/* an http or https URL, kept without a trailing slash */
static bool
check_schema_registry_url(char **newval, void **extra, GucSource source)
{
	size_t		len;

	if (*newval == NULL || **newval == '\0')
		return true;
	if (strncmp(*newval, "http://", 7) != 0 && strncmp(*newval, "https://", 8) != 0)
	{
		GUC_check_errdetail("The schema registry URL must start with http:// or https://.");
		return false;
	}
	len = strlen(*newval);
	while (len > 0 && (*newval)[len - 1] == '/')
		(*newval)[--len] = '\0';
	return true;
}

/* an absolute path of a file the server can read */
static bool
check_netrc_file(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || **newval == '\0')
		return true;
	if (!is_absolute_path(*newval))
	{
		GUC_check_errdetail("The netrc file must be given by an absolute path.");
		return false;
	}
	if (access(*newval, R_OK) != 0)
	{
		GUC_check_errdetail("Could not read \"%s\": %m.", *newval);
		return false;
	}
	return true;
}

void
kp_schema_registry_init(void)
{
	DefineCustomStringVariable("kafka.schema_registry_url",
							   "Confluent Schema Registry that Avro messages' schemas are registered with.",
							   "When set, Avro messages are sent in Confluent's wire format (magic byte 0, 4-byte schema id); when empty, in Avro single-object encoding.",
							   &kp_schema_registry_url, "",
							   PGC_SIGHUP, 0, check_schema_registry_url, NULL, NULL);
	DefineCustomStringVariable("kafka.schema_registry_user_info",
							   "Basic authentication for the schema registry, as user:password.",
							   "Shown only to superusers and members of pg_read_all_settings.",
							   &kp_schema_registry_user_info, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("kafka.schema_registry_netrc_file",
							   "A netrc file with the schema registry's credentials.",
							   "Read by libcurl at each request: \"machine <host> login <user> password <password>\". No SQL role can read its content.",
							   &kp_schema_registry_netrc_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_netrc_file, NULL, NULL);
}

static CURL *curl = NULL;
/* holds schemas and its refusals; reset when the registry changes */
static MemoryContext registry_context = NULL;
static HTAB *schemas = NULL;
static char *schemas_url = NULL;	/* the registry the ids in schemas are from */
static TimestampTz retry_at = 0;
static bool registry_down = false;

bool
kp_registry_enabled(void)
{
	return kp_schema_registry_url != NULL && kp_schema_registry_url[0] != '\0';
}

/* Forgets every id when the registry changes: ids are per registry. */
static void
reset_for_url(void)
{
	HASHCTL		ctl;

	if (schemas_url != NULL && strcmp(schemas_url, kp_schema_registry_url) == 0)
		return;
	if (registry_context == NULL)
		registry_context = AllocSetContextCreate(TopMemoryContext,
												 "kafka_producer schema registry",
												 ALLOCSET_SMALL_SIZES);
	MemoryContextReset(registry_context);
	ctl.keysize = sizeof(KpSchemaKey);
	ctl.entrysize = sizeof(KpSchemaEntry);
	ctl.hcxt = registry_context;
	schemas = hash_create("kafka_producer registry schema ids", 64, &ctl,
						  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	schemas_url = MemoryContextStrdup(registry_context, kp_schema_registry_url);
	retry_at = 0;
	registry_down = false;
}

/*
 * libcurl's write callback.  No ERROR may escape into libcurl, so the body
 * grows without palloc's out-of-memory ERROR, up to a size no registry
 * answer reaches; returning less than given aborts the transfer, which
 * then counts as the registry out of reach.
 */
static size_t
append_to_body(char *data, size_t size, size_t count, void *arg)
{
	StringInfo	body = (StringInfo) arg;
	size_t		n = size * count;

	if (n > (size_t) (KP_REGISTRY_MAX_ANSWER - body->len))
		return 0;
	if (body->len + n + 1 > (size_t) body->maxlen)
	{
		int			capacity = Min(KP_REGISTRY_MAX_ANSWER + 1,
								   Max(body->maxlen * 2, body->len + (int) n + 1));
		char	   *grown = MemoryContextAllocExtended(GetMemoryChunkContext(body->data),
													   capacity, MCXT_ALLOC_NO_OOM);

		if (grown == NULL)
			return 0;
		memcpy(grown, body->data, body->len + 1);
		pfree(body->data);
		body->data = grown;
		body->maxlen = capacity;
	}
	memcpy(body->data + body->len, data, n);
	body->len += n;
	body->data[body->len] = '\0';
	return n;
}

/* libcurl's progress callback: a worker asked to stop does not wait for the registry */
static int
stop_if_shutting_down(void *arg, curl_off_t dltotal, curl_off_t dlnow,
					  curl_off_t ultotal, curl_off_t ulnow)
{
	return ShutdownRequestPending ? 1 : 0;
}

static CURL *
registry_handle(void)
{
	if (curl == NULL)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK ||
			(curl = curl_easy_init()) == NULL)
			elog(ERROR, "could not initialize libcurl");
	}
	return curl;
}

/* The schema kafka.schemas holds under key, or NULL. */
static char *
stored_schema(const KpSchemaKey *key)
{
	Oid			argtypes[] = {BYTEAOID, TEXTOID};
	Datum		args[2];
	bytea	   *fingerprint = palloc(VARHDRSZ + 8);
	char	   *schema = NULL;

	SET_VARSIZE(fingerprint, VARHDRSZ + 8);
	for (int i = 0; i < 8; i++)
		VARDATA(fingerprint)[i] = (key->fingerprint >> (8 * i)) & 0xff;
	args[0] = PointerGetDatum(fingerprint);
	args[1] = CStringGetTextDatum(key->subject);
	if (SPI_execute_with_args("SELECT schema::text FROM kafka.schemas "
							  "WHERE fingerprint = $1 AND subject = $2",
							  2, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read kafka.schemas");
	if (SPI_processed > 0)
		schema = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	SPI_freetuptable(SPI_tuptable);
	return schema;
}

/* POST /subjects/<subject>/versions {"schema": schema} */
static void
post_schema(const char *subject, const char *schema, KpRegistryAnswer *answer)
{
	CURL	   *handle = registry_handle();
	char	   *escaped_subject = curl_easy_escape(handle, subject, 0);
	char	   *url = psprintf("%s/subjects/%s/versions",
							   kp_schema_registry_url, escaped_subject);
	StringInfoData request;
	struct curl_slist *headers = NULL;
	CURLcode	result;

	curl_free(escaped_subject);
	initStringInfo(&request);
	appendStringInfoString(&request, "{\"schema\": ");
	escape_json(&request, schema);
	appendStringInfoChar(&request, '}');
	initStringInfo(&answer->body);
	answer->curl_error[0] = '\0';
	headers = curl_slist_append(headers, "Content-Type: application/vnd.schemaregistry.v1+json");
	headers = curl_slist_append(headers, "Accept: application/vnd.schemaregistry.v1+json, application/json");

	curl_easy_reset(handle);
	curl_easy_setopt(handle, CURLOPT_URL, url);
	curl_easy_setopt(handle, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(handle, CURLOPT_POSTFIELDS, request.data);
	curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE, (long) request.len);
	curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, append_to_body);
	curl_easy_setopt(handle, CURLOPT_WRITEDATA, &answer->body);
	curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, answer->curl_error);
	curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS,
					 (long) KP_REGISTRY_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, (long) KP_REGISTRY_TIMEOUT_MS);
	curl_easy_setopt(handle, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, stop_if_shutting_down);
	curl_easy_setopt(handle, CURLOPT_NOPROGRESS, 0L);
	if (kp_schema_registry_user_info[0] != '\0')
	{
		curl_easy_setopt(handle, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
		curl_easy_setopt(handle, CURLOPT_USERPWD, kp_schema_registry_user_info);
	}
	else if (kp_schema_registry_netrc_file[0] != '\0')
	{
		curl_easy_setopt(handle, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
		curl_easy_setopt(handle, CURLOPT_NETRC, (long) CURL_NETRC_REQUIRED);
		curl_easy_setopt(handle, CURLOPT_NETRC_FILE, kp_schema_registry_netrc_file);
	}
	result = curl_easy_perform(handle);
	answer->reached = result == CURLE_OK;
	answer->status = 0;
	if (answer->reached)
		curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &answer->status);
	else if (answer->curl_error[0] == '\0')
		strlcpy(answer->curl_error, curl_easy_strerror(result),
				sizeof(answer->curl_error));
	curl_slist_free_all(headers);
	pfree(request.data);
	pfree(url);
}

/* The answer's body as jsonb, or NULL if it is not a JSON object. */
static Jsonb *
answer_json(KpRegistryAnswer *answer)
{
	JsonLexContext *lex = makeJsonLexContextCstringLen(answer->body.data,
													   answer->body.len,
													   PG_UTF8, true);
	Jsonb	   *json;

	if (pg_parse_json(lex, &nullSemAction) != JSON_SUCCESS)
		return NULL;
	json = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
											  CStringGetDatum(answer->body.data)));
	return JB_ROOT_IS_OBJECT(json) ? json : NULL;
}

static JsonbValue *
answer_field(Jsonb *json, const char *name)
{
	return json == NULL ? NULL :
		getKeyJsonValueFromContainer(&json->root, name, strlen(name), NULL);
}

/* The registry's words: its "message", else the body itself. */
static char *
answer_message(KpRegistryAnswer *answer)
{
	JsonbValue *message = answer_field(answer_json(answer), "message");

	if (message != NULL && message->type == jbvString)
		return pnstrdup(message->val.string.val, message->val.string.len);
	return pnstrdup(answer->body.data, Min(answer->body.len, 500));
}

/* The id a 200 answer gives, or false if it gives none. */
static bool
answer_id(KpRegistryAnswer *answer, uint32 *id)
{
	JsonbValue *value = answer_field(answer_json(answer), "id");

	if (value == NULL || value->type != jbvNumeric)
		return false;
	*id = DatumGetInt64(DirectFunctionCall1(numeric_int8,
											NumericGetDatum(value->val.numeric)));
	return true;
}

/* Logs once per outage that the registry is out of reach. */
static void
registry_unavailable(const char *subject, const char *why)
{
	retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   KP_REGISTRY_RETRY_MS);
	if (registry_down)
		return;
	registry_down = true;
	ereport(WARNING,
			(errmsg("could not register an Avro schema of subject \"%s\" with the schema registry",
					subject),
			 errdetail("%s", why),
			 errhint("Messages that need the schema stay pending, and the worker tries again every second; check kafka.schema_registry_url.")));
	kp_shmem_set_last_error(psprintf("schema registry: %s", why));
}

static void
registry_available(void)
{
	if (!registry_down)
		return;
	registry_down = false;
	ereport(LOG,
			(errmsg("the schema registry answers again")));
}

/* Registers the entry's schema; sets its state, or returns false if the registry is out of reach. */
static bool
register_schema(KpSchemaEntry *entry, const char *schema)
{
	KpRegistryAnswer answer;
	uint32		id;

	post_schema(entry->key.subject, schema, &answer);
	if (!answer.reached)
	{
		registry_unavailable(entry->key.subject, answer.curl_error);
		return false;
	}
	if (answer.status == 200 && answer_id(&answer, &id))
	{
		registry_available();
		entry->state = KP_SCHEMA_REGISTERED;
		entry->registry_id = id;
		return true;
	}
	if (answer.status == 409 || answer.status == 422)
	{
		registry_available();
		entry->state = KP_SCHEMA_REFUSED;
		entry->refusal = MemoryContextStrdup(registry_context,
											 psprintf("HTTP %ld: %s", answer.status,
													  answer_message(&answer)));
		entry->refused_at = GetCurrentTimestamp();
		return true;
	}
	registry_unavailable(entry->key.subject,
						 psprintf("HTTP %ld: %s", answer.status,
								  answer_message(&answer)));
	return false;
}

/*
 * The cache entry of key, its schema looked up and registered first if not
 * done yet or refused over KP_REGISTRY_REFUSAL_MS ago; NULL if the registry
 * is out of reach.  An entry enters the cache only once complete, so that
 * an ERROR on the way leaves nothing half made.
 */
static KpSchemaEntry *
schema_entry(const KpSchemaKey *key)
{
	KpSchemaEntry *entry = hash_search(schemas, key, HASH_FIND, NULL);
	KpSchemaEntry resolved;
	char	   *schema;

	if (entry != NULL &&
		(entry->state != KP_SCHEMA_REFUSED ||
		 !TimestampDifferenceExceeds(entry->refused_at, GetCurrentTimestamp(),
									 KP_REGISTRY_REFUSAL_MS)))
		return entry;
	memset(&resolved, 0, sizeof(resolved));
	resolved.key = *key;
	schema = stored_schema(key);
	if (schema == NULL)
		resolved.state = KP_SCHEMA_UNKNOWN;
	else if (GetCurrentTimestamp() < retry_at ||
			 !register_schema(&resolved, schema))
		return NULL;
	if (entry == NULL)
		entry = hash_search(schemas, key, HASH_ENTER, NULL);
	else
		pfree(entry->refusal);
	*entry = resolved;
	return entry;
}

/*
 * Converts *data, a key or value of topic, from single-object encoding to
 * Confluent's wire format when it is Avro whose schema is in kafka.schemas.
 * Data that is not (no 0xC3 0x01 prefix, or a fingerprint kafka.schemas
 * does not have under the subject) is left as it is.
 */
KpRegistryResult
kp_registry_frame(const char *topic, bool is_key, const char **data,
				  size_t *len, const char **refusal)
{
	const unsigned char *bytes = (const unsigned char *) *data;
	KpSchemaKey key;
	KpSchemaEntry *entry;
	char	   *framed;

	if (*data == NULL || *len < KP_SINGLE_OBJECT_HEADER ||
		bytes[0] != 0xC3 || bytes[1] != 0x01)
		return KP_REGISTRY_AS_IS;
	reset_for_url();
	memset(&key, 0, sizeof(key));
	snprintf(key.subject, sizeof(key.subject), "%s-%s", topic,
			 is_key ? "key" : "value");
	for (int i = 0; i < 8; i++)
		key.fingerprint |= (uint64) bytes[2 + i] << (8 * i);
	entry = schema_entry(&key);
	if (entry == NULL)
		return KP_REGISTRY_UNAVAILABLE;
	if (entry->state == KP_SCHEMA_UNKNOWN)
		return KP_REGISTRY_AS_IS;
	if (entry->state == KP_SCHEMA_REFUSED)
	{
		*refusal = entry->refusal;
		return KP_REGISTRY_REFUSED;
	}
	framed = palloc(*len - KP_SINGLE_OBJECT_HEADER + KP_CONFLUENT_HEADER);
	framed[0] = 0;
	for (int i = 0; i < 4; i++)
		framed[1 + i] = (entry->registry_id >> (8 * (3 - i))) & 0xff;
	memcpy(framed + KP_CONFLUENT_HEADER, *data + KP_SINGLE_OBJECT_HEADER,
		   *len - KP_SINGLE_OBJECT_HEADER);
	*len = *len - KP_SINGLE_OBJECT_HEADER + KP_CONFLUENT_HEADER;
	*data = framed;
	return KP_REGISTRY_FRAMED;
}
