/*-------------------------------------------------------------------------
 *
 * topic_config.c
 *	  Per-topic producer settings, kept in kafka.topic_config: acks,
 *	  compression, partitioner and timeouts of one topic.
 *
 *	  A trigger on the table checks each row with librdkafka itself and
 *	  stores the properties under their Kafka names, values as strings; at
 *	  commit it tells the worker through a generation counter in shared
 *	  memory.  librdkafka applies a topic's configuration only when the
 *	  producer first creates the topic, so the worker, seeing the counter
 *	  move, reads the table and rebuilds its producers if anything changed,
 *	  as it does for a reload of the kafka.* settings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/string.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "delivery.h"

PG_FUNCTION_INFO_V1(kafka_topic_config_trigger);
PG_FUNCTION_INFO_V1(kafka_check_topic_properties);

/*
 * The topic-level properties librdkafka 2.0.2 applies to producing, by
 * their Kafka names; the others are consumer-only or cannot be set as text.
 */
static const char *const producer_topic_properties[] = {
	"acks", "request.required.acks", "request.timeout.ms",
	"message.timeout.ms", "delivery.timeout.ms", "partitioner",
	"compression.type", "compression.codec", "compression.level",
	NULL
};

static bool
is_producer_topic_property(const char *name)
{
	for (int i = 0; producer_topic_properties[i] != NULL; i++)
		if (strcmp(name, producer_topic_properties[i]) == 0)
			return true;
	return false;
}

/* compression_type and compression.type both name Kafka's property */
static char *
kafka_property_name(const char *name, int len)
{
	char	   *result = pnstrdup(name, len);

	for (char *c = result; *c; c++)
		if (*c == '_')
			*c = '.';
	return result;
}

static char *
property_value(const char *name, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("value of Kafka topic property \"%s\" must be a string, number or boolean",
							name)));
	}
	pg_unreachable();
}

static void
check_property(const char *topic, const char *name, const char *value,
			   rd_kafka_topic_conf_t *conf)
{
	char		errstr[512];
	rd_kafka_conf_t *producer_conf;
	rd_kafka_conf_res_t res;

	if (!is_producer_topic_property(name))
	{
		if (rd_kafka_topic_conf_set(conf, name, value, errstr, sizeof(errstr)) !=
			RD_KAFKA_CONF_UNKNOWN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("Kafka topic property \"%s\" does not apply to producers", name)));
		producer_conf = rd_kafka_conf_new();
		res = rd_kafka_conf_set(producer_conf, name, value, errstr, sizeof(errstr));
		rd_kafka_conf_destroy(producer_conf);
		if (res != RD_KAFKA_CONF_UNKNOWN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("Kafka property \"%s\" cannot be set per topic", name),
					 errdetail("It is a setting of the whole producer."),
					 errhint("Set it with the kafka.* settings or kafka.producer_properties.")));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unrecognized Kafka topic property \"%s\"", name),
				 errhint("Per-topic properties are acks, compression.type, compression.level, partitioner, message.timeout.ms, request.timeout.ms.")));
	}
	if (rd_kafka_topic_conf_set(conf, name, value, errstr, sizeof(errstr)) !=
		RD_KAFKA_CONF_OK &&
		pg_strip_crlf(errstr) >= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value \"%s\" for Kafka property \"%s\" of topic \"%s\"",
						value, name, topic),
				 errdetail("%s", errstr)));
	if ((strcmp(name, "acks") == 0 || strcmp(name, "request.required.acks") == 0) &&
		kp_producer_idempotence() &&
		strcmp(value, "all") != 0 && strcmp(value, "-1") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic \"%s\" cannot have acks %s while kafka.enable_idempotence is on",
						topic, value),
				 errdetail("The idempotent producer needs acknowledgement by all in-sync replicas."),
				 errhint("Set kafka.enable_idempotence to off to allow acks 0 or 1.")));
}

/*
 * Checks properties, a JSON object of Kafka topic properties, with
 * librdkafka; returns it with Kafka's names and string values.
 */
static Jsonb *
checked_properties(const char *topic, Jsonb *properties)
{
	rd_kafka_topic_conf_t *conf = rd_kafka_topic_conf_new();
	JsonbParseState *state = NULL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	JsonbValue *result;
	char	   *name = NULL;

	if (!JB_ROOT_IS_OBJECT(properties) || JB_ROOT_IS_SCALAR(properties))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Kafka topic properties must be a JSON object"),
				 errhint("For example '{\"acks\": \"1\", \"compression.type\": \"zstd\"}'.")));

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	it = JsonbIteratorInit(&properties->root);
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		JsonbValue	out;

		if (token == WJB_KEY)
		{
			name = kafka_property_name(v.val.string.val, v.val.string.len);
			out.type = jbvString;
			out.val.string.val = name;
			out.val.string.len = strlen(name);
			pushJsonbValue(&state, WJB_KEY, &out);
		}
		else if (token == WJB_VALUE)
		{
			char	   *value = property_value(name, &v);

			check_property(topic, name, value, conf);
			out.type = jbvString;
			out.val.string.val = value;
			out.val.string.len = strlen(value);
			pushJsonbValue(&state, WJB_VALUE, &out);
		}
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	rd_kafka_topic_conf_destroy(conf);
	return JsonbValueToJsonb(result);
}

/*
 * kafka.check_topic_properties(topic text, properties jsonb) returns the
 * properties as they would be stored
 */
Datum
kafka_check_topic_properties(PG_FUNCTION_ARGS)
{
	text	   *topic = PG_GETARG_TEXT_PP(0);

	kp_check_topic(topic);
	PG_RETURN_JSONB_P(checked_properties(text_to_cstring(topic),
										 PG_GETARG_JSONB_P(1)));
}

/*
 * BEFORE INSERT OR UPDATE OR DELETE FOR EACH ROW, and TRUNCATE, on
 * kafka.topic_config(topic text, properties jsonb, ...).
 */
Datum
kafka_topic_config_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	desc;
	int			columns[2];
	Datum		values[2];
	bool		nulls[2] = {false, false};
	bool		isnull;
	text	   *topic;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "kafka_topic_config_trigger: not called by trigger manager");
	/* the worker reads the table again once the transaction commits */
	kp_shmem_generation_advance_at_commit(KP_GENERATION_TOPIC_CONFIG);
	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		return PointerGetDatum(trigdata->tg_trigtuple);

	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);
	columns[0] = SPI_fnumber(desc, "topic");
	columns[1] = SPI_fnumber(desc, "properties");
	if (columns[0] <= 0 || columns[1] <= 0)
		elog(ERROR, "kafka.topic_config lacks column topic or properties");
	topic = DatumGetTextPP(heap_getattr(tuple, columns[0], desc, &isnull));
	kp_check_topic(topic);
	values[1] = heap_getattr(tuple, columns[1], desc, &isnull);
	values[1] = PointerGetDatum(checked_properties(text_to_cstring(topic),
												   DatumGetJsonbP(values[1])));
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, desc, 1, &columns[1],
													 &values[1], &nulls[1]));
}

/* ---------------------------------------------------------------------
 * The worker's side
 * ---------------------------------------------------------------------
 */

typedef struct KpTopicConfig
{
	char		topic[KP_TOPIC_NAME_MAX + 1];	/* hash key */
	int			count;
	char	  **names;
	char	  **values;
} KpTopicConfig;

static MemoryContext config_context = NULL;
static HTAB *configs = NULL;
static char *config_fingerprint = "";
static uint64 loaded_generation = 0;

static void
add_config(const char *topic, Jsonb *properties, StringInfo fingerprint)
{
	KpTopicConfig *config = hash_search(configs, topic, HASH_ENTER, NULL);
	JsonbIterator *it = JsonbIteratorInit(&properties->root);
	JsonbValue	v;
	JsonbIteratorToken token;
	int			n = 0;

	config->count = JB_ROOT_COUNT(properties);
	config->names = palloc(config->count * sizeof(char *));
	config->values = palloc(config->count * sizeof(char *));
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
			config->names[n] = pnstrdup(v.val.string.val, v.val.string.len);
		else if (token == WJB_VALUE && v.type == jbvString)
		{
			config->values[n] = pnstrdup(v.val.string.val, v.val.string.len);
			appendStringInfo(fingerprint, "%s.%s=%s\n", topic,
							 config->names[n], config->values[n]);
			n++;
		}
	}
	config->count = n;
}

/*
 * Reads kafka.topic_config, in a transaction with SPI connected.  An
 * extension without the table (being created or dropped) has no settings.
 */
void
kp_topic_config_load(void)
{
	MemoryContext old;
	HASHCTL		ctl;
	StringInfoData fingerprint;

	loaded_generation = kp_shmem_generation(KP_GENERATION_TOPIC_CONFIG);
	if (config_context == NULL)
		config_context = AllocSetContextCreate(TopMemoryContext,
											   "kafka_producer topic settings",
											   ALLOCSET_SMALL_SIZES);
	MemoryContextReset(config_context);
	old = MemoryContextSwitchTo(config_context);
	ctl.keysize = KP_TOPIC_NAME_MAX + 1;
	ctl.entrysize = sizeof(KpTopicConfig);
	ctl.hcxt = config_context;
	configs = hash_create("kafka_producer topic settings", 16, &ctl,
						  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	initStringInfo(&fingerprint);
	MemoryContextSwitchTo(old);

	if (kp_extension_ready() &&
		SPI_execute("SELECT topic, properties FROM kafka.topic_config ORDER BY topic",
					true, 0) == SPI_OK_SELECT)
	{
		old = MemoryContextSwitchTo(config_context);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	row = SPI_tuptable->vals[i];
			bool		isnull;
			char	   *topic = SPI_getvalue(row, SPI_tuptable->tupdesc, 1);
			Datum		properties = SPI_getbinval(row, SPI_tuptable->tupdesc, 2,
												   &isnull);

			if (!isnull)
				add_config(topic, DatumGetJsonbP(properties), &fingerprint);
		}
		MemoryContextSwitchTo(old);
	}
	config_fingerprint = fingerprint.data;
}

bool
kp_topic_config_changed(void)
{
	return kp_shmem_generation(KP_GENERATION_TOPIC_CONFIG) != loaded_generation;
}

/* A string that changes whenever a per-topic setting changes. */
const char *
kp_topic_config_fingerprint(void)
{
	return config_fingerprint;
}

/*
 * The topic configuration for a topic's handle, or NULL for the producer's
 * defaults.  A setting librdkafka refuses now (the kafka.* settings
 * changed since it was checked) is logged and left out.
 */
rd_kafka_topic_conf_t *
kp_topic_config_for(const char *topic)
{
	KpTopicConfig *config;
	rd_kafka_topic_conf_t *conf;
	char		errstr[512];

	if (configs == NULL ||
		(config = hash_search(configs, topic, HASH_FIND, NULL)) == NULL)
		return NULL;
	conf = rd_kafka_topic_conf_new();
	for (int i = 0; i < config->count; i++)
		if (rd_kafka_topic_conf_set(conf, config->names[i], config->values[i],
									errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
			ereport(LOG,
					(errmsg("ignoring Kafka property \"%s\" of topic \"%s\": %s",
							config->names[i], topic, errstr)));
	return conf;
}
