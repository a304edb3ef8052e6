/*-------------------------------------------------------------------------
 *
 * kafka_producer.h
 *	  Declarations shared between the modules of the kafka_producer
 *	  extension: settings, shared state, tables, messages.  What names
 *	  the Kafka client's types is in delivery.h, for the delivery layer.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAFKA_PRODUCER_H
#define KAFKA_PRODUCER_H

#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "port/atomics.h"
#include "datatype/timestamp.h"
#include "storage/condition_variable.h"
#include "storage/itemptr.h"
#include "storage/lockdefs.h"
#include "storage/spin.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"

#define KP_EXTENSION_NAME "kafka_producer"
/* the version of the SQL objects this library works with */
#define KP_EXTENSION_VERSION "0.2.0"
#define KP_SCHEMA_NAME "kafka"

/* Kafka's limit on the length of a topic name */
#define KP_TOPIC_NAME_MAX 249

/* no partition named: the producer's partitioner chooses */
#define KP_PARTITION_ANY (-1)

/* settings.c: the extension's own kafka.* settings */
extern int	kp_max_databases;
extern char *kp_database_header;
extern char *kp_hash_salt;
extern uint32 kp_databases_generation;
extern int	kp_max_attempts;
extern int	kp_status_retention;
extern int	kp_message_max_bytes;
extern char *kp_id_header;
extern int	kp_shutdown_timeout_ms;
extern void kp_settings_init(void);
extern const char *kp_databases_setting(const char **name);
extern struct List *kp_databases_listed(void);
extern bool kp_database_served(const char *name, bool is_template);

/* producer_settings.c: the producer's kafka.* settings */
extern void kp_producer_settings_init(void);
extern int	kp_producer_linger_ms(void);
extern int	kp_producer_message_timeout_ms(void);
extern bool kp_producer_idempotence(void);
extern char *kp_producer_settings_fingerprint(void);

/*
 * shmem.c: state shared between backends and the worker, a slot per
 * database served.
 *
 * Locking: worker_procno and worker_pid are protected by mutex.
 * rescan_from is an atomic that kp_shmem_request_rescan lowers (never
 * raises), at commit or for a row that changed in flight, and that the
 * worker swaps back to PG_UINT64_MAX before each scan of the outbox.
 * round_scheduled is set by the worker while it sleeps until a round of
 * sending that is due by time: the scan of that round begins after the
 * worker clears it, so a commit that finds it set need not wake the worker
 * (kp_shmem_request_rescan).
 * outcome_generation only grows: the worker adds one after each commit of
 * recorded outcomes, then broadcasts outcomes_recorded.  counters are
 * atomics written by the worker only; last_error and last_error_at are
 * protected by mutex.
 */
/* the worker's counters, shown by kafka_stats() */
typedef enum KpCounter
{
	KP_COUNT_SENT,				/* messages handed to the producer */
	KP_COUNT_SENT_BYTES,		/* their keys and values */
	KP_COUNT_DELIVERED,
	KP_COUNT_FAILED,			/* refused for good */
	KP_COUNT_TRANSIENT_ERRORS,	/* attempts that failed transiently */
	KP_COUNT_RETURNED,			/* taken back unsent, to keep order */
	KP_COUNT_IN_FLIGHT,			/* a gauge: handed over, not yet recorded */
	KP_COUNT_RECONCILED,		/* found in Kafka at start, not sent again */
	KP_NUM_COUNTERS
} KpCounter;

#define KP_LAST_ERROR_LEN 256

/* counters that grow at each commit of a change the worker must act on */
typedef enum KpGeneration
{
	KP_GENERATION_TOPIC_CONFIG, /* kafka.topic_config changed */
	KP_GENERATION_SNAPSHOT,		/* a snapshot was started */
	KP_NUM_GENERATIONS
} KpGeneration;

typedef struct KpSharedState
{
	slock_t		mutex;
	int			worker_procno;	/* -1 while no worker runs */
	pid_t		worker_pid;
	pg_atomic_uint64 rescan_from;	/* lowest id committed behind the worker's
									 * scan position */
	pg_atomic_uint32 round_scheduled;	/* the worker sleeps until a round
										 * due by time */
	pg_atomic_uint64 outcome_generation;
	ConditionVariable outcomes_recorded;
	pg_atomic_uint32 outcome_waiters;	/* sessions in kafka_wait(),
										 * kafka_flush() */
	pg_atomic_uint64 generations[KP_NUM_GENERATIONS];
	pg_atomic_uint64 counters[KP_NUM_COUNTERS];
	char		last_error[KP_LAST_ERROR_LEN];	/* protected by mutex */
	TimestampTz last_error_at;	/* protected by mutex */
} KpSharedState;

/* what the launcher reads of a database's slot */
typedef struct KpSlotInfo
{
	Oid			database;		/* InvalidOid: the slot is free */
	pid_t		worker_pid;		/* 0: no worker runs */
	bool		no_extension;	/* its worker found no extension */
	bool		requested;		/* a session asked for a worker since the
								 * last one started */
	bool		dropping;		/* DROP DATABASE asked its worker to leave */
} KpSlotInfo;

extern void kp_shmem_init(void);
extern void kp_shmem_add(const char *name, Size (*size) (void),
						 void (*attach) (void *memory, bool found));
extern int	kp_shmem_add_database_part(Size size, void (*reset) (void *memory));
extern void *kp_shmem_database_part(int part, bool missing_ok);
extern void kp_shmem_check_preloaded(void);
extern int	kp_shmem_claim_slot(Oid database);
extern void kp_shmem_free_slot(int index);
extern void kp_shmem_slot_info(int index, KpSlotInfo *info);
extern void kp_shmem_clear_dropping(int index);
extern void kp_shmem_launcher_attach(void);
extern void kp_shmem_attach_database(void);
extern void kp_shmem_request_worker(void);
extern void kp_shmem_database_dropping(Oid database);
extern bool kp_shmem_database_held_by_drop(Oid database);
extern void kp_shmem_request_rescan(int64 first_id);
extern struct LWLock *kp_shmem_id_block_lock(void);
extern void kp_shmem_wake_worker(void);
extern pid_t kp_shmem_worker_pid(void);
extern void kp_shmem_generation_advance(KpGeneration generation);
extern void kp_shmem_generation_advance_at_commit(KpGeneration generation);
extern uint64 kp_shmem_generation(KpGeneration generation);
extern void kp_shmem_worker_attach(int index);
extern void kp_shmem_worker_found_no_extension(void);
extern int64 kp_shmem_take_rescan_from(void);
extern void kp_shmem_round_scheduled(bool scheduled);
extern void kp_shmem_announce_outcomes(void);
extern void kp_shmem_count(KpCounter counter, uint64 n);
extern void kp_shmem_set_gauge(KpCounter counter, uint64 value);
extern void kp_shmem_set_last_error(const char *error);
extern void kp_shmem_counters_json(StringInfo json);
extern uint64 kp_shmem_outcome_generation(void);
extern bool kp_shmem_wait_for_outcomes(uint64 generation, TimestampTz deadline);
extern bool kp_shmem_outcomes_awaited(void);

/* backlog.c: what waits for Kafka, and its limit */
extern void kp_backlog_init(void);
extern void kp_backlog_read(int64 *messages, int64 *bytes);
extern void kp_backlog_add(int64 messages, int64 bytes);
extern void kp_backlog_remove(int64 messages, int64 bytes);
extern void kp_backlog_delivered_now(void);
extern void kp_backlog_set(int64 messages, int64 bytes);
extern uint64 kp_backlog_mark(void);
extern void kp_backlog_empty(uint64 mark);
extern void kp_backlog_check(int64 total_messages, int64 total_bytes,
							 int64 added_messages, int64 added_bytes);

/* committing.c: transactions a scan must take whole */
extern void kp_committing_init(void);
extern void kp_committing_register(TransactionId xid, int64 first_id);
extern int64 kp_committing_scan_floor(Snapshot snapshot);
extern bool kp_committing_any(void);

/* recorded_offsets.c: kafka.recorded_offsets */
extern bool kp_recorded_offsets_present(void);
extern void kp_recorded_offsets_note(Datum topic, int32 partition,
									 int64 offset);
extern void kp_recorded_offsets_hold(Datum topic, int32 partition,
									 int64 offset);
extern void kp_recorded_offsets_begin_step(void);
extern void kp_recorded_offsets_step_committed(void);
extern void kp_recorded_offsets_save(void);

/* drop_guard.c: DROP EXTENSION keeps undelivered messages */
extern void kp_drop_guard_init(void);

/* commit_wait.c: kafka.wait_on_commit */
extern bool kp_wait_on_commit;
extern void kp_commit_wait_init(void);
extern void kp_commit_wait(int64 first_id, int64 last_id);
extern bool kp_commit_wait_pending(void);
extern void kp_commit_wait_answer(void);

/* sync_send.c: kafka_send_sync() */
extern void kp_sync_init(void);

/* schema_registry.c: Avro messages in Confluent's wire format */
typedef enum KpRegistryResult
{
	KP_REGISTRY_AS_IS,			/* not Avro with a stored schema: send as is */
	KP_REGISTRY_FRAMED,			/* now in Confluent's wire format */
	KP_REGISTRY_UNAVAILABLE,	/* registry out of reach: hold it back */
	KP_REGISTRY_REFUSED			/* the registry refused its schema */
} KpRegistryResult;

extern char *kp_schema_registry_url;
extern char *kp_schema_registry_user_info;
extern void kp_schema_registry_init(void);
extern bool kp_registry_enabled(void);
extern bool kp_registry_in_flight(void);
extern bool kp_registry_poll(void);
extern bool kp_registry_compatible(const char *subject, const char *schema,
								   char **why);
extern KpRegistryResult kp_registry_frame(const char *topic, bool is_key,
										  const char **data, size_t *len,
										  const char **refusal);

/* topic_config.c: kafka.topic_config */
extern void kp_topic_config_load(void);
extern bool kp_topic_config_changed(void);
extern const char *kp_topic_config_fingerprint(void);

/* stats.c: the producer's statistics for SQL */
extern void kp_stats_save(const char *json);
extern void kp_stats_clear(void);

/* notify.c: NOTIFY kafka_delivery */
extern void kp_notify_ids(const char *status, int64 *ids, int count);

/* enqueue.c: the transaction side of kafka_send() */
typedef struct KpIdRange
{
	int64		first;
	int64		last;
} KpIdRange;

/* a message for kafka.outbox or kafka_send_sync(), before it has an id */
typedef struct KpNewMessage
{
	text	   *topic;
	bytea	   *key;			/* NULL: no key */
	bytea	   *value;			/* NULL: a tombstone */
	int32		partition;		/* KP_PARTITION_ANY: the partitioner's */
	Jsonb	   *headers;		/* NULL: no headers */
} KpNewMessage;

typedef void (*KpHeaderFunc) (const char *name, int name_len,
							 const char *value, int value_len, void *arg);
extern void kp_headers_each(Jsonb *headers, KpHeaderFunc each, void *arg);
extern void kp_message_options_from_args(FunctionCallInfo fcinfo,
										 KpNewMessage *msg);
extern void kp_message_from_args(FunctionCallInfo fcinfo, KpNewMessage *msg);
extern Size kp_message_check(KpNewMessage *msg);
extern int64 kp_next_message_id(void);
extern void kp_enqueue_init(void);
extern int64 kp_enqueue(KpNewMessage *msg);
extern void kp_enqueue_buffered(KpNewMessage *msg);
extern void kp_enqueue_flush(void);
extern void kp_enqueue_wake_at_commit(int64 id);
extern void kp_check_topic(text *topic);
extern int	kp_enqueue_committed_ranges(KpIdRange **ranges);
extern void kp_enqueue_forget_committed(void);
extern void kp_check_serving_database(void);

/* launcher.c: a worker for each database served */
extern void kp_launcher_init(void);

/* kafka.outbox's columns, in table order */
typedef enum KpOutboxColumn
{
	OUTBOX_ID,
	OUTBOX_TOPIC,
	OUTBOX_KEY,
	OUTBOX_VALUE,
	OUTBOX_HEADERS,
	OUTBOX_PARTITION,
	OUTBOX_ATTEMPTS,
	OUTBOX_LAST_ERROR,
	OUTBOX_ENQUEUED_AT,
	OUTBOX_ENQUEUED_BY,
	OUTBOX_NATTS
} KpOutboxColumn;

/* kafka.outbox_batch's columns, in table order */
typedef enum KpBatchColumn
{
	BATCH_FIRST_ID,
	BATCH_TOPIC,
	BATCH_KEYS,
	BATCH_VALUES,
	BATCH_ENQUEUED_AT,
	BATCH_ENQUEUED_BY,
	BATCH_NATTS
} KpBatchColumn;

/*
 * A kafka.outbox_batch row holds at most this many messages, and this
 * many bytes of keys and values, with their array overhead: the rest of
 * the row fits in what is left of MaxHeapTupleSize.
 */
#define KP_BATCH_ROW_MESSAGES 256
#define KP_BATCH_ROW_BYTES 7600
/*
 * What a row's keys and values may take before compression: lz4 stores
 * events, with their repeated member names, in a fifth to a seventh.
 */
#define KP_BATCH_ROW_RAW_BYTES 30000

/* rows are written a chunk at a time with table_multi_insert */
#define KP_WRITE_CHUNK 1000

/* tables.c: the kafka.* tables */
extern Oid	kp_relation_oid(const char *name);
extern Relation kp_table_open(const char *name, const char *const *columns,
							  int count, LOCKMODE lockmode);
extern Relation kp_outbox_open(LOCKMODE lockmode);
extern Relation kp_outbox_batch_open(LOCKMODE lockmode);

typedef struct KpSavedUser
{
	Oid			userid;
	int			sec_context;
	int			guc_nest_level;
} KpSavedUser;

extern void kp_begin_as_owner(KpSavedUser *saved);
extern void kp_end_as_owner(KpSavedUser *saved);

/* the indexes of a table written with heap functions, not the executor */
struct TupleTableSlot;

typedef struct KpIndexes
{
	int			count;
	Relation   *indexes;
	struct IndexInfo **infos;
	bool	   *page_extremes;	/* see kp_indexes_insert_chunk() */
} KpIndexes;

extern void kp_indexes_open(Relation rel, KpIndexes *indexes);
extern void kp_indexes_insert(KpIndexes *indexes, Relation rel,
							  ItemPointer tid, Datum *values, bool *nulls);
extern void kp_indexes_insert_chunk(KpIndexes *indexes, Relation rel,
									struct TupleTableSlot **slots, int count);
extern void kp_indexes_close(KpIndexes *indexes);
extern void kp_insert_row(Relation rel, KpIndexes *indexes, Datum *values,
						  bool *nulls, ItemPointer tid);
extern Datum kp_datum_array(Datum *elements, int count, Oid element_type);
extern char *kp_extension_version(void);
extern bool kp_extension_ready(void);
extern bool kp_extension_is_current(const char *version);
extern void kp_extension_check_current(void);

/* publish.c: change events */
extern bool kp_publish_snapshot_row(Relation rel, struct HeapTupleData *row);

/* snapshot.c: snapshots read in the background, a chunk at a time */
extern bool kp_snapshot_run_chunk(void);
extern void kp_snapshot_fail_running(const char *error);

/* delivery_hold.c */
extern bool kp_delivery_held(void);
#endif							/* KAFKA_PRODUCER_H */
