/*-------------------------------------------------------------------------
 *
 * connect_schema.c
 *	  Kafka Connect schemas of change events, for format 'json_schema':
 *	  each key and value is written as Kafka Connect's JsonConverter does
 *	  with schemas.enable=true, {"schema": ..., "payload": ...}, so that
 *	  sinks that need a schema (the JDBC sink, for one) read the events as
 *	  they read Debezium's.  Types and names are those of Debezium's
 *	  PostgreSQL connector: time_format 'epoch' is its default
 *	  time.precision.mode (io.debezium.time.Date, MicroTime, MicroTimestamp),
 *	  numeric its decimal.handling.mode=string, bytea its bytes, timestamptz
 *	  an io.debezium.time.ZonedTimestamp string, json and jsonb
 *	  io.debezium.data.Json strings, uuid io.debezium.data.Uuid strings.
 *	  With time_format 'iso', dates, times and timestamps are plain strings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/json.h"
#include "utils/lsyscache.h"

#include "change_json.h"

/* a Connect type, and the Debezium semantic type's name, if any */
typedef struct KpConnectType
{
	const char *type;
	const char *name;
} KpConnectType;

static KpConnectType
connect_type(Oid typid, KpTimeFormat format)
{
	bool		epoch = format == KP_TIME_EPOCH;

	switch (getBaseType(typid))
	{
		case BOOLOID:
			return (KpConnectType) {"boolean", NULL};
		case INT2OID:
			return (KpConnectType) {"int16", NULL};
		case INT4OID:
			return (KpConnectType) {"int32", NULL};
		case INT8OID:
		case OIDOID:
			return (KpConnectType) {"int64", NULL};
		case FLOAT4OID:
			return (KpConnectType) {"float", NULL};
		case FLOAT8OID:
			return (KpConnectType) {"double", NULL};
		case BYTEAOID:
			return (KpConnectType) {"bytes", NULL};
		case JSONOID:
		case JSONBOID:
			return (KpConnectType) {"string", "io.debezium.data.Json"};
		case UUIDOID:
			return (KpConnectType) {"string", "io.debezium.data.Uuid"};
		case DATEOID:
			return epoch ? (KpConnectType) {"int32", "io.debezium.time.Date"} :
				(KpConnectType) {"string", NULL};
		case TIMEOID:
			return epoch ? (KpConnectType) {"int64", "io.debezium.time.MicroTime"} :
				(KpConnectType) {"string", NULL};
		case TIMESTAMPOID:
			return epoch ? (KpConnectType) {"int64", "io.debezium.time.MicroTimestamp"} :
				(KpConnectType) {"string", NULL};
		case TIMESTAMPTZOID:
			return (KpConnectType) {"string", "io.debezium.time.ZonedTimestamp"};
		default:
			return (KpConnectType) {"string", NULL};
	}
}

/* The members of the schema of a value of typid, arrays included. */
static void
append_type(StringInfo out, Oid typid, KpTimeFormat format)
{
	Oid			element = get_element_type(getBaseType(typid));
	KpConnectType type;

	if (OidIsValid(element))
	{
		appendStringInfoString(out, "\"type\":\"array\",\"items\":{");
		append_type(out, element, format);
		appendStringInfoString(out, ",\"optional\":true}");
		return;
	}
	type = connect_type(typid, format);
	appendStringInfo(out, "\"type\":\"%s\"", type.type);
	if (type.name != NULL)
		appendStringInfo(out, ",\"name\":\"%s\",\"version\":1", type.name);
}

/* A field: its type, whether it may be null, its name. */
static void
append_field(StringInfo out, const char *name, Oid typid, bool optional,
			 KpTimeFormat format)
{
	if (out->data[out->len - 1] != '[')
		appendStringInfoChar(out, ',');
	appendStringInfoChar(out, '{');
	append_type(out, typid, format);
	appendStringInfo(out, ",\"optional\":%s,\"field\":", optional ? "true" : "false");
	escape_json(out, name);
	appendStringInfoChar(out, '}');
}

/* The fields of the columns of desc marked in include. */
static void
append_columns(StringInfo out, TupleDesc desc, const bool *include,
			   KpTimeFormat format)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);

		if (!attr->attisdropped && include[i])
			append_field(out, NameStr(attr->attname), attr->atttypid,
						 !attr->attnotnull, format);
	}
}

/* Closes a struct's fields, names it, and names it as field (or not). */
static void
end_struct(StringInfo out, const char *name, const char *field, bool optional)
{
	appendStringInfo(out, "],\"optional\":%s,\"name\":", optional ? "true" : "false");
	escape_json(out, name);
	if (field != NULL)
	{
		appendStringInfoString(out, ",\"field\":");
		escape_json(out, field);
	}
	appendStringInfoChar(out, '}');
}

/*
 * A struct of the columns of desc marked in include, named name, as the
 * field field (NULL: the top level) of an enclosing struct.
 */
static void
append_row(StringInfo out, TupleDesc desc, const bool *include,
		   const char *name, const char *field, bool optional,
		   KpTimeFormat format)
{
	appendStringInfoString(out, "{\"type\":\"struct\",\"fields\":[");
	append_columns(out, desc, include, format);
	end_struct(out, name, field, optional);
}

/* The schema of the key columns, named <prefix>.Key. */
char *
kp_connect_key_schema(TupleDesc desc, const bool *is_key, const char *prefix,
					  KpTimeFormat format)
{
	StringInfoData out;

	initStringInfo(&out);
	append_row(&out, desc, is_key, psprintf("%s.Key", prefix), NULL, false, format);
	return out.data;
}

/*
 * The schema of the value: Debezium's envelope around the published
 * columns, or with flat the columns and what ExtractNewRecordState adds.
 */
char *
kp_connect_value_schema(TupleDesc desc, const bool *published,
						const char *prefix, KpTimeFormat format, bool flat)
{
	StringInfoData out;
	char	   *row_name = psprintf("%s.Value", prefix);

	initStringInfo(&out);
	if (flat)
	{
		appendStringInfoString(&out, "{\"type\":\"struct\",\"fields\":[");
		append_columns(&out, desc, published, format);
		append_field(&out, "__op", TEXTOID, true, format);
		append_field(&out, "__table", TEXTOID, true, format);
		append_field(&out, "__source_ts_ms", INT8OID, true, format);
		append_field(&out, "__deleted", TEXTOID, true, format);
		end_struct(&out, row_name, NULL, false);
		return out.data;
	}
	appendStringInfoString(&out, "{\"type\":\"struct\",\"fields\":[");
	append_row(&out, desc, published, row_name, "before", true, format);
	appendStringInfoChar(&out, ',');
	append_row(&out, desc, published, row_name, "after", true, format);
	appendStringInfoString(&out, ",{\"type\":\"struct\",\"fields\":[");
	append_field(&out, "version", TEXTOID, false, format);
	append_field(&out, "connector", TEXTOID, false, format);
	append_field(&out, "name", TEXTOID, false, format);
	append_field(&out, "db", TEXTOID, false, format);
	append_field(&out, "schema", TEXTOID, false, format);
	append_field(&out, "table", TEXTOID, false, format);
	append_field(&out, "partition", TEXTOID, true, format);
	append_field(&out, "ts_ms", INT8OID, false, format);
	append_field(&out, "snapshot", TEXTOID, true, format);
	append_field(&out, "txId", INT8OID, true, format);
	append_field(&out, "lsn", INT8OID, true, format);
	append_field(&out, "xmin", INT8OID, true, format);
	end_struct(&out, "io.debezium.connector.postgresql.Source", "source", false);
	append_field(&out, "op", TEXTOID, false, format);
	append_field(&out, "ts_ms", INT8OID, true, format);
	appendStringInfoString(&out, "],\"optional\":false,\"name\":");
	escape_json(&out, psprintf("%s.Envelope", prefix));
	appendStringInfoString(&out, ",\"version\":1}");
	return out.data;
}
