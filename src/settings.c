/*-------------------------------------------------------------------------
 *
 * settings.c
 *	  The extension's own kafka.* settings, which the producer does not
 *	  see: the databases served, how long outcomes are kept, how often a
 *	  message is tried, its largest size and the name of its id header.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>

#include "nodes/pg_list.h"
#include "utils/guc.h"

#include "kafka_producer.h"

static char *kp_databases = NULL;
static char *kp_database = NULL;
int			kp_max_databases = 8;
char	   *kp_database_header = NULL;
char	   *kp_hash_salt = NULL;
static char *kp_schema_changes_topic = NULL;
/* grows whenever kafka.databases or kafka.database is assigned */
uint32		kp_databases_generation = 0;
int			kp_max_attempts = 10;
int			kp_status_retention = 86400;
int			kp_message_max_bytes = 1000000;
char	   *kp_id_header = NULL;
int			kp_shutdown_timeout_ms = 5000;

/*
 * A topic name once %d is replaced by a database's: Kafka's characters,
 * and room for the name.
 */
static bool
check_schema_changes_topic(char **newval, void **extra, GucSource source)
{
	const char *name = *newval;

	if (strlen(name) + NAMEDATALEN > KP_TOPIC_NAME_MAX)
	{
		GUC_check_errdetail("A topic name has at most %d characters, the database's name included.",
							KP_TOPIC_NAME_MAX);
		return false;
	}
	for (const char *c = name; *c != '\0'; c++)
	{
		if (c[0] == '%' && c[1] == 'd')
			c++;
		else if (!isalnum((unsigned char) *c) && strchr("._-", *c) == NULL)
		{
			GUC_check_errdetail("A topic name is made of ASCII letters, digits, '.', '_' and '-'; %%d stands for the database's name.");
			return false;
		}
	}
	return true;
}

static void
databases_assigned(const char *newval, void *extra)
{
	kp_databases_generation++;
}

void
kp_settings_init(void)
{
	DefineCustomStringVariable("kafka.databases",
							   "Databases whose messages are delivered: a comma-separated list, or * for every database with the extension.",
							   "Empty: kafka.database, its old spelling, names them; both empty: *.",
							   &kp_databases, "",
							   PGC_SIGHUP, 0, NULL, databases_assigned, NULL);
	DefineCustomStringVariable("kafka.database",
							   "Old spelling of kafka.databases.",
							   NULL, &kp_database, "",
							   PGC_SIGHUP, 0, NULL, databases_assigned, NULL);
	DefineCustomIntVariable("kafka.max_databases",
							"Largest number of databases served at once, each by a worker process of its own.",
							NULL, &kp_max_databases, kp_max_databases,
							1, 1024, PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("kafka.database_header",
							   "Name of the record header that carries the name of each message's database (empty = none).",
							   "With kafka.id_header it identifies a message among those of every database sending to a topic.",
							   &kp_database_header, "kafka_producer.database",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("kafka.max_attempts",
							"Attempts before a message that keeps failing transiently is marked failed (0 = no limit).",
							NULL, &kp_max_attempts, kp_max_attempts,
							0, INT_MAX, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("kafka.status_retention",
							"How long delivered messages stay visible in kafka.messages (-1 = forever).",
							NULL, &kp_status_retention, kp_status_retention,
							-1, INT_MAX, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	/* also the producer's message.max.bytes */
	DefineCustomIntVariable("kafka.message_max_bytes",
							"Largest message accepted, in bytes (key, value and headers).",
							NULL, &kp_message_max_bytes, kp_message_max_bytes,
							1000, 1000000000, PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("kafka.shutdown_timeout_ms",
							"How long a stopping worker waits for Kafka to acknowledge what is in flight.",
							"What is not acknowledged by then stays pending and is reconciled or sent again by the next worker; 0 = no wait.",
							&kp_shutdown_timeout_ms, kp_shutdown_timeout_ms,
							0, 600000, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomStringVariable("kafka.hash_salt",
							   "Salt prefixed to the values of published columns named in hash_columns before they are hashed.",
							   "Shown only to superusers.  Changing it changes every hash from then on.",
							   &kp_hash_salt, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("kafka.schema_changes_topic",
							   "Topic of the events that say a published table's columns changed; %d stands for the database's name (empty = none).",
							   NULL, &kp_schema_changes_topic, "%d.schema_changes",
							   PGC_SIGHUP, 0, check_schema_changes_topic, NULL, NULL);
	DefineCustomStringVariable("kafka.id_header",
							   "Name of the record header that carries each message's id (empty = none).",
							   "Consumers dedupe by it, and a restarted worker finds by it what Kafka already holds before sending again.",
							   &kp_id_header, "kafka_producer.id",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/*
 * The setting that names the databases served, and its name in *name:
 * kafka.databases, else its old spelling kafka.database, else "*".
 */
const char *
kp_databases_setting(const char **name)
{
	*name = "kafka.databases";
	if (kp_databases[0] != '\0')
		return kp_databases;
	if (kp_database[0] != '\0')
	{
		*name = "kafka.database";
		return kp_database;
	}
	return "*";
}

/*
 * The databases the setting names, a palloc'd string each; NIL for "*".
 * Names are separated by commas, with the spaces around them ignored.
 */
List *
kp_databases_listed(void)
{
	const char *name;
	char	   *setting = pstrdup(kp_databases_setting(&name));
	List	   *names = NIL;
	char	   *next;

	for (char *item = strtok_r(setting, ",", &next); item != NULL;
		 item = strtok_r(NULL, ",", &next))
	{
		char	   *end = item + strlen(item);

		while (*item == ' ' || *item == '\t')
			item++;
		while (end > item && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		*end = '\0';
		if (strcmp(item, "*") == 0)
			return NIL;
		if (*item != '\0')
			names = lappend(names, pstrdup(item));
	}
	return names;
}

/*
 * Whether database name is served.  "*" serves every database but the
 * templates: a worker connected to one would make CREATE DATABASE fail.
 */
bool
kp_database_served(const char *name, bool is_template)
{
	List	   *names = kp_databases_listed();
	ListCell   *lc;

	if (names == NIL)
		return !is_template;
	foreach(lc, names)
	{
		if (strcmp(lfirst(lc), name) == 0)
			return true;
	}
	return false;
}
