/*-------------------------------------------------------------------------
 *
 * avro.c
 *	  Avro encoding of PostgreSQL values with avro-c: a schema derived from
 *	  a row type (or a scalar type), its Parsing Canonical Form and
 *	  CRC-64-AVRO fingerprint, and the binary encoding of a value.
 *
 *	  avro-c 1.11 does not know logical types: the schema JSON written here
 *	  carries them for readers, and values are encoded as their underlying
 *	  types (a decimal as the bytes of its unscaled two's complement, a
 *	  timestamp as microseconds since the Unix epoch).  avro-c also has no
 *	  canonical form: the schema is written twice, in full and canonical,
 *	  by the same code.
 *
 *	  Schemas are cached per backend by type and row-type version, so that
 *	  ALTER TABLE / ALTER TYPE is seen at the next message.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <avro.h>

#include "access/htup_details.h"
#include "catalog/pg_enum.h"
#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/catcache.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "avro_schema.h"

/* How a PostgreSQL value becomes an Avro value. */
typedef enum KpAvroKind
{
	KP_AVRO_BOOLEAN,
	KP_AVRO_INT,					/* int2, int4 */
	KP_AVRO_LONG,					/* int8 */
	KP_AVRO_FLOAT,
	KP_AVRO_DOUBLE,
	KP_AVRO_DECIMAL,				/* numeric(p,s): bytes, logical decimal */
	KP_AVRO_NUMERIC_STRING,		/* unconstrained numeric: its text */
	KP_AVRO_STRING,				/* text types, json, jsonb: their text */
	KP_AVRO_UUID,					/* string, logical uuid */
	KP_AVRO_BYTES,
	KP_AVRO_DATE,					/* int days, logical date */
	KP_AVRO_TIME,					/* long micros, logical time-micros */
	KP_AVRO_TIMESTAMP,				/* long micros, logical timestamp-micros */
	KP_AVRO_ENUM,
	KP_AVRO_ARRAY
} KpAvroKind;

typedef struct KpAvroType
{
	KpAvroKind	kind;
	Oid			typid;			/* the base type, domains looked through */
	int			precision;		/* KP_AVRO_DECIMAL */
	int			scale;
	int32		typmod;
	int			nsymbols;		/* KP_AVRO_ENUM: labels in sort order */
	char	  **symbols;
	Oid			output;			/* KP_AVRO_STRING, KP_AVRO_NUMERIC_STRING: output fn */
	struct KpAvroType *element; /* KP_AVRO_ARRAY */
	int16		elmlen;
	bool		elmbyval;
	char		elmalign;
} KpAvroType;

typedef struct KpAvroField
{
	char	   *name;			/* Avro name of the column */
	bool		nullable;
	KpAvroType type;
} KpAvroField;

/* what write_value() tries to write a value into before measuring it */
#define KP_AVRO_SCRATCH_SIZE (64 * 1024)

typedef struct KpAvroKey
{
	Oid			typid;
	uint64		rowtype_version;	/* typcache's tupDesc_identifier */
	bool		is_key;
} KpAvroKey;

/*
 * An envelope's source as written for a statement: its members before
 * lsn (which alone changes from one event to the next), and after it.  A
 * record is written as its members one after another, so each event's
 * source is head, lsn, tail, and avro-c walks the source's dozen members
 * once a statement instead of once an event.
 */
typedef struct KpEncodedSource
{
	bool		valid;
	int64		ts_ms;
	int64		txid;
	bool		snapshot;
	char	   *head;
	int64		head_len;
	char	   *tail;
	int64		tail_len;
} KpEncodedSource;

struct KpAvroSchema
{
	KpAvroKey	key;			/* hash key */
	bool		is_record;
	struct KpAvroSchema *row;	/* an envelope: its before/after record; a
								 * flat row: the record it extends */
	bool		flat;			/* the row's fields, then __op, __table,
								 * __source_ts_ms and __deleted */
	int			nfields;
	KpAvroField *fields;		/* a record's columns, by attribute number */
	Datum	   *values;			/* room for a row's columns */
	bool	   *nulls;
	bool		deform;			/* several fields: deform the whole row */
	bool		source_set;		/* an envelope: its constant members are */
	KpEncodedSource *source;	/* an envelope: its source, encoded */
	KpAvroType	scalar;			/* not a record: the one value's type */
	char	   *json;			/* the full schema */
	char	   *canonical;		/* its Parsing Canonical Form */
	uint64		fingerprint;	/* CRC-64-AVRO of the canonical form */
	avro_schema_t avro_schema;
	avro_value_iface_t *iface;
	avro_value_t value;			/* reused for every message */
};

static HTAB *schemas = NULL;
static MemoryContext avro_context = NULL;

/* ---------------------------------------------------------------------
 * Names and types
 * ---------------------------------------------------------------------
 */

/* Avro names: [A-Za-z_][A-Za-z0-9_]*; anything else becomes '_' */
static char *
avro_name(const char *name)
{
	char	   *result = palloc(strlen(name) + 2);
	char	   *out = result;

	if (!((name[0] >= 'A' && name[0] <= 'Z') || (name[0] >= 'a' && name[0] <= 'z') ||
		  name[0] == '_'))
		*out++ = '_';
	for (const char *c = name; *c; c++)
		*out++ = ((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
				  (*c >= '0' && *c <= '9') || *c == '_') ? *c : '_';
	*out = '\0';
	return result;
}

static int
compare_sort_order(const void *a, const void *b)
{
	float4		x = (*(Form_pg_enum const *) a)->enumsortorder;
	float4		y = (*(Form_pg_enum const *) b)->enumsortorder;

	return (x > y) - (x < y);
}

/* An enum's labels in their sort order, as Avro symbols. */
static void
enum_symbols(Oid enumtypid, KpAvroType *type)
{
	CatCList   *list = SearchSysCacheList1(ENUMTYPOIDNAME,
										   ObjectIdGetDatum(enumtypid));
	Form_pg_enum *labels = palloc(list->n_members * sizeof(Form_pg_enum));

	for (int i = 0; i < list->n_members; i++)
		labels[i] = (Form_pg_enum) GETSTRUCT(&list->members[i]->tuple);
	qsort(labels, list->n_members, sizeof(Form_pg_enum), compare_sort_order);
	type->nsymbols = list->n_members;
	type->symbols = palloc(list->n_members * sizeof(char *));
	for (int i = 0; i < list->n_members; i++)
	{
		char	   *label = NameStr(labels[i]->enumlabel);
		char	   *symbol = avro_name(label);

		if (strcmp(symbol, label) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("enum label \"%s\" of type %s is not a valid Avro symbol",
							label, format_type_be(enumtypid)),
					 errdetail("Avro enum symbols match [A-Za-z_][A-Za-z0-9_]*.")));
		type->symbols[i] = symbol;
	}
	ReleaseSysCacheList(list);
}

static void
unsupported(const char *column, Oid typid)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 column ?
			 errmsg("column \"%s\" has type %s, which has no Avro mapping",
					column, format_type_be(typid)) :
			 errmsg("type %s has no Avro mapping", format_type_be(typid)),
			 errhint("Cast it to text, or see the Avro type mapping in the README.")));
}

/* The Avro type of values of typid (typmod), for column (NULL for a scalar). */
static void
derive_type(Oid typid, int32 typmod, const char *column, KpAvroType *type)
{
	Oid			base = getBaseTypeAndTypmod(typid, &typmod);
	Oid			element = get_element_type(base);
	bool		isvarlena;

	memset(type, 0, sizeof(*type));
	type->typid = base;
	type->typmod = typmod;
	if (OidIsValid(element))
	{
		type->kind = KP_AVRO_ARRAY;
		type->element = palloc(sizeof(KpAvroType));
		derive_type(element, typmod, column, type->element);
		if (type->element->kind == KP_AVRO_ARRAY)
			unsupported(column, typid);
		get_typlenbyvalalign(element, &type->elmlen, &type->elmbyval,
							 &type->elmalign);
		return;
	}
	if (type_is_enum(base))
	{
		type->kind = KP_AVRO_ENUM;
		enum_symbols(base, type);
		return;
	}
	switch (base)
	{
		case BOOLOID:
			type->kind = KP_AVRO_BOOLEAN;
			break;
		case INT2OID:
		case INT4OID:
			type->kind = KP_AVRO_INT;
			break;
		case INT8OID:
			type->kind = KP_AVRO_LONG;
			break;
		case FLOAT4OID:
			type->kind = KP_AVRO_FLOAT;
			break;
		case FLOAT8OID:
			type->kind = KP_AVRO_DOUBLE;
			break;
		case NUMERICOID:
			if (typmod >= (int32) VARHDRSZ)
			{
				type->kind = KP_AVRO_DECIMAL;
				type->precision = ((typmod - VARHDRSZ) >> 16) & 0xffff;
				type->scale = (((typmod - VARHDRSZ) & 0x7ff) ^ 1024) - 1024;
				if (type->scale < 0)
					unsupported(column, typid);
			}
			else
				type->kind = KP_AVRO_NUMERIC_STRING;
			break;
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
		case NAMEOID:
		case JSONOID:
		case JSONBOID:
			type->kind = KP_AVRO_STRING;
			break;
		case UUIDOID:
			type->kind = KP_AVRO_UUID;
			break;
		case BYTEAOID:
			type->kind = KP_AVRO_BYTES;
			break;
		case DATEOID:
			type->kind = KP_AVRO_DATE;
			break;
		case TIMEOID:
			type->kind = KP_AVRO_TIME;
			break;
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			type->kind = KP_AVRO_TIMESTAMP;
			break;
		default:
			unsupported(column, typid);
	}
	if (type->kind == KP_AVRO_STRING || type->kind == KP_AVRO_NUMERIC_STRING ||
		type->kind == KP_AVRO_UUID)
		getTypeOutputInfo(base, &type->output, &isvarlena);
}

/* ---------------------------------------------------------------------
 * Schema JSON, full and canonical
 * ---------------------------------------------------------------------
 */

static void
append_type_json(StringInfo out, KpAvroType *type, const char *name,
				 bool canonical)
{
	static const char *const primitive[] = {
		[KP_AVRO_BOOLEAN] = "boolean", [KP_AVRO_INT] = "int", [KP_AVRO_LONG] = "long",
		[KP_AVRO_FLOAT] = "float", [KP_AVRO_DOUBLE] = "double",
		[KP_AVRO_NUMERIC_STRING] = "string", [KP_AVRO_STRING] = "string",
		[KP_AVRO_BYTES] = "bytes",
	};

	switch (type->kind)
	{
		case KP_AVRO_DECIMAL:
			if (canonical)
				appendStringInfoString(out, "\"bytes\"");
			else
				appendStringInfo(out, "{\"type\":\"bytes\",\"logicalType\":\"decimal\","
								 "\"precision\":%d,\"scale\":%d}",
								 type->precision, type->scale);
			break;
		case KP_AVRO_UUID:
			appendStringInfoString(out, canonical ? "\"string\"" :
								   "{\"type\":\"string\",\"logicalType\":\"uuid\"}");
			break;
		case KP_AVRO_DATE:
			appendStringInfoString(out, canonical ? "\"int\"" :
								   "{\"type\":\"int\",\"logicalType\":\"date\"}");
			break;
		case KP_AVRO_TIME:
			appendStringInfoString(out, canonical ? "\"long\"" :
								   "{\"type\":\"long\",\"logicalType\":\"time-micros\"}");
			break;
		case KP_AVRO_TIMESTAMP:
			appendStringInfoString(out, canonical ? "\"long\"" :
								   "{\"type\":\"long\",\"logicalType\":\"timestamp-micros\"}");
			break;
		case KP_AVRO_ENUM:
			appendStringInfo(out, "{\"name\":\"%s\",\"type\":\"enum\",\"symbols\":[",
							 name);
			for (int i = 0; i < type->nsymbols; i++)
				appendStringInfo(out, "%s\"%s\"", i ? "," : "", type->symbols[i]);
			appendStringInfoString(out, "]}");
			break;
		case KP_AVRO_ARRAY:
			appendStringInfoString(out, "{\"type\":\"array\",\"items\":[\"null\",");
			append_type_json(out, type->element, psprintf("%s_item", name),
							 canonical);
			appendStringInfoString(out, "]}");
			break;
		default:
			appendStringInfo(out, "\"%s\"", primitive[type->kind]);
	}
}

static char *schema_json(KpAvroSchema *schema, const char *name, bool canonical);
static void append_fields_json(StringInfo out, KpAvroSchema *schema,
							   const char *name, bool canonical);
static char *flat_json(KpAvroSchema *flat, const char *name, bool canonical);

/*
 * Debezium's envelope: before and after (the row record, nullable),
 * source, op and ts_ms.  kp_avro_encode_event sets the members by
 * position: KpEnvelopeMember and KpSourceMember follow this order.
 */
static char *
envelope_json(KpAvroSchema *envelope, const char *name, bool canonical)
{
	StringInfoData out;
	char	   *row_record_name = psprintf("%.*s.Value",
										   (int) (strlen(name) - strlen(".Envelope")),
										   name);
	const char *nullable_default = canonical ? "" : ",\"default\":null";

	initStringInfo(&out);
	appendStringInfo(&out,
					 "{\"name\":\"%s\",\"type\":\"record\",\"fields\":["
					 "{\"name\":\"before\",\"type\":[\"null\",%s]%s},"
					 "{\"name\":\"after\",\"type\":[\"null\",\"%s\"]%s},"
					 "{\"name\":\"source\",\"type\":{\"name\":\"%s.Source\",\"type\":\"record\",\"fields\":["
					 "{\"name\":\"version\",\"type\":\"string\"},"
					 "{\"name\":\"connector\",\"type\":\"string\"},"
					 "{\"name\":\"name\",\"type\":\"string\"},"
					 "{\"name\":\"ts_ms\",\"type\":\"long\"},"
					 "{\"name\":\"snapshot\",\"type\":\"string\"},"
					 "{\"name\":\"db\",\"type\":\"string\"},"
					 "{\"name\":\"schema\",\"type\":\"string\"},"
					 "{\"name\":\"table\",\"type\":\"string\"},"
					 "{\"name\":\"txId\",\"type\":\"long\"},"
					 "{\"name\":\"lsn\",\"type\":\"long\"},"
					 "{\"name\":\"xmin\",\"type\":[\"null\",\"long\"]%s},"
					 "{\"name\":\"partition\",\"type\":[\"null\",\"string\"]%s}]}},"
					 "{\"name\":\"op\",\"type\":\"string\"},"
					 "{\"name\":\"ts_ms\",\"type\":\"long\"}]}",
					 name, schema_json(envelope->row, row_record_name, canonical),
					 nullable_default, row_record_name, nullable_default,
					 KP_AVRO_NAMESPACE, nullable_default, nullable_default);
	return out.data;
}

static char *
schema_json(KpAvroSchema *schema, const char *name, bool canonical)
{
	StringInfoData out;

	initStringInfo(&out);
	if (schema->flat)
		return flat_json(schema, name, canonical);
	if (schema->row != NULL)
		return envelope_json(schema, name, canonical);
	if (!schema->is_record)
	{
		append_type_json(&out, &schema->scalar, name, canonical);
		return out.data;
	}
	appendStringInfo(&out, "{\"name\":\"%s\",\"type\":\"record\",\"fields\":[", name);
	append_fields_json(&out, schema, name, canonical);
	appendStringInfoString(&out, "]}");
	return out.data;
}

/* The fields of a record's columns, named within name. */
static void
append_fields_json(StringInfo out, KpAvroSchema *schema, const char *name,
				   bool canonical)
{
	for (int i = 0; i < schema->nfields; i++)
	{
		KpAvroField *field = &schema->fields[i];
		char	   *type_name = psprintf("%s.%s", name, field->name);

		if (field->name == NULL)
			continue;
		appendStringInfo(out, "%s{\"name\":\"%s\",\"type\":",
						 out->data[out->len - 1] == '[' ? "" : ",", field->name);
		if (field->nullable)
			appendStringInfoString(out, "[\"null\",");
		append_type_json(out, &field->type, type_name, canonical);
		appendStringInfoString(out, field->nullable ? "]" : "");
		if (field->nullable && !canonical)
			appendStringInfoString(out, ",\"default\":null");
		appendStringInfoChar(out, '}');
	}
}

/*
 * A flat row, as Debezium's ExtractNewRecordState makes of an event: the
 * columns, then what it adds with add.fields=op,table,source.ts_ms and
 * delete.handling.mode=rewrite.
 */
static char *
flat_json(KpAvroSchema *flat, const char *name, bool canonical)
{
	StringInfoData out;

	initStringInfo(&out);
	appendStringInfo(&out, "{\"name\":\"%s\",\"type\":\"record\",\"fields\":[", name);
	append_fields_json(&out, flat->row, name, canonical);
	appendStringInfo(&out, "%s{\"name\":\"__op\",\"type\":\"string\"},"
					 "{\"name\":\"__table\",\"type\":\"string\"},"
					 "{\"name\":\"__source_ts_ms\",\"type\":\"long\"},"
					 "{\"name\":\"__deleted\",\"type\":\"string\"}]}",
					 out.data[out.len - 1] == '[' ? "" : ",");
	return out.data;
}

/* CRC-64-AVRO, the fingerprint of the Avro specification */
static uint64
avro_fingerprint(const char *canonical)
{
	static uint64 table[256];
	const uint64 empty = UINT64CONST(0xc15d213aa4d7a795);
	uint64		fp = empty;

	if (table[1] == 0)
	{
		for (int i = 0; i < 256; i++)
		{
			uint64		entry = i;

			for (int j = 0; j < 8; j++)
				entry = (entry >> 1) ^ (empty & -(entry & 1));
			table[i] = entry;
		}
	}
	for (const unsigned char *c = (const unsigned char *) canonical; *c; c++)
		fp = (fp >> 8) ^ table[(fp ^ *c) & 0xff];
	return fp;
}

static void
derive_fields(KpAvroSchema *schema, TupleDesc desc, const bool *include)
{
	int			included = 0;

	schema->is_record = true;
	schema->nfields = desc->natts;
	schema->fields = palloc0(desc->natts * sizeof(KpAvroField));
	schema->values = palloc(desc->natts * sizeof(Datum));
	schema->nulls = palloc(desc->natts * sizeof(bool));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);
		KpAvroField *field = &schema->fields[i];

		if (attr->attisdropped || (include != NULL && !include[i]))
			continue;
		field->name = avro_name(NameStr(attr->attname));
		for (int j = 0; j < i; j++)
			if (schema->fields[j].name && strcmp(schema->fields[j].name, field->name) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_COLUMN),
						 errmsg("columns \"%s\" and \"%s\" have the same Avro name \"%s\"",
								NameStr(TupleDescAttr(desc, j)->attname),
								NameStr(attr->attname), field->name)));
		field->nullable = !attr->attnotnull;
		derive_type(attr->atttypid, attr->atttypmod, NameStr(attr->attname),
					&field->type);
		included++;
	}
	/* a key of one column is quicker to get alone */
	schema->deform = included > 1;
}

static void
build_avro_value(KpAvroSchema *schema)
{
	if (avro_schema_from_json_length(schema->json, strlen(schema->json),
									 &schema->avro_schema) != 0)
		elog(ERROR, "avro-c refused schema %s: %s", schema->json, avro_strerror());
	schema->iface = avro_generic_class_from_schema(schema->avro_schema);
	if (schema->iface == NULL ||
		avro_generic_value_new(schema->iface, &schema->value) != 0)
		elog(ERROR, "avro-c could not make a value of schema %s: %s",
			 schema->json, avro_strerror());
}

/* <prefix>.<schema>.<type>.Value or .Key, each part an Avro name */
static char *
schema_name(Oid typid, bool is_key)
{
	HeapTuple	tuple = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	Form_pg_type form;
	char	   *name;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for type %u", typid);
	form = (Form_pg_type) GETSTRUCT(tuple);
	name = psprintf("%s.%s.%s.%s", KP_AVRO_NAMESPACE,
					avro_name(get_namespace_name(form->typnamespace)),
					avro_name(NameStr(form->typname)), is_key ? "Key" : "Value");
	ReleaseSysCache(tuple);
	return name;
}

/*
 * The schema of values of type typid, as a message value or key; a
 * composite type becomes a record named <prefix>.<schema>.<type>.Value
 * or .Key.
 */
KpAvroSchema *
kp_avro_schema(Oid typid, bool is_key)
{
	KpAvroKey	key;
	KpAvroSchema *schema;
	bool		found;
	MemoryContext old;
	MemoryContext schema_context;
	TypeCacheEntry *typentry = NULL;
	char	   *name;

	if (schemas == NULL)
	{
		HASHCTL		ctl;

		avro_context = AllocSetContextCreate(TopMemoryContext,
											 "kafka_producer Avro schemas",
											 ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = sizeof(KpAvroKey);
		ctl.entrysize = sizeof(KpAvroSchema);
		ctl.hcxt = avro_context;
		schemas = hash_create("kafka_producer Avro schemas", 16, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&key, 0, sizeof(key));
	key.typid = typid;
	key.is_key = is_key;
	if (type_is_rowtype(typid))
	{
		if (typid == RECORDOID)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("an anonymous record has no Avro schema"),
					 errhint("Pass a row of a table or of a type made with CREATE TYPE ... AS.")));
		typentry = lookup_type_cache(typid, TYPECACHE_TUPDESC);
		key.rowtype_version = typentry->tupDesc_identifier;
	}
	schema = hash_search(schemas, &key, HASH_FIND, NULL);
	if (schema != NULL)
		return schema;

	/*
	 * Built in a context of the current transaction, which an ERROR frees;
	 * kept once complete.
	 */
	schema_context = AllocSetContextCreate(CurrentMemoryContext,
										   "kafka_producer Avro schema",
										   ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(schema_context);
	schema = palloc0(sizeof(KpAvroSchema));
	name = schema_name(typid, is_key);
	if (typentry != NULL)
		derive_fields(schema, typentry->tupDesc, NULL);
	else
		derive_type(typid, -1, NULL, &schema->scalar);
	schema->json = schema_json(schema, name, false);
	schema->canonical = schema_json(schema, name, true);
	schema->fingerprint = avro_fingerprint(schema->canonical);
	build_avro_value(schema);
	MemoryContextSwitchTo(old);
	MemoryContextSetParent(schema_context, avro_context);

	schema->key = key;
	memcpy(hash_search(schemas, &key, HASH_ENTER, &found), schema,
		   sizeof(KpAvroSchema));
	return hash_search(schemas, &key, HASH_FIND, NULL);
}

const char *
kp_avro_schema_json(KpAvroSchema *schema)
{
	return schema->json;
}

uint64
kp_avro_schema_fingerprint(KpAvroSchema *schema)
{
	return schema->fingerprint;
}

/*
 * A fingerprint's 8 bytes as single-object encoding and kafka.schemas
 * keep them: little-endian.
 */
void
kp_avro_fingerprint_put(uint64 fingerprint, char *out)
{
	for (int i = 0; i < 8; i++)
		out[i] = (fingerprint >> (8 * i)) & 0xff;
}

uint64
kp_avro_fingerprint_get(const char *in)
{
	uint64		fingerprint = 0;

	for (int i = 0; i < 8; i++)
		fingerprint |= (uint64) (unsigned char) in[i] << (8 * i);
	return fingerprint;
}

bytea *
kp_avro_fingerprint_bytea(uint64 fingerprint)
{
	bytea	   *result = palloc(VARHDRSZ + 8);

	SET_VARSIZE(result, VARHDRSZ + 8);
	kp_avro_fingerprint_put(fingerprint, VARDATA(result));
	return result;
}

/* subject holds KP_SUBJECT_MAX bytes */
void
kp_avro_subject(char *subject, const char *topic, bool is_key)
{
	snprintf(subject, KP_SUBJECT_MAX, "%s-%s", topic, is_key ? "key" : "value");
}

/* ---------------------------------------------------------------------
 * Values
 * ---------------------------------------------------------------------
 */

static void
check_avro(int rc)
{
	if (rc != 0)
		elog(ERROR, "avro-c: %s", avro_strerror());
}

/* digits after the decimal point in numeric_out's text */
static int
fraction_digits(const char *text)
{
	const char *point = strchr(text, '.');

	return point == NULL ? 0 : strlen(point + 1);
}

/*
 * numeric(p,s) as Avro's decimal: the unscaled value, big-endian two's
 * complement.  A column's values have s digits after the point already;
 * others are rounded to s.
 */
static void
set_decimal(avro_value_t *out, KpAvroType *type, Datum value)
{
	char	   *text;
	bool		negative;
	int			ndigits = 0;
	char	   *digits;
	unsigned char *bytes;
	int			nbytes = 0;
	int			capacity;

	if (numeric_is_nan(DatumGetNumeric(value)))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("NaN has no Avro decimal encoding"),
				 errhint("Keep NaN out of the column, or declare it numeric without precision: its values are sent as strings.")));
	text = DatumGetCString(DirectFunctionCall1(numeric_out, value));
	if (fraction_digits(text) != type->scale)
	{
		Datum		rounded = DirectFunctionCall2(numeric_round, value,
												  Int32GetDatum(type->scale));

		text = DatumGetCString(DirectFunctionCall1(numeric_out, rounded));
	}
	negative = text[0] == '-';
	digits = palloc(strlen(text) + 1);
	capacity = strlen(text) / 2 + 2;
	for (char *c = text; *c; c++)
		if (*c >= '0' && *c <= '9')
			digits[ndigits++] = *c - '0';
	/* repeated division by 256 of the decimal digits, least byte first */
	bytes = palloc0(capacity);
	while (ndigits > 0)
	{
		int			remainder = 0;
		int			kept = 0;

		for (int i = 0; i < ndigits; i++)
		{
			int			current = remainder * 10 + digits[i];

			digits[kept] = current / 256;
			remainder = current % 256;
			if (kept > 0 || digits[kept] != 0)
				kept++;
		}
		bytes[nbytes++] = remainder;
		ndigits = kept;
	}
	/* a sign byte when the top bit would say otherwise */
	if (nbytes == 0 || (bytes[nbytes - 1] & 0x80))
		bytes[nbytes++] = 0;
	if (negative)
	{
		int			carry = 1;

		for (int i = 0; i < nbytes; i++)
		{
			int			v = (unsigned char) ~bytes[i] + carry;

			bytes[i] = v & 0xff;
			carry = v >> 8;
		}
	}
	/* big-endian, without redundant sign bytes */
	while (nbytes > 1 &&
		   ((bytes[nbytes - 1] == 0 && !(bytes[nbytes - 2] & 0x80)) ||
			(bytes[nbytes - 1] == 0xff && (bytes[nbytes - 2] & 0x80))))
		nbytes--;
	for (int i = 0; i < nbytes / 2; i++)
	{
		unsigned char t = bytes[i];

		bytes[i] = bytes[nbytes - 1 - i];
		bytes[nbytes - 1 - i] = t;
	}
	check_avro(avro_value_set_bytes(out, bytes, nbytes));
}

/*
 * A string without avro-c's copy: str must outlive the write of the
 * value, as the publication's and the event's own strings do.
 */
static void
set_string_in_place(avro_value_t *out, const char *str)
{
	avro_wrapped_buffer_t buffer;

	check_avro(avro_wrapped_buffer_new_string(&buffer, str));
	check_avro(avro_value_give_string_len(out, &buffer));
}

static void
set_text(avro_value_t *out, const char *text)
{
	set_string_in_place(out, pg_server_to_any(text, strlen(text), PG_UTF8));
}

static int64
unix_micros(Timestamp ts)
{
	if (TIMESTAMP_NOT_FINITE(ts))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("infinite timestamps have no Avro encoding")));
	return ts + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;
}

static void set_value(avro_value_t *out, KpAvroType *type, Datum value);

static void
set_nullable(avro_value_t *out, KpAvroType *type, Datum value, bool isnull)
{
	avro_value_t branch;

	check_avro(avro_value_set_branch(out, isnull ? 0 : 1, &branch));
	if (isnull)
		check_avro(avro_value_set_null(&branch));
	else
		set_value(&branch, type, value);
}

static void
set_array(avro_value_t *out, KpAvroType *type, Datum value)
{
	ArrayType  *array = DatumGetArrayTypeP(value);
	Datum	   *elements;
	bool	   *nulls;
	int			count;

	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("only one-dimensional arrays have an Avro encoding")));
	deconstruct_array(array, ARR_ELEMTYPE(array), type->elmlen, type->elmbyval,
					  type->elmalign, &elements, &nulls, &count);
	/* a change event's value is not reset as a whole: empty the array */
	check_avro(avro_value_reset(out));
	for (int i = 0; i < count; i++)
	{
		avro_value_t element;

		check_avro(avro_value_append(out, &element, NULL));
		set_nullable(&element, type->element, elements[i], nulls[i]);
	}
}

static void
set_enum(avro_value_t *out, KpAvroType *type, Datum value)
{
	char	   *label = DatumGetCString(DirectFunctionCall1(enum_out, value));

	for (int i = 0; i < type->nsymbols; i++)
		if (strcmp(type->symbols[i], label) == 0)
		{
			check_avro(avro_value_set_enum(out, i));
			return;
		}
	/* a label added since the schema was derived */
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("enum label \"%s\" of type %s is not in its Avro schema yet",
					label, format_type_be(type->typid)),
			 errhint("Start a new session to derive the schema again.")));
}

static void
set_value(avro_value_t *out, KpAvroType *type, Datum value)
{
	switch (type->kind)
	{
		case KP_AVRO_BOOLEAN:
			check_avro(avro_value_set_boolean(out, DatumGetBool(value)));
			break;
		case KP_AVRO_INT:
			check_avro(avro_value_set_int(out, type->typid == INT2OID ?
										  DatumGetInt16(value) : DatumGetInt32(value)));
			break;
		case KP_AVRO_LONG:
			check_avro(avro_value_set_long(out, DatumGetInt64(value)));
			break;
		case KP_AVRO_FLOAT:
			check_avro(avro_value_set_float(out, DatumGetFloat4(value)));
			break;
		case KP_AVRO_DOUBLE:
			check_avro(avro_value_set_double(out, DatumGetFloat8(value)));
			break;
		case KP_AVRO_DECIMAL:
			set_decimal(out, type, value);
			break;
		case KP_AVRO_NUMERIC_STRING:
		case KP_AVRO_STRING:
		case KP_AVRO_UUID:
			set_text(out, OidOutputFunctionCall(type->output, value));
			break;
		case KP_AVRO_BYTES:
			{
				bytea	   *bytes = DatumGetByteaPP(value);

				check_avro(avro_value_set_bytes(out, VARDATA_ANY(bytes),
												VARSIZE_ANY_EXHDR(bytes)));
			}
			break;
		case KP_AVRO_DATE:
			if (DATE_NOT_FINITE(DatumGetDateADT(value)))
				ereport(ERROR,
						(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
						 errmsg("infinite dates have no Avro encoding")));
			check_avro(avro_value_set_int(out, DatumGetDateADT(value) +
										  (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE)));
			break;
		case KP_AVRO_TIME:
			check_avro(avro_value_set_long(out, DatumGetTimeADT(value)));
			break;
		case KP_AVRO_TIMESTAMP:
			check_avro(avro_value_set_long(out, unix_micros(DatumGetTimestamp(value))));
			break;
		case KP_AVRO_ENUM:
			set_enum(out, type, value);
			break;
		case KP_AVRO_ARRAY:
			set_array(out, type, value);
			break;
	}
}

/* The fields of a row record, from a tuple of the table or type. */
static void
set_record_fields(avro_value_t *record, KpAvroSchema *schema, TupleDesc desc,
				  HeapTuple tuple)
{
	/* the record's fields are the included columns, in column order */
	size_t		index = 0;

	Assert(desc->natts == schema->nfields);
	if (schema->deform)
		heap_deform_tuple(tuple, desc, schema->values, schema->nulls);
	for (int i = 0; i < schema->nfields; i++)
	{
		KpAvroField *field = &schema->fields[i];
		avro_value_t out;

		if (field->name == NULL)
			continue;
		if (!schema->deform)
			schema->values[i] = heap_getattr(tuple, i + 1, desc, &schema->nulls[i]);
		check_avro(avro_value_get_by_index(record, index++, &out, NULL));
		if (field->nullable)
			set_nullable(&out, &field->type, schema->values[i], schema->nulls[i]);
		else
			set_value(&out, &field->type, schema->values[i]);
	}
}

static void
set_record(KpAvroSchema *schema, HeapTupleHeader record)
{
	HeapTupleData tuple;
	TupleDesc	desc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(record),
											  HeapTupleHeaderGetTypMod(record));

	tuple.t_len = HeapTupleHeaderGetDatumLength(record);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = record;
	set_record_fields(&schema->value, schema, desc, &tuple);
	ReleaseTupleDesc(desc);
}

/* Writes value into buffer; its length, or -1 if it does not fit. */
static int64
write_into(avro_value_t *value, char *buffer, size_t size)
{
	avro_writer_t writer = avro_writer_memory(buffer, size);
	int			rc = avro_value_write(writer, value);
	int64		written = avro_writer_tell(writer);

	avro_writer_free(writer);
	return rc == 0 ? written : -1;
}

static char *
scratch_buffer(void)
{
	static char *scratch = NULL;

	if (scratch == NULL)
		scratch = MemoryContextAlloc(TopMemoryContext, KP_AVRO_SCRATCH_SIZE);
	return scratch;
}

/* a bytea of len bytes of scratch after header_len bytes */
static bytea *
bytea_after_header(const char *scratch, int64 len, int header_len)
{
	bytea	   *result = palloc(VARHDRSZ + header_len + len);

	SET_VARSIZE(result, VARHDRSZ + header_len + len);
	memcpy(VARDATA(result) + header_len, scratch, len);
	return result;
}

/*
 * schema's value, filled, in Avro binary after header_len bytes.  Most
 * values fit the scratch buffer, written in one pass; a larger one is
 * measured first (avro_value_sizeof walks the whole value).
 */
static bytea *
write_value(KpAvroSchema *schema, int header_len)
{
	char	   *scratch = scratch_buffer();
	int64		written;
	size_t		size;
	bytea	   *result;

	written = write_into(&schema->value, scratch, KP_AVRO_SCRATCH_SIZE);
	if (written >= 0)
		return bytea_after_header(scratch, written, header_len);
	check_avro(avro_value_sizeof(&schema->value, &size));
	result = palloc(VARHDRSZ + header_len + size);
	SET_VARSIZE(result, VARHDRSZ + header_len + size);
	if (write_into(&schema->value, VARDATA(result) + header_len, size) < 0)
		elog(ERROR, "avro-c: %s", avro_strerror());
	return result;
}

/*
 * Encodes value with schema after header_len bytes left for the caller;
 * returns the bytea.
 */
bytea *
kp_avro_encode(KpAvroSchema *schema, Datum value, int header_len)
{
	check_avro(avro_value_reset(&schema->value));
	if (schema->is_record)
		set_record(schema, DatumGetHeapTupleHeader(value));
	else
		set_value(&schema->value, &schema->scalar, value);
	return write_value(schema, header_len);
}

/* ---------------------------------------------------------------------
 * Change events
 * ---------------------------------------------------------------------
 */

/* avro-c's objects go when the context holding the schema is reset */
static void
free_avro_objects(void *arg)
{
	KpAvroSchema *schema = arg;

	avro_value_decref(&schema->value);
	avro_value_iface_decref(schema->iface);
	avro_schema_decref(schema->avro_schema);
}

static KpAvroSchema *
finish_schema(KpAvroSchema *schema, const char *name)
{
	MemoryContextCallback *callback = palloc(sizeof(MemoryContextCallback));

	schema->json = schema_json(schema, name, false);
	schema->canonical = schema_json(schema, name, true);
	schema->fingerprint = avro_fingerprint(schema->canonical);
	build_avro_value(schema);
	callback->func = free_avro_objects;
	callback->arg = schema;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, callback);
	return schema;
}

/*
 * The record of the columns of desc, rel's row or one derived from it,
 * marked in include, named <prefix>.<schema>.<table>.<suffix>; freed with
 * CurrentMemoryContext.
 * An ERROR names a column whose type has no Avro mapping.
 */
KpAvroSchema *
kp_avro_row_schema(Relation rel, TupleDesc desc, const bool *include,
				   const char *suffix)
{
	KpAvroSchema *schema = palloc0(sizeof(KpAvroSchema));

	derive_fields(schema, desc, include);
	return finish_schema(schema, psprintf("%s.%s.%s.%s", KP_AVRO_NAMESPACE,
										  avro_name(get_namespace_name(RelationGetNamespace(rel))),
										  avro_name(RelationGetRelationName(rel)),
										  suffix));
}

/* Debezium's envelope around row, a kp_avro_row_schema(..., "Value"). */
KpAvroSchema *
kp_avro_envelope_schema(Relation rel, KpAvroSchema *row)
{
	KpAvroSchema *schema = palloc0(sizeof(KpAvroSchema));

	schema->is_record = true;
	schema->row = row;
	return finish_schema(schema, psprintf("%s.%s.%s.Envelope", KP_AVRO_NAMESPACE,
										  avro_name(get_namespace_name(RelationGetNamespace(rel))),
										  avro_name(RelationGetRelationName(rel))));
}

/*
 * A flat row extending row, a kp_avro_row_schema(..., "Value"), named as
 * that record is, as Debezium's ExtractNewRecordState names it.
 */
KpAvroSchema *
kp_avro_flat_schema(Relation rel, KpAvroSchema *row)
{
	KpAvroSchema *schema = palloc0(sizeof(KpAvroSchema));

	schema->is_record = true;
	schema->row = row;
	schema->flat = true;
	return finish_schema(schema, psprintf("%s.%s.%s.Value", KP_AVRO_NAMESPACE,
										  avro_name(get_namespace_name(RelationGetNamespace(rel))),
										  avro_name(RelationGetRelationName(rel))));
}

/* A row record (a key) of tuple, after header_len bytes. */
bytea *
kp_avro_encode_row(KpAvroSchema *schema, TupleDesc desc, HeapTuple tuple,
				   int header_len)
{
	check_avro(avro_value_reset(&schema->value));
	set_record_fields(&schema->value, schema, desc, tuple);
	return write_value(schema, header_len);
}

/* the envelope's members, and its source's, in envelope_json's order */
typedef enum KpEnvelopeMember
{
	ENVELOPE_BEFORE,
	ENVELOPE_AFTER,
	ENVELOPE_SOURCE,
	ENVELOPE_OP,
	ENVELOPE_TS_MS
} KpEnvelopeMember;

typedef enum KpSourceMember
{
	SOURCE_VERSION,
	SOURCE_CONNECTOR,
	SOURCE_NAME,
	SOURCE_TS_MS,
	SOURCE_SNAPSHOT,
	SOURCE_DB,
	SOURCE_SCHEMA,
	SOURCE_TABLE,
	SOURCE_TXID,
	SOURCE_LSN,
	SOURCE_XMIN,				/* always null, as in the JSON envelope */
	SOURCE_PARTITION			/* of a partitioned table, else null */
} KpSourceMember;

static void
set_image(KpAvroSchema *envelope, KpEnvelopeMember member, TupleDesc desc,
		  HeapTuple tuple)
{
	avro_value_t field;
	avro_value_t branch;

	check_avro(avro_value_get_by_index(&envelope->value, member, &field, NULL));
	check_avro(avro_value_set_branch(&field, tuple ? 1 : 0, &branch));
	if (tuple == NULL)
		check_avro(avro_value_set_null(&branch));
	else
		set_record_fields(&branch, envelope->row, desc, tuple);
}

/* Members by position, not name: avro-c finds a name by comparing each. */
static void
set_string_member(avro_value_t *record, int member, const char *value)
{
	avro_value_t field;

	check_avro(avro_value_get_by_index(record, member, &field, NULL));
	set_string_in_place(&field, value);
}

static void
set_null_member(avro_value_t *record, int member)
{
	avro_value_t field;
	avro_value_t branch;

	check_avro(avro_value_get_by_index(record, member, &field, NULL));
	check_avro(avro_value_set_branch(&field, 0, &branch));
	check_avro(avro_value_set_null(&branch));
}

static void
set_nullable_string_member(avro_value_t *record, int member, const char *value)
{
	avro_value_t field;
	avro_value_t branch;

	if (value == NULL)
	{
		set_null_member(record, member);
		return;
	}
	check_avro(avro_value_get_by_index(record, member, &field, NULL));
	check_avro(avro_value_set_branch(&field, 1, &branch));
	set_string_in_place(&branch, value);
}

static void
set_long_member(avro_value_t *record, int member, int64 value)
{
	avro_value_t field;

	check_avro(avro_value_get_by_index(record, member, &field, NULL));
	check_avro(avro_value_set_long(&field, value));
}

/*
 * Writes record's members first .. last; false if they do not fit the
 * writer's buffer (or avro-c fails: the caller then writes the whole
 * value, and reports it).
 */
static bool
write_members(avro_writer_t writer, avro_value_t *record, int first, int last)
{
	for (int member = first; member <= last; member++)
	{
		avro_value_t field;

		if (avro_value_get_by_index(record, member, &field, NULL) != 0 ||
			avro_value_write(writer, &field) != 0)
			return false;
	}
	return true;
}

/* record's members first .. last, encoded, in mcxt; NULL if too large */
static char *
encode_members(avro_value_t *record, int first, int last, MemoryContext mcxt,
			   int64 *len)
{
	char	   *scratch = scratch_buffer();
	avro_writer_t writer = avro_writer_memory(scratch, KP_AVRO_SCRATCH_SIZE);
	bool		fits = write_members(writer, record, first, last);
	char	   *encoded = NULL;

	*len = avro_writer_tell(writer);
	avro_writer_free(writer);
	if (fits)
	{
		encoded = MemoryContextAlloc(mcxt, Max(*len, 1));
		memcpy(encoded, scratch, *len);
	}
	return encoded;
}

static bool
source_encoded_for(KpEncodedSource *encoded, const KpAvroSource *source,
				   char op)
{
	return encoded != NULL && encoded->valid &&
		encoded->ts_ms == source->ts_ms && encoded->txid == source->txid &&
		encoded->snapshot == (op == 'r');
}

/* Encodes record, envelope's source with every member set but lsn. */
static void
encode_source(KpAvroSchema *envelope, avro_value_t *record,
			  const KpAvroSource *source, char op)
{
	MemoryContext mcxt = GetMemoryChunkContext(envelope);
	KpEncodedSource *encoded = envelope->source;

	if (encoded == NULL)
		encoded = envelope->source =
			MemoryContextAllocZero(mcxt, sizeof(KpEncodedSource));
	encoded->valid = false;
	if (encoded->head != NULL)
		pfree(encoded->head);
	if (encoded->tail != NULL)
		pfree(encoded->tail);
	encoded->head = encoded->tail = NULL;
	encoded->head = encode_members(record, SOURCE_VERSION, SOURCE_LSN - 1,
								   mcxt, &encoded->head_len);
	encoded->tail = encode_members(record, SOURCE_LSN + 1, SOURCE_PARTITION,
								   mcxt, &encoded->tail_len);
	encoded->ts_ms = source->ts_ms;
	encoded->txid = source->txid;
	encoded->snapshot = op == 'r';
	encoded->valid = encoded->head != NULL && encoded->tail != NULL;
}

/*
 * envelope's value, filled, its source's lsn set, after header_len bytes:
 * its members one after another, the source's head and tail as encoded
 * for the statement.  The whole value if that does not fit the scratch.
 */
static bytea *
write_event(KpAvroSchema *envelope, avro_value_t *source, int header_len)
{
	KpEncodedSource *encoded = envelope->source;
	char	   *scratch = scratch_buffer();
	avro_writer_t writer = avro_writer_memory(scratch, KP_AVRO_SCRATCH_SIZE);
	bool		fits;
	int64		written;

	fits = encoded->valid &&
		write_members(writer, &envelope->value, ENVELOPE_BEFORE,
					  ENVELOPE_AFTER) &&
		avro_write(writer, encoded->head, encoded->head_len) == 0 &&
		write_members(writer, source, SOURCE_LSN, SOURCE_LSN) &&
		avro_write(writer, encoded->tail, encoded->tail_len) == 0 &&
		write_members(writer, &envelope->value, ENVELOPE_OP, ENVELOPE_TS_MS);
	written = avro_writer_tell(writer);
	avro_writer_free(writer);
	if (!fits)
		return write_value(envelope, header_len);
	return bytea_after_header(scratch, written, header_len);
}

/* A change event in the envelope, after header_len bytes. */
bytea *
kp_avro_encode_event(KpAvroSchema *envelope, TupleDesc desc, HeapTuple before,
					 HeapTuple after, const KpAvroSource *source, char op,
					 int header_len)
{
	avro_value_t record;
	char		op_string[2] = {op, '\0'};

	/*
	 * Not reset: every member is set again but the source's constant ones,
	 * set once (the publication's strings outlive its envelope), and the
	 * arrays, which set_array empties.
	 */
	set_image(envelope, ENVELOPE_BEFORE, desc, before);
	set_image(envelope, ENVELOPE_AFTER, desc, after);
	check_avro(avro_value_get_by_index(&envelope->value, ENVELOPE_SOURCE, &record,
									   NULL));
	if (!envelope->source_set)
	{
		set_string_member(&record, SOURCE_VERSION, source->version);
		set_string_member(&record, SOURCE_CONNECTOR, "postgresql");
		set_string_member(&record, SOURCE_NAME, source->name);
		set_string_member(&record, SOURCE_DB, source->db);
		set_string_member(&record, SOURCE_SCHEMA, source->schema);
		set_string_member(&record, SOURCE_TABLE, source->table);
		set_null_member(&record, SOURCE_XMIN);
		set_nullable_string_member(&record, SOURCE_PARTITION, source->partition);
		envelope->source_set = true;
	}
	if (!source_encoded_for(envelope->source, source, op))
	{
		set_long_member(&record, SOURCE_TS_MS, source->ts_ms);
		set_string_member(&record, SOURCE_SNAPSHOT,
						  op == 'r' ? "true" : "false");
		set_long_member(&record, SOURCE_TXID, source->txid);
		encode_source(envelope, &record, source, op);
	}
	set_long_member(&record, SOURCE_LSN, source->lsn);
	set_string_member(&envelope->value, ENVELOPE_OP, op_string);
	set_long_member(&envelope->value, ENVELOPE_TS_MS, source->event_ts_ms);
	return write_event(envelope, &record, header_len);
}

/*
 * A flat row: tuple, the image after the change or, of a delete, before
 * it, then the change's operation, table, time and whether it deletes.
 */
bytea *
kp_avro_encode_flat(KpAvroSchema *flat, TupleDesc desc, HeapTuple tuple,
					const KpAvroSource *source, char op, int header_len)
{
	char		op_string[2] = {op, '\0'};
	int			member = 0;

	check_avro(avro_value_reset(&flat->value));
	set_record_fields(&flat->value, flat->row, desc, tuple);
	for (int i = 0; i < flat->row->nfields; i++)
		member += flat->row->fields[i].name != NULL;
	set_string_member(&flat->value, member, op_string);
	set_string_member(&flat->value, member + 1, source->table);
	set_long_member(&flat->value, member + 2, source->ts_ms);
	set_string_member(&flat->value, member + 3, op == 'd' ? "true" : "false");
	return write_value(flat, header_len);
}
