/*-------------------------------------------------------------------------
 *
 * change_json.h
 *	  PostgreSQL values as JSON for change events (change_json.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef KP_CHANGE_JSON_H
#define KP_CHANGE_JSON_H

#include "postgres.h"

#include "fmgr.h"
#include "access/tupdesc.h"
#include "lib/stringinfo.h"

/* how dates and times are written */
typedef enum KpTimeFormat
{
	KP_TIME_ISO,				/* ISO 8601 strings; timestamptz in UTC */
	KP_TIME_EPOCH				/* Debezium's: days, microseconds */
} KpTimeFormat;

typedef enum KpJsonKind
{
	KP_JSON_INTEGER,
	KP_JSON_FLOAT,
	KP_JSON_BOOL,
	KP_JSON_TEXT,				/* a JSON string of the text output */
	KP_JSON_STRING,				/* text and varchar: their bytes, escaped */
	KP_JSON_NUMERIC,			/* its text output, which needs no escaping */
	KP_JSON_BYTEA,
	KP_JSON_JSON,
	KP_JSON_JSONB,
	KP_JSON_DATE,
	KP_JSON_TIME,
	KP_JSON_TIMESTAMP,
	KP_JSON_TIMESTAMPTZ,
	KP_JSON_ARRAY
} KpJsonKind;

typedef struct KpJsonColumn
{
	KpJsonKind	kind;
	Oid			typid;			/* the base type */
	FmgrInfo	output;
	struct KpJsonColumn *element;	/* KP_JSON_ARRAY */
	Oid			element_type;
	int16		elmlen;
	bool		elmbyval;
	char		elmalign;
} KpJsonColumn;

extern void kp_json_column_init(KpJsonColumn *column, Oid typid,
								MemoryContext mcxt);
extern void kp_json_append_value(StringInfo out, KpJsonColumn *column,
								 Datum value, bool isnull, KpTimeFormat format);

/* connect_schema.c: Kafka Connect schemas of change events */
extern char *kp_connect_key_schema(TupleDesc desc, const bool *is_key,
								   const char *prefix, KpTimeFormat format);
extern char *kp_connect_value_schema(TupleDesc desc, const bool *published,
									 const char *prefix, KpTimeFormat format,
									 bool flat);

#endif							/* KP_CHANGE_JSON_H */
