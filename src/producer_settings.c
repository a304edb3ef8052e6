/*-------------------------------------------------------------------------
 *
 * producer_settings.c
 *	  The producer's kafka.* settings, named after Kafka's properties, a
 *	  superuser-only pass-through for any other librdkafka property and a
 *	  file of them; the librdkafka configuration they make.  Values are
 *	  checked when set, by librdkafka itself where it can judge them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>

#include "storage/fd.h"
#include "utils/guc.h"

#include "delivery.h"

/* librdkafka defaults, except that the idempotent producer is on */
static char *kp_bootstrap_servers = NULL;
static int	kp_acks = -1;
static int	kp_compression_type = 0;
static int	kp_batch_size = 1000000;
static int	kp_linger_ms = 5;
static int	kp_retries = INT_MAX;
static int	kp_retry_backoff_ms = 100;
static int	kp_max_in_flight = 5;
static bool kp_enable_idempotence = true;
static int	kp_message_timeout_ms = 300000;
static int	kp_statistics_interval_ms = 5000;
static char *kp_producer_properties = NULL;
static char *kp_producer_properties_file = NULL;


static const struct config_enum_entry acks_options[] = {
	{"all", -1, false},
	{"-1", -1, true},
	{"0", 0, false},
	{"1", 1, false},
	{NULL, 0, false}
};

static const struct config_enum_entry compression_options[] = {
	{"none", 0, false},
	{"gzip", 1, false},
	{"snappy", 2, false},
	{"lz4", 3, false},
	{"zstd", 4, false},
	{NULL, 0, false}
};

/*
 * Properties that have a setting of their own: the pass-through refuses
 * them so that one value cannot hide behind another.
 */
static const struct
{
	const char *property;
	const char *setting;
}			owned_properties[] = {
	{"bootstrap.servers", "kafka.bootstrap_servers"},
	{"metadata.broker.list", "kafka.bootstrap_servers"},
	{"acks", "kafka.acks"},
	{"request.required.acks", "kafka.acks"},
	{"compression.type", "kafka.compression_type"},
	{"compression.codec", "kafka.compression_type"},
	{"batch.size", "kafka.batch_size"},
	{"linger.ms", "kafka.linger_ms"},
	{"queue.buffering.max.ms", "kafka.linger_ms"},
	{"retries", "kafka.retries"},
	{"message.send.max.retries", "kafka.retries"},
	{"retry.backoff.ms", "kafka.retry_backoff_ms"},
	{"max.in.flight.requests.per.connection", "kafka.max_in_flight"},
	{"max.in.flight", "kafka.max_in_flight"},
	{"enable.idempotence", "kafka.enable_idempotence"},
	{"message.timeout.ms", "kafka.message_timeout_ms"},
	{"delivery.timeout.ms", "kafka.message_timeout_ms"},
	{"message.max.bytes", "kafka.message_max_bytes"},
	{"statistics.interval.ms", "kafka.statistics_interval_ms"},
	{"log.queue", NULL},
};

/* One librdkafka property and its value, as the worker will set it. */
typedef struct KpProperty
{
	char	   *name;
	char	   *value;
} KpProperty;

/* Appends name=value to props, which has room for *capacity. */
static void
add_property(KpProperty **props, int *count, int *capacity,
			 const char *name, const char *value)
{
	if (*count == *capacity)
	{
		*capacity *= 2;
		*props = repalloc(*props, *capacity * sizeof(KpProperty));
	}
	(*props)[*count].name = pstrdup(name);
	(*props)[*count].value = pstrdup(value);
	(*count)++;
}

/*
 * Splits "name=value,name=value" into properties.  A comma-separated piece
 * without "=" continues the previous value, so that list-valued properties
 * ("debug=broker,topic") need no quoting.  Returns the number of properties,
 * or -1 with *bad pointing at a piece that has no name.
 */
static int
parse_property_list(const char *list, KpProperty **props, const char **bad)
{
	char	   *copy = pstrdup(list);
	char	   *piece;
	char	   *saveptr = NULL;
	int			count = 0;
	int			capacity = 8;

	*props = palloc(capacity * sizeof(KpProperty));
	for (piece = strtok_r(copy, ",", &saveptr); piece != NULL;
		 piece = strtok_r(NULL, ",", &saveptr))
	{
		char	   *eq = strchr(piece, '=');

		if (eq == NULL && count > 0)
		{
			KpProperty *last = &(*props)[count - 1];

			last->value = psprintf("%s,%s", last->value, piece);
			continue;
		}
		if (eq == NULL || eq == piece)
		{
			*bad = pstrdup(piece);
			return -1;
		}
		*eq = '\0';
		add_property(props, &count, &capacity, piece, eq + 1);
	}
	return count;
}

static const char *
owning_setting(const char *property)
{
	for (size_t i = 0; i < lengthof(owned_properties); i++)
	{
		if (strcmp(owned_properties[i].property, property) == 0)
			return owned_properties[i].setting ? owned_properties[i].setting :
				"";
	}
	return NULL;
}

/*
 * Asks librdkafka whether it accepts the property; on refusal fills the
 * GUC error message and detail.
 */
static bool
rdkafka_accepts(const char *setting, const char *property, const char *value)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errstr[512];
	rd_kafka_conf_res_t res;

	res = rd_kafka_conf_set(conf, property, value, errstr, sizeof(errstr));
	rd_kafka_conf_destroy(conf);
	if (res == RD_KAFKA_CONF_OK)
		return true;
	GUC_check_errmsg("invalid value for parameter \"%s\": Kafka property \"%s\" was refused",
					 setting, property);
	GUC_check_errdetail("%s", errstr);
	return false;
}

/*
 * Checks properties given through setting: none that has a setting of its
 * own, and each accepted by librdkafka.
 */
static bool
check_property_list(const char *setting, KpProperty *props, int count)
{
	for (int i = 0; i < count; i++)
	{
		const char *owner = owning_setting(props[i].name);

		if (owner != NULL)
		{
			GUC_check_errdetail("Kafka property \"%s\" cannot be set through %s.",
								props[i].name, setting);
			if (*owner != '\0')
				GUC_check_errhint("Set \"%s\" instead.", owner);
			return false;
		}
		if (!rdkafka_accepts(setting, props[i].name, props[i].value))
			return false;
	}
	return true;
}

static bool
check_producer_properties(char **newval, void **extra, GucSource source)
{
	KpProperty *props;
	const char *bad = NULL;
	int			count;

	if (*newval == NULL || **newval == '\0')
		return true;
	count = parse_property_list(*newval, &props, &bad);
	if (count < 0)
	{
		GUC_check_errdetail("\"%s\" is not of the form name=value.", bad);
		return false;
	}
	return check_property_list("kafka.producer_properties", props, count);
}

/* white space off both ends of s, in place */
static char *
trim(char *s)
{
	char	   *end;

	while (isspace((unsigned char) *s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char) end[-1]))
		*--end = '\0';
	return s;
}

/*
 * Reads the properties file: a name=value per line; blank lines and lines
 * starting with # are skipped.  Returns the number of properties, or -1
 * with *error saying why (never a value: they may be secrets).
 */
static int
read_properties_file(const char *path, KpProperty **props, char **error)
{
	FILE	   *file = AllocateFile(path, "r");
	char		line[8192];
	int			count = 0;
	int			capacity = 8;
	int			lineno = 0;

	if (file == NULL)
	{
		*error = psprintf("Could not open file \"%s\": %m.", path);
		return -1;
	}
	*props = palloc(capacity * sizeof(KpProperty));
	while (fgets(line, sizeof(line), file) != NULL)
	{
		char	   *text = trim(line);
		char	   *eq = strchr(text, '=');

		lineno++;
		if (*text == '\0' || *text == '#')
			continue;
		if (eq == NULL || eq == text)
		{
			FreeFile(file);
			*error = psprintf("Line %d of file \"%s\" is not of the form name=value.",
							  lineno, path);
			return -1;
		}
		*eq = '\0';
		add_property(props, &count, &capacity, trim(text), trim(eq + 1));
	}
	FreeFile(file);
	return count;
}

static bool
check_producer_properties_file(char **newval, void **extra, GucSource source)
{
	KpProperty *props;
	char	   *error = NULL;
	int			count;

	if (*newval == NULL || **newval == '\0')
		return true;
	if (!is_absolute_path(*newval))
	{
		GUC_check_errdetail("The properties file must be given by an absolute path.");
		return false;
	}
	count = read_properties_file(*newval, &props, &error);
	if (count < 0)
	{
		GUC_check_errdetail("%s", error);
		return false;
	}
	return check_property_list("kafka.producer_properties_file", props, count);
}

/* Kafka's bootstrap list: host:port pairs separated by commas. */
static bool
check_bootstrap_servers(char **newval, void **extra, GucSource source)
{
	char	   *copy;
	char	   *saveptr = NULL;

	if (*newval == NULL || **newval == '\0')
	{
		GUC_check_errdetail("At least one broker must be given as host:port.");
		return false;
	}
	copy = pstrdup(*newval);
	for (char *broker = strtok_r(copy, ", ", &saveptr); broker != NULL;
		 broker = strtok_r(NULL, ", ", &saveptr))
	{
		char	   *colon = strrchr(broker, ':');
		char	   *end;
		long		port;

		if (colon == NULL || colon == broker)
		{
			GUC_check_errdetail("Broker \"%s\" is not of the form host:port.",
								broker);
			return false;
		}
		port = strtol(colon + 1, &end, 10);
		if (*end != '\0' || port < 1 || port > 65535)
		{
			GUC_check_errdetail("Broker \"%s\" has no valid port number.",
								broker);
			return false;
		}
	}
	return rdkafka_accepts("kafka.bootstrap_servers", "bootstrap.servers",
						   *newval);
}

/* Every librdkafka property the worker sets, in the order it sets them. */
static int
producer_properties(KpProperty **props)
{
	KpProperty *extra_props = NULL;
	const char *bad = NULL;
	int			extra_count = 0;
	int			n = 0;
	KpProperty *p;

	KpProperty *file_props = NULL;
	int			file_count = 0;
	char	   *error = NULL;

	if (kp_producer_properties != NULL && *kp_producer_properties != '\0')
		extra_count = parse_property_list(kp_producer_properties,
										  &extra_props, &bad);
	/* the check hook has seen this value already */
	Assert(extra_count >= 0);
	if (kp_producer_properties_file != NULL &&
		*kp_producer_properties_file != '\0')
		file_count = read_properties_file(kp_producer_properties_file,
										  &file_props, &error);
	/* the file changed since the check: without its properties, say why */
	if (file_count < 0)
	{
		ereport(LOG,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("ignoring kafka.producer_properties_file"),
				 errdetail_internal("%s", error)));
		file_count = 0;
	}

	p = palloc((14 + extra_count + file_count) * sizeof(KpProperty));
	/* defaults the user may override through the pass-through */
	p[n++] = (KpProperty) {"client.id", "kafka_producer"};
	for (int i = 0; i < extra_count; i++)
		p[n++] = extra_props[i];
	for (int i = 0; i < file_count; i++)
		p[n++] = file_props[i];
	p[n++] = (KpProperty) {"bootstrap.servers", kp_bootstrap_servers};
	p[n++] = (KpProperty) {"acks", psprintf("%d", kp_acks)};
	p[n++] = (KpProperty) {"compression.type",
		(char *) compression_options[kp_compression_type].name};
	p[n++] = (KpProperty) {"batch.size", psprintf("%d", kp_batch_size)};
	p[n++] = (KpProperty) {"linger.ms", psprintf("%d", kp_linger_ms)};
	p[n++] = (KpProperty) {"retries", psprintf("%d", kp_retries)};
	p[n++] = (KpProperty) {"retry.backoff.ms",
		psprintf("%d", kp_retry_backoff_ms)};
	p[n++] = (KpProperty) {"max.in.flight.requests.per.connection",
		psprintf("%d", kp_max_in_flight)};
	p[n++] = (KpProperty) {"enable.idempotence",
		kp_enable_idempotence ? "true" : "false"};
	p[n++] = (KpProperty) {"message.timeout.ms",
		psprintf("%d", kp_message_timeout_ms)};
	p[n++] = (KpProperty) {"message.max.bytes",
		psprintf("%d", kp_message_max_bytes)};
	p[n++] = (KpProperty) {"statistics.interval.ms",
		psprintf("%d", kp_statistics_interval_ms)};
	p[n++] = (KpProperty) {"log.queue", "true"};
	*props = p;
	return n;
}

/*
 * Builds the producer configuration from the current settings.  Returns
 * NULL, with the reason in errstr, when librdkafka refuses a value.
 */
rd_kafka_conf_t *
kp_producer_conf(char *errstr, size_t errstr_size)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	KpProperty *props;
	int			count = producer_properties(&props);

	for (int i = 0; i < count; i++)
	{
		if (rd_kafka_conf_set(conf, props[i].name, props[i].value,
							  errstr, errstr_size) != RD_KAFKA_CONF_OK)
		{
			rd_kafka_conf_destroy(conf);
			return NULL;
		}
	}
	return conf;
}

/* A string that changes whenever any producer property changes. */
char *
kp_producer_settings_fingerprint(void)
{
	StringInfoData buf;
	KpProperty *props;
	int			count = producer_properties(&props);

	initStringInfo(&buf);
	for (int i = 0; i < count; i++)
		appendStringInfo(&buf, "%s=%s\n", props[i].name, props[i].value);
	return buf.data;
}

static void
define_producer_int(const char *name, const char *description, int *variable,
					int min, int max, int flags)
{
	DefineCustomIntVariable(name, description, NULL, variable, *variable,
							min, max, PGC_SIGHUP, flags, NULL, NULL, NULL);
}

bool
kp_producer_idempotence(void)
{
	return kp_enable_idempotence;
}

/* kafka.message_timeout_ms, with 0 (no limit) as the largest wait */
int
kp_producer_linger_ms(void)
{
	return kp_linger_ms;
}

int
kp_producer_message_timeout_ms(void)
{
	return kp_message_timeout_ms == 0 ? INT_MAX : kp_message_timeout_ms;
}

void
kp_producer_settings_init(void)
{
	DefineCustomStringVariable("kafka.bootstrap_servers",
							   "Kafka brokers to discover the cluster from (host:port, comma-separated).",
							   NULL, &kp_bootstrap_servers, "localhost:9092",
							   PGC_SIGHUP, 0,
							   check_bootstrap_servers, NULL, NULL);
	DefineCustomEnumVariable("kafka.acks",
							 "Acknowledgements the leader must receive before a message counts as delivered.",
							 "all waits for every in-sync replica, 1 for the leader only, 0 for none.",
							 &kp_acks, kp_acks, acks_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("kafka.compression_type",
							 "Compression codec for message batches.",
							 NULL, &kp_compression_type, kp_compression_type,
							 compression_options, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	define_producer_int("kafka.batch_size",
						"Maximum size of a message batch, in bytes.",
						&kp_batch_size, 1, 2147483647, GUC_UNIT_BYTE);
	define_producer_int("kafka.linger_ms",
						"Time to wait for more messages before sending a batch.",
						&kp_linger_ms, 0, 900000, GUC_UNIT_MS);
	define_producer_int("kafka.retries",
						"How often a failed produce request is retried by the producer.",
						&kp_retries, 0, 2147483647, 0);
	define_producer_int("kafka.retry_backoff_ms",
						"Time between retries of a failed produce request.",
						&kp_retry_backoff_ms, 1, 300000, GUC_UNIT_MS);
	define_producer_int("kafka.max_in_flight",
						"Maximum unacknowledged requests per broker connection.",
						&kp_max_in_flight, 1, 1000000, 0);
	DefineCustomBoolVariable("kafka.enable_idempotence",
							 "Use Kafka's idempotent producer: retries neither duplicate nor reorder messages.",
							 NULL, &kp_enable_idempotence, kp_enable_idempotence,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	define_producer_int("kafka.message_timeout_ms",
						"Time a message may wait for delivery before this attempt counts as failed (0 = no limit).",
						&kp_message_timeout_ms, 0, 2147483647, GUC_UNIT_MS);
	define_producer_int("kafka.statistics_interval_ms",
						"How often the producer's statistics (kafka_stats(), kafka_brokers()) are refreshed (0 = never).",
						&kp_statistics_interval_ms, 0, 86400000, GUC_UNIT_MS);
	DefineCustomStringVariable("kafka.producer_properties",
							   "Further librdkafka producer properties, as name=value pairs separated by commas.",
							   "Visible to superusers only, since it may hold credentials.",
							   &kp_producer_properties, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   check_producer_properties, NULL, NULL);
	DefineCustomStringVariable("kafka.producer_properties_file",
							   "A file of further librdkafka producer properties, a name=value per line, read by the server only.",
							   "The place for credentials (sasl.password, ssl.key.password): unlike settings, the file's content is visible to no SQL role.",
							   &kp_producer_properties_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_producer_properties_file, NULL, NULL);
}
