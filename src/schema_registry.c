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
 *	  waits on the network, and with libcurl's multi interface, so that the
 *	  worker does not either: a message whose schema is not registered yet
 *	  is held back (with those after it, to keep their order) while one
 *	  request at a time runs; the worker's loop carries on answering sync
 *	  sends, recording outcomes and waking waiters, and polls the request
 *	  between its steps, outside any transaction.  A registry that cannot be
 *	  reached, or answers with anything but an id or a refusal, holds the
 *	  message back until a later attempt succeeds; a refusal (HTTP 409,
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
#include "miscadmin.h"
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
/* a check of a schema change, which its ALTER TABLE waits for */
#define KP_COMPATIBILITY_CONNECT_TIMEOUT_MS 1000
#define KP_COMPATIBILITY_TIMEOUT_MS 3000
/* a registry's answer is a small JSON object; one past this is not */
#define KP_REGISTRY_MAX_ANSWER (1024 * 1024)
/* how long an unreachable registry is left alone before the next attempt */
#define KP_REGISTRY_RETRY_MS 1000
/* how long a refusal stands before the registry is asked again */
#define KP_REGISTRY_REFUSAL_MS 1000

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

/* the registration in flight; its memory in registration_context */
typedef struct KpRegistration
{
	KpSchemaKey key;
	struct curl_slist *headers;
	StringInfoData request;
	KpRegistryAnswer answer;
} KpRegistration;

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
static CURLM *multi = NULL;
static KpRegistration *registration = NULL;
static MemoryContext registration_context = NULL;
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

static void end_registration(void);

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
	end_registration();
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

/* The one easy handle, reused so that its connection is, and the multi handle. */
static CURL *
registry_handle(void)
{
	if (curl == NULL)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK ||
			(curl = curl_easy_init()) == NULL ||
			(multi = curl_multi_init()) == NULL)
			elog(ERROR, "could not initialize libcurl");
		registration_context = AllocSetContextCreate(TopMemoryContext,
													 "kafka_producer schema registration",
													 ALLOCSET_SMALL_SIZES);
	}
	return curl;
}

/* Lets go of the registration in flight, if any. */
static void
end_registration(void)
{
	if (registration == NULL)
		return;
	curl_multi_remove_handle(multi, curl);
	curl_slist_free_all(registration->headers);
	registration = NULL;
	MemoryContextReset(registration_context);
}

/* The schema kafka.schemas holds under key, or NULL. */
static char *
stored_schema(const KpSchemaKey *key)
{
	Oid			argtypes[] = {BYTEAOID, TEXTOID};
	Datum		args[2];
	char	   *schema = NULL;

	args[0] = PointerGetDatum(kp_avro_fingerprint_bytea(key->fingerprint));
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

/*
 * Sets handle up for a POST of r's request to url, its answer into r's,
 * with the registry's credentials.  r's memory must outlive the request.
 */
static void
prepare_post(CURL *handle, const char *url, KpRegistration *r)
{
	curl_easy_reset(handle);
	curl_easy_setopt(handle, CURLOPT_URL, url);
	curl_easy_setopt(handle, CURLOPT_HTTPHEADER, r->headers);
	curl_easy_setopt(handle, CURLOPT_POSTFIELDS, r->request.data);
	curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE, (long) r->request.len);
	curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, append_to_body);
	curl_easy_setopt(handle, CURLOPT_WRITEDATA, &r->answer.body);
	curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, r->answer.curl_error);
	curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS,
					 (long) KP_REGISTRY_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, (long) KP_REGISTRY_TIMEOUT_MS);
	curl_easy_setopt(handle, CURLOPT_PROTOCOLS_STR, "http,https");
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
}

/* A request of {"schema": schema} and its answer, in CurrentMemoryContext. */
static KpRegistration *
new_request(const char *schema)
{
	KpRegistration *r = palloc0(sizeof(KpRegistration));

	initStringInfo(&r->request);
	appendStringInfoString(&r->request, "{\"schema\": ");
	escape_json(&r->request, schema);
	appendStringInfoChar(&r->request, '}');
	initStringInfo(&r->answer.body);
	r->headers = curl_slist_append(r->headers, "Content-Type: application/vnd.schemaregistry.v1+json");
	r->headers = curl_slist_append(r->headers, "Accept: application/vnd.schemaregistry.v1+json, application/json");
	return r;
}

/*
 * Starts POST /subjects/<subject>/versions {"schema": schema} for key; the
 * answer is taken by kp_registry_poll().
 */
static void
start_registration(const KpSchemaKey *key, const char *schema)
{
	CURL	   *handle = registry_handle();
	MemoryContext outer = MemoryContextSwitchTo(registration_context);
	char	   *escaped_subject = curl_easy_escape(handle, key->subject, 0);
	char	   *url = psprintf("%s/subjects/%s/versions",
							   kp_schema_registry_url, escaped_subject);
	KpRegistration *r = new_request(schema);

	curl_free(escaped_subject);
	r->key = *key;
	MemoryContextSwitchTo(outer);

	prepare_post(handle, url, r);
	if (curl_multi_add_handle(multi, handle) != CURLM_OK)
		elog(ERROR, "could not start a schema registry request");
	registration = r;
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

/*
 * What the finished registration's answer makes of its schema: registered,
 * or refused; false if the registry was out of reach.
 */
static bool
resolve_registration(KpSchemaEntry *entry)
{
	KpRegistryAnswer *answer = &registration->answer;
	uint32		id;

	entry->key = registration->key;
	if (!answer->reached)
	{
		registry_unavailable(entry->key.subject, answer->curl_error);
		return false;
	}
	if (answer->status == 200 && answer_id(answer, &id))
	{
		registry_available();
		entry->state = KP_SCHEMA_REGISTERED;
		entry->registry_id = id;
		return true;
	}
	if (answer->status == 409 || answer->status == 422)
	{
		registry_available();
		entry->state = KP_SCHEMA_REFUSED;
		entry->refusal = MemoryContextStrdup(registry_context,
											 psprintf("HTTP %ld: %s", answer->status,
													  answer_message(answer)));
		entry->refused_at = GetCurrentTimestamp();
		return true;
	}
	registry_unavailable(entry->key.subject,
						 psprintf("HTTP %ld: %s", answer->status,
								  answer_message(answer)));
	return false;
}

/* Stores resolved in the cache, replacing what it held for the same key. */
static void
remember(KpSchemaEntry *resolved)
{
	bool		found;
	KpSchemaEntry *entry = hash_search(schemas, &resolved->key, HASH_ENTER, &found);

	if (found && entry->refusal != NULL)
		pfree(entry->refusal);
	*entry = *resolved;
}

bool
kp_registry_in_flight(void)
{
	return registration != NULL;
}

/*
 * Moves the registration in flight on, without waiting; returns true when
 * it has finished, its outcome cached (or the registry found out of reach).
 * Outside any transaction, in the worker's loop.
 */
bool
kp_registry_poll(void)
{
	int			running;
	int			queued;
	CURLMsg    *done = NULL;
	CURLMsg    *msg;
	KpSchemaEntry resolved;
	MemoryContext outer;

	if (registration == NULL)
		return false;
	curl_multi_perform(multi, &running);
	while ((msg = curl_multi_info_read(multi, &queued)) != NULL)
		if (msg->msg == CURLMSG_DONE)
			done = msg;
	if (done == NULL)
		return false;
	registration->answer.reached = done->data.result == CURLE_OK;
	if (registration->answer.reached)
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &registration->answer.status);
	else if (registration->answer.curl_error[0] == '\0')
		strlcpy(registration->answer.curl_error, curl_easy_strerror(done->data.result),
				sizeof(registration->answer.curl_error));
	memset(&resolved, 0, sizeof(resolved));
	/* what the answer's parsing allocates goes with the registration */
	outer = MemoryContextSwitchTo(registration_context);
	if (resolve_registration(&resolved))
		remember(&resolved);
	MemoryContextSwitchTo(outer);
	end_registration();
	return true;
}

/*
 * The cache entry of key, or NULL while its schema is being registered
 * (or waits its turn, or for an unreachable registry): the first time it
 * is asked for, or KP_REGISTRY_REFUSAL_MS after a refusal, its schema is
 * looked up and its registration started.  An entry enters the cache only
 * once complete, so that an ERROR on the way leaves nothing half made.
 */
static KpSchemaEntry *
schema_entry(const KpSchemaKey *key)
{
	KpSchemaEntry *entry = hash_search(schemas, key, HASH_FIND, NULL);
	KpSchemaEntry unknown;
	char	   *schema;

	if (entry != NULL &&
		(entry->state != KP_SCHEMA_REFUSED ||
		 !TimestampDifferenceExceeds(entry->refused_at, GetCurrentTimestamp(),
									 KP_REGISTRY_REFUSAL_MS)))
		return entry;
	if (registration != NULL || GetCurrentTimestamp() < retry_at)
		return NULL;
	schema = stored_schema(key);
	if (schema != NULL)
	{
		start_registration(key, schema);
		return NULL;
	}
	memset(&unknown, 0, sizeof(unknown));
	unknown.key = *key;
	unknown.state = KP_SCHEMA_UNKNOWN;
	remember(&unknown);
	return hash_search(schemas, key, HASH_FIND, NULL);
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
	kp_avro_subject(key.subject, topic, is_key);
	key.fingerprint = kp_avro_fingerprint_get(*data + 2);
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

/* libcurl's progress callback: a non-zero return ends the transfer */
static int
stop_if_interrupted(void *arg, curl_off_t dltotal, curl_off_t dlnow,
					curl_off_t ultotal, curl_off_t ulnow)
{
	return InterruptPending ? 1 : 0;
}

/*
 * Whether the registry would take schema as the next version of subject:
 * false, with the registry's reasons in *why, when it would refuse; true
 * when it would take it or cannot say (no such subject yet, out of reach).
 * Waits for the answer, a few seconds at most: for a backend checking
 * DDL, never for a message.
 */
bool
kp_registry_compatible(const char *subject, const char *schema, char **why)
{
	CURL	   *handle = registry_handle();
	char	   *escaped_subject = curl_easy_escape(handle, subject, 0);
	char	   *url = psprintf("%s/compatibility/subjects/%s/versions/latest?verbose=true",
							   kp_schema_registry_url, escaped_subject);
	KpRegistration *r = new_request(schema);
	long		status = 0;
	Jsonb	   *answer;
	JsonbValue *compatible;
	JsonbValue *messages;
	bool		sent;

	curl_free(escaped_subject);
	prepare_post(handle, url, r);
	/* under ALTER TABLE's lock: briefly, and a cancel ends it */
	curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS, (long) KP_COMPATIBILITY_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, (long) KP_COMPATIBILITY_TIMEOUT_MS);
	curl_easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, stop_if_interrupted);
	curl_easy_setopt(handle, CURLOPT_NOPROGRESS, 0L);
	sent = curl_easy_perform(handle) == CURLE_OK &&
		curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK;
	curl_slist_free_all(r->headers);
	if (!sent || status != 200)
		return true;
	answer = answer_json(&r->answer);
	compatible = answer_field(answer, "is_compatible");
	if (compatible == NULL || compatible->type != jbvBool || compatible->val.boolean)
		return true;
	messages = answer_field(answer, "messages");
	*why = messages != NULL && messages->type == jbvBinary ?
		JsonbToCString(NULL, messages->val.binary.data, messages->val.binary.len) :
		pstrdup("the registry gave no reason");
	return false;
}
