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

/* the namespace every derived schema's name starts with */
#define KP_AVRO_NAMESPACE "kafka_producer"

typedef struct KpAvroSchema KpAvroSchema;

extern KpAvroSchema *kp_avro_schema(Oid typid, bool is_key);
extern const char *kp_avro_schema_json(KpAvroSchema *schema);
extern uint64 kp_avro_schema_fingerprint(KpAvroSchema *schema);
extern bytea *kp_avro_encode(KpAvroSchema *schema, Datum value, int header_len);

#endif							/* KP_AVRO_SCHEMA_H */
