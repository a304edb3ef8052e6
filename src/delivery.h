/*-------------------------------------------------------------------------
 *
 * delivery.h
 *	  The delivery layer: the worker's librdkafka producers, what they
 *	  have in flight, and the outbox reads and writes that feed them.
 *	  Only the files of this layer include librdkafka.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KP_DELIVERY_H
#define KP_DELIVERY_H

#include <librdkafka/rdkafka.h>

#include "kafka_producer.h"

StaticAssertDecl(KP_PARTITION_ANY == RD_KAFKA_PARTITION_UA,
				 "KP_PARTITION_ANY is librdkafka's unassigned partition");

/* producer_settings.c: the producer's configuration from the kafka.* settings */
extern rd_kafka_conf_t *kp_producer_conf(char *errstr, size_t errstr_size);

/* topic_config.c: a topic's own producer settings */
extern rd_kafka_topic_conf_t *kp_topic_config_for(const char *topic);

/* producer.c: the worker's librdkafka producer and what it has in flight */
typedef enum KpOutcome
{
	KP_DELIVERED,				/* acknowledged by the broker */
	KP_FAILED,					/* refused for good: record as failed */
	KP_RETRIABLE,				/* transient failure: send again later */
	KP_RETURNED					/* never sent (purged): send again, no attempt */
} KpOutcome;

typedef struct KpReport
{
	int64		id;
	KpOutcome	outcome;
	int32		partition;
	int64		offset;			/* -1 when the broker gave none (acks=0) */
	rd_kafka_resp_err_t err;
	TimestampTz received_at;	/* when the worker took it from librdkafka,
								 * or found it in Kafka */
	/* for a failure of our own, not Kafka's: what err would say */
	const char *error_name;
	const char *error_text;
	/* delivered, its kafka.outbox_batch row waits for the others' reports */
	bool		held;
	/* recorded, or let go, with the rest of its kafka.outbox_batch row */
	bool		done_with_batch;
} KpReport;

typedef struct KpReportBuffer
{
	KpReport   *reports;
	int			count;
	int			capacity;
	MemoryContext texts;		/* the reports' error_name and error_text */
	TimestampTz now;			/* received_at of the reports added next */
	int			resends;		/* reports of messages to be sent again */
} KpReportBuffer;

/* which version of a kafka.outbox row was read, and where */
typedef struct KpRowVersion
{
	ItemPointerData tid;
	TransactionId xmin;			/* raw: kept by VACUUM FULL, new after UPDATE */
	int64		batch_first_id; /* its kafka.outbox_batch row; 0: kafka.outbox */
} KpRowVersion;

typedef struct KpMessage
{
	int64		id;
	KpRowVersion outbox_row;
	const char *topic;
	const char *key;
	size_t		key_len;
	const char *value;			/* NULL for a tombstone */
	size_t		value_len;
	rd_kafka_headers_t *headers;	/* ownership passes to the producer */
	int32		partition;		/* RD_KAFKA_PARTITION_UA to let Kafka choose */
	TimestampTz enqueued_at;
	int64		stored_bytes;	/* key and value as the queue holds them */
} KpMessage;

typedef enum KpSendResult
{
	KP_SEND_QUEUED,				/* in flight; a report will follow */
	KP_SEND_QUEUE_FULL,			/* try again after reports drained */
	KP_SEND_REFUSED,			/* a KP_FAILED report was added */
	KP_SEND_HELD_BACK			/* not sent, nor those after it, for now */
} KpSendResult;

extern rd_kafka_t *kp_kafka_new(int linger_ms, bool stats,
								rd_kafka_queue_t **queue);
extern void kp_kafka_destroy(rd_kafka_t *rk, rd_kafka_queue_t *queue,
							 HTAB **topics);
extern bool kp_kafka_handle_event(rd_kafka_event_t *event);
typedef void (*KpReportFunc) (const rd_kafka_message_t *msg, void *arg);
extern bool kp_kafka_drain(rd_kafka_queue_t *queue, KpReportFunc on_report,
						   void *arg);
extern rd_kafka_topic_t *kp_kafka_topic(rd_kafka_t *rk, HTAB **topics,
										const char *name);
extern void kp_kafka_forget_topics(HTAB **topics);
extern rd_kafka_headers_t *kp_headers_from_jsonb(Jsonb *jb);
extern void kp_kafka_set_database(const char *name);
extern bool kp_kafka_is_our_database(const char *name, size_t len);
extern rd_kafka_headers_t *kp_kafka_identity_headers(rd_kafka_headers_t *headers,
													 int64 id);
extern bool kp_producer_start(void);
extern uint64 kp_producer_generation(void);
extern void kp_producer_stop(KpReportBuffer *buf);
extern bool kp_producer_running(void);
extern int	kp_producer_wakeup_fd(void);
extern void kp_producer_clear_wakeup(void);
extern KpSendResult kp_producer_send(KpMessage *msg, KpReportBuffer *buf);
extern void kp_producer_poll(KpReportBuffer *buf);
extern void kp_producer_return_queued(void);
extern bool kp_producer_is_in_flight(int64 id);
extern bool kp_producer_outbox_row(int64 id, KpRowVersion *row);
extern void kp_producer_moved(int64 id, KpRowVersion *row);
extern int64 kp_producer_forget(int64 id);
extern long kp_producer_in_flight_count(void);
extern KpSendResult kp_producer_found(KpMessage *msg, KpReportBuffer *buf,
									  int32 partition, int64 offset);
extern KpSendResult kp_producer_refuse(KpMessage *msg, KpReportBuffer *buf,
									   const char *error_name,
									   const char *error_text);
extern void kp_report_add(KpReportBuffer *buf, int64 id, KpOutcome outcome,
						  int32 partition, int64 offset,
						  rd_kafka_resp_err_t err);
extern void kp_report_clear(KpReportBuffer *buf);
extern const char *kp_report_error_name(KpReport *report);
extern const char *kp_report_error_text(KpReport *report);

/* sync_send.c: kafka_send_sync() */
extern bool kp_sync_requested(void);
extern void kp_sync_send_requested(void);
extern void kp_sync_poll(void);
extern long kp_sync_in_flight(void);
extern void kp_sync_stop(void);
extern bool kp_sync_record_due(bool all);
extern long kp_sync_ms_until_record(void);
extern int	kp_sync_record(void);
extern void kp_sync_forget_recorded(void);

/* reconcile.c: what Kafka holds of the pending messages */
extern bool kp_reconcile(void);
extern bool kp_reconcile_found(KpMessage *msg, int32 *partition, int64 *offset);
extern void kp_reconcile_done(void);

/* outbox.c: the worker's reads and writes of the queue tables */
extern void kp_outbox_apply_moves(void);
extern int64 kp_outbox_send_round(int64 after_id, int max_messages,
								  KpReportBuffer *buf, bool *queue_full,
								  bool *held_back, bool *exhausted);
extern void kp_outbox_record(KpReportBuffer *buf);
extern void kp_outbox_prune(void);
extern bool kp_outbox_vacuum_due(int64 backlog, bool idle);
extern void kp_outbox_vacuum(bool truncate);

#endif							/* KP_DELIVERY_H */
