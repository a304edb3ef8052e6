/*-------------------------------------------------------------------------
 *
 * avro_schema.h
 *	  Avro schemas derived from PostgreSQL types, and the encoding of
 *	  values with them (avro.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef KP_AVRO_SCHEMA_H
#define KP_AVRO_SCHEMA_H

#include "postgres.h"

#include "access/htup.h"
#include "utils/relcache.h"

#include "kafka_producer.h"

/* the namespace every derived schema's name starts with */
#define KP_AVRO_NAMESPACE "kafka_producer"

typedef struct KpAvroSchema KpAvroSchema;

/* the members of a change event's "source" that vary */
typedef struct KpAvroSource
{
	const char *version;
	const char *name;
	const char *db;
	const char *schema;
	const char *table;
	const char *partition;		/* the partition changed; NULL: none */
	int64		ts_ms;
	int64		txid;
	int64		lsn;
	int64		event_ts_ms;
} KpAvroSource;

/* single-object encoding: 0xC3 0x01 and the 8-byte fingerprint */
#define KP_SINGLE_OBJECT_HEADER 10

/* a topic's subject, <topic>-key or <topic>-value, and its largest size */
#define KP_SUBJECT_MAX (KP_TOPIC_NAME_MAX + sizeof("-value"))
extern void kp_avro_subject(char *subject, const char *topic, bool is_key);

extern void kp_avro_fingerprint_put(uint64 fingerprint, char *out);
extern uint64 kp_avro_fingerprint_get(const char *in);
extern bytea *kp_avro_fingerprint_bytea(uint64 fingerprint);

extern KpAvroSchema *kp_avro_schema(Oid typid, bool is_key);
extern KpAvroSchema *kp_avro_row_schema(Relation rel, TupleDesc desc,
										const bool *include, const char *suffix);
extern KpAvroSchema *kp_avro_flat_schema(Relation rel, KpAvroSchema *row);
extern KpAvroSchema *kp_avro_envelope_schema(Relation rel, KpAvroSchema *row);
extern bytea *kp_avro_encode_row(KpAvroSchema *schema, TupleDesc desc,
								 HeapTuple tuple, int header_len);
extern bytea *kp_avro_encode_event(KpAvroSchema *envelope, TupleDesc desc,
								   HeapTuple before, HeapTuple after,
								   const KpAvroSource *source, char op,
								   int header_len);
extern bytea *kp_avro_encode_flat(KpAvroSchema *flat, TupleDesc desc,
								  HeapTuple tuple, const KpAvroSource *source,
								  char op, int header_len);
extern bytea *kp_avro_single_object(KpAvroSchema *schema, bytea *encoded,
									text *topic, bool is_key);
extern const char *kp_avro_schema_json(KpAvroSchema *schema);
extern uint64 kp_avro_schema_fingerprint(KpAvroSchema *schema);
extern bytea *kp_avro_encode(KpAvroSchema *schema, Datum value, int header_len);

#endif							/* KP_AVRO_SCHEMA_H */
