/*-------------------------------------------------------------------------
 *
 * producer.c
 *	  The worker's librdkafka producer: its lifecycle, the messages it has
 *	  in flight, and the delivery reports it hands back.
 *
 *	  librdkafka is driven through its event API on the main queue, polled
 *	  by the worker itself, so no librdkafka callback ever runs PostgreSQL
 *	  code that could throw.  The queue writes a byte to a pipe when it goes
 *	  from empty to non-empty: the worker waits on that pipe and its latch.
 *
 *	  A message id stays in the in-flight set from the moment it is handed
 *	  to librdkafka until the worker has recorded its outcome, so that a
 *	  rescan of the outbox never sends it a second time.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "common/hashfn.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "delivery.h"

static rd_kafka_t *producer = NULL;
static rd_kafka_queue_t *main_queue = NULL;
static int	wakeup_pipe[2] = {-1, -1};
typedef struct KpInFlight
{
	int64		id;				/* hash key */
	KpRowVersion outbox_row;
	int64		stored_bytes;	/* its key and value, for the backlog */
	char		status;			/* used by simplehash */
} KpInFlight;

/*
 * The in-flight set is looked up four times per message; simplehash's
 * open addressing costs a third of dynahash's there.  The id is its own
 * hash: messages are sent and reported in nearly ascending id, so
 * neighbouring ids share cache lines, while a mixing hash scattered a
 * set of a million over 48 MB and missed the cache on every lookup.
 * Ids in flight span far fewer than the table's buckets, so they rarely
 * collide.
 */
#define SH_PREFIX in_flight
#define SH_ELEMENT_TYPE KpInFlight
#define SH_KEY_TYPE int64
#define SH_KEY id
#define SH_HASH_KEY(tb, key) ((uint32) (key))
#define SH_EQUAL(tb, a, b) ((a) == (b))
#define SH_SCOPE static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

static in_flight_hash *in_flight = NULL;

/* topic handles of the producer; see kp_kafka_topic() */
static HTAB *known_topics = NULL;

/*
 * Errors that no retry can cure.  Everything else is treated as transient:
 * mistaking a transient error for a permanent one would fail a message
 * that could have been delivered, the reverse only costs attempts.
 */
static bool
is_permanent_error(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_INVALID_MSG:
		case RD_KAFKA_RESP_ERR_INVALID_RECORD:
		case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
		case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
		case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
		case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
		case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
		case RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS:
		case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
		case RD_KAFKA_RESP_ERR__INVALID_ARG:
			return true;
		default:
			return false;
	}
}

static KpOutcome
outcome_of(rd_kafka_resp_err_t err)
{
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return KP_DELIVERED;
	if (err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
		err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
		return KP_RETURNED;
	return is_permanent_error(err) ? KP_FAILED : KP_RETRIABLE;
}

void
kp_report_add(KpReportBuffer *buf, int64 id, KpOutcome outcome,
			  int32 partition, int64 offset, rd_kafka_resp_err_t err)
{
	KpReport   *report;

	if (buf->count == buf->capacity)
	{
		buf->capacity = Max(1024, buf->capacity * 2);
		if (buf->reports == NULL)
			buf->reports = MemoryContextAlloc(TopMemoryContext,
											  buf->capacity * sizeof(KpReport));
		else
			buf->reports = repalloc(buf->reports,
									buf->capacity * sizeof(KpReport));
	}
	report = &buf->reports[buf->count++];
	report->id = id;
	report->outcome = outcome;
	report->partition = partition;
	report->offset = offset;
	report->err = err;
	report->received_at = buf->now;
	if (outcome == KP_RETRIABLE || outcome == KP_RETURNED)
		buf->resends++;
	report->error_name = NULL;
	report->error_text = NULL;
	report->held = false;
	report->done_with_batch = false;
}

/* Adds a failure that is ours, not Kafka's: error_name says what. */
static void
report_refusal(KpReportBuffer *buf, int64 id, const char *error_name,
			   const char *error_text)
{
	KpReport   *report;

	if (buf->texts == NULL)
		buf->texts = AllocSetContextCreate(TopMemoryContext,
										   "kafka_producer report texts",
										   ALLOCSET_SMALL_SIZES);
	kp_report_add(buf, id, KP_FAILED, RD_KAFKA_PARTITION_UA, -1,
				  RD_KAFKA_RESP_ERR_UNKNOWN);
	report = &buf->reports[buf->count - 1];
	report->error_name = MemoryContextStrdup(buf->texts, error_name);
	report->error_text = MemoryContextStrdup(buf->texts, error_text);
}

void
kp_report_clear(KpReportBuffer *buf)
{
	buf->count = 0;
	buf->resends = 0;
	if (buf->texts != NULL)
		MemoryContextReset(buf->texts);
}

const char *
kp_report_error_name(KpReport *report)
{
	return report->error_name != NULL ? report->error_name :
		rd_kafka_err2name(report->err);
}

const char *
kp_report_error_text(KpReport *report)
{
	return report->error_text != NULL ? report->error_text :
		rd_kafka_err2str(report->err);
}

static void
create_wakeup_pipe(void)
{
	if (wakeup_pipe[0] >= 0)
		return;
	if (pipe(wakeup_pipe) != 0 ||
		fcntl(wakeup_pipe[0], F_SETFL, O_NONBLOCK) != 0 ||
		fcntl(wakeup_pipe[1], F_SETFL, O_NONBLOCK) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create pipe for Kafka events: %m")));
}

/*
 * Creates a librdkafka producer from the current settings, with linger.ms
 * overridden unless linger_ms is negative.  Its events (delivery reports,
 * errors, logs, and statistics if stats is set) go to its main queue,
 * returned in *queue, which writes to the worker's wakeup pipe.  A
 * configuration that librdkafka refuses is logged and NULL returned: the
 * worker then waits for a reload instead of failing in a loop.
 */
rd_kafka_t *
kp_kafka_new(int linger_ms, bool stats, rd_kafka_queue_t **queue)
{
	char		errstr[512];
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk = NULL;

	create_wakeup_pipe();
	conf = kp_producer_conf(errstr, sizeof(errstr));
	if (conf != NULL && linger_ms >= 0 &&
		rd_kafka_conf_set(conf, "linger.ms", psprintf("%d", linger_ms),
						  errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		rd_kafka_conf_destroy(conf);
		conf = NULL;
	}
	if (conf != NULL)
	{
		rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_DR |
								 RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_LOG |
								 (stats ? RD_KAFKA_EVENT_STATS : 0));
		rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
		if (rk == NULL)
			rd_kafka_conf_destroy(conf);
	}
	if (rk == NULL)
	{
		ereport(LOG,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not create Kafka producer: %s", errstr),
				 errhint("Correct the kafka.* settings and reload the configuration.")));
		return NULL;
	}
	rd_kafka_set_log_queue(rk, NULL);
	*queue = rd_kafka_queue_get_main(rk);
	rd_kafka_queue_io_event_enable(*queue, wakeup_pipe[1], "1", 1);
	ereport(LOG,
			(errmsg("Kafka producer %s started", rd_kafka_name(rk))));
	return rk;
}

static void
add_header(const char *name, int name_len, const char *value, int value_len,
		   void *arg)
{
	rd_kafka_header_add((rd_kafka_headers_t *) arg, name, name_len, value,
						value_len);
}

/* Kafka's headers from a JSON object that kp_message_check() accepted. */
rd_kafka_headers_t *
kp_headers_from_jsonb(Jsonb *jb)
{
	rd_kafka_headers_t *headers = rd_kafka_headers_new(JB_ROOT_COUNT(jb));

	kp_headers_each(jb, add_header, headers);
	return headers;
}

/*
 * Destroys a producer made by kp_kafka_new, and its topic handles.  What
 * it still held is purged: each purged message gets a delivery report,
 * which the caller must have collected from the queue before.
 */
void
kp_kafka_destroy(rd_kafka_t *rk, rd_kafka_queue_t *queue, HTAB **topics)
{
	kp_kafka_forget_topics(topics);
	rd_kafka_queue_io_event_enable(queue, -1, NULL, 0);
	rd_kafka_queue_destroy(queue);
	rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	rd_kafka_destroy(rk);
}

static uint64 producers_started = 0;

bool
kp_producer_start(void)
{
	Assert(producer == NULL);
	if (in_flight == NULL)
		in_flight = in_flight_create(TopMemoryContext, 65536, NULL);
	producer = kp_kafka_new(-1, true, &main_queue);
	producers_started++;
	return producer != NULL;
}

/*
 * How many producers were started, including the rebuilds after a fatal
 * error: before a new one sends, the worker looks in Kafka for what an
 * earlier one may have sent without the worker hearing of it.
 */
uint64
kp_producer_generation(void)
{
	return producers_started;
}

bool
kp_producer_running(void)
{
	return producer != NULL;
}

int
kp_producer_wakeup_fd(void)
{
	create_wakeup_pipe();
	return wakeup_pipe[0];
}

void
kp_producer_clear_wakeup(void)
{
	char		drain[64];

	while (read(wakeup_pipe[0], drain, sizeof(drain)) > 0)
		;
}

static void
log_librdkafka(rd_kafka_event_t *event)
{
	const char *facility;
	const char *message;
	int			level;

	rd_kafka_event_log(event, &facility, &message, &level);

	/*
	 * syslog levels: 0 emergency .. 3 error, 4 warning, 7 debug.  Errors
	 * also arrive as error events, logged by drain_events: keep one copy.
	 */
	ereport(level < 3 || level == 4 ? LOG : DEBUG1,
			(errmsg_internal("librdkafka %s: %s", facility, message)));
}

static void
report_error(rd_kafka_resp_err_t err, const char *text)
{
	char	   *error = psprintf("%s: %s", rd_kafka_err2name(err), text);

	ereport(LOG, (errmsg("Kafka producer error %s", error)));
	kp_shmem_set_last_error(error);
	pfree(error);
}

/*
 * Handles an event other than a delivery report.  Returns true when
 * librdkafka raised a fatal error: the producer must then be rebuilt.
 */
bool
kp_kafka_handle_event(rd_kafka_event_t *event)
{
	switch (rd_kafka_event_type(event))
	{
		case RD_KAFKA_EVENT_ERROR:
			report_error(rd_kafka_event_error(event),
						 rd_kafka_event_error_string(event));
			return rd_kafka_event_error_is_fatal(event);
		case RD_KAFKA_EVENT_LOG:
			log_librdkafka(event);
			break;
		case RD_KAFKA_EVENT_STATS:
			kp_stats_save(rd_kafka_event_stats(event));
			break;
		default:
			break;
	}
	return false;
}

/*
 * Takes every event waiting on queue, without blocking: each delivery
 * report's message goes to on_report, anything else to
 * kp_kafka_handle_event.  Returns true when librdkafka raised a fatal
 * error.  Both producers are driven this way, on the worker's loop.
 */
bool
kp_kafka_drain(rd_kafka_queue_t *queue, KpReportFunc on_report, void *arg)
{
	rd_kafka_event_t *event;
	bool		fatal = false;

	while ((event = rd_kafka_queue_poll(queue, 0)) != NULL)
	{
		const rd_kafka_message_t *msg;

		if (rd_kafka_event_type(event) == RD_KAFKA_EVENT_DR)
		{
			while ((msg = rd_kafka_event_message_next(event)) != NULL)
				on_report(msg, arg);
		}
		else
			fatal |= kp_kafka_handle_event(event);
		rd_kafka_event_destroy(event);
	}
	return fatal;
}

static void
add_report(const rd_kafka_message_t *msg, void *arg)
{
	kp_report_add((KpReportBuffer *) arg, (int64) (intptr_t) msg->_private,
				  outcome_of(msg->err), msg->partition, msg->offset, msg->err);
}

/* Hands every pending event's reports to buf; true on a fatal error. */
static bool
drain_events(KpReportBuffer *buf)
{
	/* one clock reading for all: they arrived within the last round */
	buf->now = GetCurrentTimestamp();
	return kp_kafka_drain(main_queue, add_report, buf);
}

void
kp_producer_poll(KpReportBuffer *buf)
{
	if (producer == NULL || !drain_events(buf))
		return;
	ereport(LOG,
			(errmsg("rebuilding the Kafka producer after a fatal error"),
			 errdetail("Messages in flight are sent again, except those found in Kafka.")));
	kp_producer_stop(buf);
	kp_producer_start();
}

/*
 * Destroys the producer.  What it still held comes back as KP_RETURNED
 * reports, after any delivery report already waiting has been collected.
 */
void
kp_producer_stop(KpReportBuffer *buf)
{
	in_flight_iterator scan;
	KpInFlight *entry;

	if (producer == NULL)
		return;
	drain_events(buf);
	kp_kafka_destroy(producer, main_queue, &known_topics);
	producer = NULL;
	main_queue = NULL;
	kp_stats_clear();

	/* ids already reported are returned twice: harmless, both just unmark */
	in_flight_start_iterate(in_flight, &scan);
	while ((entry = in_flight_iterate(in_flight, &scan)) != NULL)
		kp_report_add(buf, entry->id, KP_RETURNED, RD_KAFKA_PARTITION_UA, -1,
					  RD_KAFKA_RESP_ERR__PURGE_QUEUE);
}

/*
 * Asks librdkafka to give back every message it has not sent yet, so that
 * nothing overtakes a message that must be sent again.
 */
void
kp_producer_return_queued(void)
{
	if (producer != NULL)
		rd_kafka_purge(producer,
					   RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_NON_BLOCKING);
}

/*
 * A handle with the topic's own settings from kafka.topic_config, or with
 * the producer's if librdkafka refuses them now.
 */
static rd_kafka_topic_t *
new_topic_handle(rd_kafka_t *rk, const char *name)
{
	rd_kafka_topic_conf_t *conf = kp_topic_config_for(name);
	rd_kafka_topic_t *handle;

	if (conf == NULL)
		return rd_kafka_topic_new(rk, name, NULL);
	handle = rd_kafka_topic_new(rk, name, conf);
	if (handle != NULL)
		return handle;
	/* not destroyed: whether librdkafka freed it on failure is unspecified */
	ereport(LOG,
			(errmsg("ignoring the settings of Kafka topic \"%s\" in kafka.topic_config: %s",
					name, rd_kafka_err2str(rd_kafka_last_error())),
			 errhint("Change them with kafka_topic_config().")));
	return rd_kafka_topic_new(rk, name, NULL);
}

typedef struct KpTopicHandle
{
	char		name[KP_TOPIC_NAME_MAX + 1];	/* hash key */
	rd_kafka_topic_t *handle;
} KpTopicHandle;

/*
 * The producer's handle for a topic, made on the topic's first message and
 * kept in *topics until kp_kafka_forget_topics.  A new handle asks for
 * the topic's metadata at once: librdkafka would otherwise wait for its
 * next one-second topic scan, and every message to a new topic would sit
 * in its queue until then.  The request is not waited for: its answer
 * updates the producer's metadata cache.
 */
rd_kafka_topic_t *
kp_kafka_topic(rd_kafka_t *rk, HTAB **topics, const char *name)
{
	KpTopicHandle *entry;
	rd_kafka_topic_t *handle;
	const struct rd_kafka_metadata *metadata;

	if (*topics == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = KP_TOPIC_NAME_MAX + 1;
		ctl.entrysize = sizeof(KpTopicHandle);
		*topics = hash_create("kafka_producer topics", 64, &ctl,
							  HASH_ELEM | HASH_STRINGS);
	}
	entry = hash_search(*topics, name, HASH_FIND, NULL);
	if (entry != NULL)
		return entry->handle;
	handle = new_topic_handle(rk, name);
	if (handle == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_EXCEPTION),
				 errmsg("could not create Kafka topic handle for \"%s\": %s",
						name, rd_kafka_err2str(rd_kafka_last_error()))));
	entry = hash_search(*topics, name, HASH_ENTER, NULL);
	entry->handle = handle;
	if (rd_kafka_metadata(rk, 0, entry->handle, &metadata, 0) ==
		RD_KAFKA_RESP_ERR_NO_ERROR)
		rd_kafka_metadata_destroy(metadata);
	return entry->handle;
}

void
kp_kafka_forget_topics(HTAB **topics)
{
	HASH_SEQ_STATUS scan;
	KpTopicHandle *entry;

	if (*topics == NULL)
		return;
	hash_seq_init(&scan, *topics);
	while ((entry = hash_seq_search(&scan)) != NULL)
		rd_kafka_topic_destroy(entry->handle);
	hash_destroy(*topics);
	*topics = NULL;
}

/* this worker's database, named in kafka.database_header */
static char database_name[NAMEDATALEN];

void
kp_kafka_set_database(const char *name)
{
	strlcpy(database_name, name, NAMEDATALEN);
}

/* Whether name, of len bytes, is this worker's database. */
bool
kp_kafka_is_our_database(const char *name, size_t len)
{
	return len == strlen(database_name) && memcmp(name, database_name, len) == 0;
}

/*
 * Adds the headers that identify a message among those of every database
 * sending to its topic, the id (kafka.id_header) and the database
 * (kafka.database_header), to headers, made if NULL, and returns them;
 * with both settings empty, returns headers as given.  Added last, so
 * that of two headers of a name a consumer that reads the last gets ours.
 */
rd_kafka_headers_t *
kp_kafka_identity_headers(rd_kafka_headers_t *headers, int64 id)
{
	char		value[MAXINT8LEN + 1];
	int			len;
	bool		with_id = kp_id_header != NULL && kp_id_header[0] != '\0';
	bool		with_database = kp_database_header != NULL &&
		kp_database_header[0] != '\0';

	if (!with_id && !with_database)
		return headers;
	if (headers == NULL)
		headers = rd_kafka_headers_new(2);
	if (with_id)
	{
		len = pg_lltoa(id, value);
		rd_kafka_header_add(headers, kp_id_header, -1, value, len);
	}
	if (with_database)
		rd_kafka_header_add(headers, kp_database_header, -1, database_name, -1);
	return headers;
}

/* Notes that msg awaits a report, and where its outbox row is. */
static void
track_in_flight(KpMessage *msg)
{
	bool		found;
	KpInFlight *entry = in_flight_insert(in_flight, msg->id, &found);

	entry->outbox_row = msg->outbox_row;
	entry->stored_bytes = msg->stored_bytes;
	/* kafka_stats() shows it at once, also while no report comes */
	kp_shmem_set_gauge(KP_COUNT_IN_FLIGHT, in_flight->members);
}

/*
 * Takes msg as delivered at partition and offset without sending it:
 * Kafka holds it already (reconcile.c).  Its report is recorded like any.
 */
KpSendResult
kp_producer_found(KpMessage *msg, KpReportBuffer *buf, int32 partition,
				  int64 offset)
{
	track_in_flight(msg);
	buf->now = GetCurrentTimestamp();
	kp_report_add(buf, msg->id, KP_DELIVERED, partition, offset,
				  RD_KAFKA_RESP_ERR_NO_ERROR);
	kp_shmem_count(KP_COUNT_RECONCILED, 1);
	return KP_SEND_QUEUED;
}

KpSendResult
kp_producer_send(KpMessage *msg, KpReportBuffer *buf)
{
	rd_kafka_resp_err_t err;

	Assert(producer != NULL);
	msg->headers = kp_kafka_identity_headers(msg->headers, msg->id);
	err = rd_kafka_producev(producer,
							RD_KAFKA_V_RKT(kp_kafka_topic(producer, &known_topics,
														  msg->topic)),
							RD_KAFKA_V_PARTITION(msg->partition),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							RD_KAFKA_V_VALUE((void *) msg->value,
											 msg->value_len),
							RD_KAFKA_V_KEY(msg->key, msg->key_len),
							RD_KAFKA_V_HEADERS(msg->headers),
							RD_KAFKA_V_OPAQUE((void *) (intptr_t) msg->id),
							RD_KAFKA_V_END);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR && msg->headers != NULL)
		rd_kafka_headers_destroy(msg->headers);
	if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL || err == RD_KAFKA_RESP_ERR__FATAL)
		return KP_SEND_QUEUE_FULL;

	track_in_flight(msg);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		kp_shmem_count(KP_COUNT_SENT, 1);
		kp_shmem_count(KP_COUNT_SENT_BYTES, msg->key_len + msg->value_len);
		return KP_SEND_QUEUED;
	}
	kp_report_add(buf, msg->id, outcome_of(err), msg->partition, -1, err);
	return KP_SEND_REFUSED;
}

/*
 * Fails msg, whose headers are not made yet, without sending it: its
 * payload could not be made ready.  It counts as in flight until recorded,
 * like a message Kafka refused.
 */
KpSendResult
kp_producer_refuse(KpMessage *msg, KpReportBuffer *buf, const char *error_name,
				   const char *error_text)
{
	Assert(msg->headers == NULL);
	track_in_flight(msg);
	report_refusal(buf, msg->id, error_name, error_text);
	return KP_SEND_REFUSED;
}

bool
kp_producer_is_in_flight(int64 id)
{
	return in_flight_lookup(in_flight, id) != NULL;
}

/* The outbox row version in-flight message id was read from; false if unknown. */
bool
kp_producer_outbox_row(int64 id, KpRowVersion *row)
{
	KpInFlight *entry = in_flight_lookup(in_flight, id);

	if (entry == NULL)
		return false;
	*row = entry->outbox_row;
	return true;
}

/* In-flight message id's row is now row: its own, moved out of a batch. */
void
kp_producer_moved(int64 id, KpRowVersion *row)
{
	KpInFlight *entry = in_flight_lookup(in_flight, id);

	if (entry != NULL)
		entry->outbox_row = *row;
}

/* Forgets a message in flight; returns its stored bytes. */
int64
kp_producer_forget(int64 id)
{
	KpInFlight *entry = in_flight_lookup(in_flight, id);
	int64		stored_bytes = 0;

	if (entry != NULL)
	{
		stored_bytes = entry->stored_bytes;
		in_flight_delete_item(in_flight, entry);
	}
	kp_shmem_set_gauge(KP_COUNT_IN_FLIGHT, in_flight->members);
	return stored_bytes;
}

long
kp_producer_in_flight_count(void)
{
	return in_flight == NULL ? 0 : (long) in_flight->members;
}
