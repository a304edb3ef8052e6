/*-------------------------------------------------------------------------
 *
 * publish.c
 *	  Change publishing: the trigger kafka_publish() attaches to a table
 *	  turns each row change into a Debezium-style event (key: the key
 *	  columns; value: before, after, source, op, ts_ms) and enqueues it in
 *	  the changing transaction, so that a rollback publishes nothing and
 *	  the worker delivers a key's events in commit order.
 *
 *	  A publication's options live in kafka.publication, columns by
 *	  attribute number so that RENAME COLUMN needs no re-publishing.  They
 *	  are read once per relation and kept with the column encoders until a
 *	  relcache invalidation of the table (ALTER TABLE, kafka_publish again).
 *
 *	  A partitioned table's row trigger is cloned to each of its partitions,
 *	  present and future, and fires there: a partition's changes are
 *	  published under its published ancestor's options, its rows first
 *	  converted to the ancestor's row type (the columns of a partition may
 *	  be numbered differently), and its events name the ancestor as their
 *	  table and the partition in a member of its own.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/relation.h"
#include "access/tupconvert.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/partition.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "avro_schema.h"
#include "change_json.h"
#include "kafka_producer.h"

PG_FUNCTION_INFO_V1(kafka_publish_trigger);
PG_FUNCTION_INFO_V1(kafka_snapshot_now);
PG_FUNCTION_INFO_V1(kafka_check_publication);
PG_FUNCTION_INFO_V1(kafka_check_schema_change);

/* what a masked column's value becomes */
#define KP_MASK_TEXT "****"

/* how a published column's value is sent */
typedef enum KpTreatment
{
	KP_AS_IS,
	KP_MASKED,					/* as KP_MASK_TEXT */
	KP_HASHED					/* as SHA-256, in hex, of kafka.hash_salt and
								 * its text */
} KpTreatment;

typedef struct KpPublication
{
	Oid			relid;			/* hash key: the table changed */
	Oid			published_relid;	/* relid, or its published ancestor */
	bool		valid;
	MemoryContext context;
	text	   *topic;
	bool		tombstones;
	KpTimeFormat time_format;
	Oid			filter;			/* the row filter function, or InvalidOid */
	FmgrInfo	filter_call;	/* its call, its argument typed as the row */
	TupleDesc	desc;			/* the published table's row type */
	bool		flat;			/* envelope 'row': the row, not before/after */
	char	   *table;			/* the JSON-escaped name of the table */
	KpTreatment *treatment;		/* per attribute */
	bool		masking;		/* some column is masked or hashed */
	TupleDesc	encoded_desc;	/* desc, masked and hashed columns as text */
	FmgrInfo   *output;			/* per hashed attribute: its type's output */
	TupleConversionMap *to_published;	/* a partition's rows to it; NULL:
										 * same columns */
	int			natts;
	bool	   *published;		/* per attribute: in before and after */
	KpJsonColumn *columns;		/* per attribute */
	char	  **names;			/* per attribute: its member's name, "name": */
	int		   *name_lengths;
	Datum	   *values;			/* room for a row's columns */
	bool	   *nulls;
	int			nkeys;
	AttrNumber *keys;
	char	   *source;			/* the constant members of "source" */
	int			source_length;
	bool		avro;			/* format avro, else json */
	char	   *connect_key;	/* format json_schema: {"schema": ..., "payload": */
	char	   *connect_value;	/* the same for values; NULL: plain json */
	KpAvroSchema *avro_key;
	KpAvroSchema *avro_value;	/* the envelope */
	KpAvroSource avro_source;	/* its constant members */
} KpPublication;

static HTAB *publications = NULL;

static void
invalidate_publication(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS scan;
	KpPublication *pub;

	hash_seq_init(&scan, publications);
	while ((pub = hash_seq_search(&scan)) != NULL)
		if (relid == InvalidOid || pub->relid == relid ||
			pub->published_relid == relid)
			pub->valid = false;
}

static AttrNumber *
attnums_of(Datum array, int *count)
{
	Datum	   *elements;
	bool	   *nulls;
	AttrNumber *result;

	deconstruct_array(DatumGetArrayTypeP(array), INT2OID, 2, true, TYPALIGN_SHORT,
					  &elements, &nulls, count);
	result = palloc(*count * sizeof(AttrNumber));
	for (int i = 0; i < *count; i++)
		result[i] = DatumGetInt16(elements[i]);
	return result;
}

static char *
json_string(const char *str)
{
	StringInfoData out;

	initStringInfo(&out);
	escape_json(&out, str);
	return out.data;
}

/* rel's relid and its ancestors', nearest first, as an oid[] */
static Datum
relid_and_ancestors(Relation rel)
{
	List	   *ancestors = rel->rd_rel->relispartition ?
		get_partition_ancestors(RelationGetRelid(rel)) : NIL;
	Datum	   *relids = palloc((list_length(ancestors) + 1) * sizeof(Datum));
	int			count = 0;
	ListCell   *lc;

	relids[count++] = ObjectIdGetDatum(RelationGetRelid(rel));
	foreach(lc, ancestors)
		relids[count++] = ObjectIdGetDatum(lfirst_oid(lc));
	return PointerGetDatum(construct_array(relids, count, OIDOID, sizeof(Oid),
										   true, TYPALIGN_INT));
}

/* Marks the columns numbered in attnums as sent with how. */
static void
mark_treatment(KpPublication *pub, Datum attnums, KpTreatment how)
{
	int			count;
	AttrNumber *numbers = attnums_of(attnums, &count);

	for (int i = 0; i < count; i++)
		if (numbers[i] >= 1 && numbers[i] <= pub->natts)
			pub->treatment[numbers[i] - 1] = how;
	pub->masking |= count > 0;
}

/*
 * Reads the options of rel's publication, or of its nearest published
 * ancestor's: topic, keys, columns, ...
 */
static void
load_options(KpPublication *pub, Relation rel)
{
	Oid			argtypes[] = {OIDARRAYOID};
	Datum		args[] = {relid_and_ancestors(rel)};
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		columns;
	Relation	published;
	KpSavedUser saved;

	/* kafka.publication's columns are this version's */
	kp_extension_check_current();
	/* whoever changed the table, with or without rights on kafka.* */
	kp_begin_as_owner(&saved);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT topic, key_attnums, column_attnums, tombstones, "
							  "  time_format, row_filter_function, format = 'avro', relid, "
							  "  envelope = 'row', mask_attnums, hash_attnums, format = 'json_schema' "
							  "FROM kafka.publication WHERE relid = ANY ($1) "
							  "ORDER BY array_position($1, relid::oid) LIMIT 1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read kafka.publication");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not published", RelationGetRelationName(rel)),
				 errhint("Its trigger was left behind: run kafka_publish() or DROP TRIGGER kafka_publish.")));
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	MemoryContextSwitchTo(pub->context);
	pub->published_relid = DatumGetObjectId(SPI_getbinval(row, desc, 8, &isnull));
	/* locked until the end of the transaction, as a changed table is */
	published = relation_open(pub->published_relid, AccessShareLock);
	pub->natts = RelationGetDescr(published)->natts;
	relation_close(published, NoLock);
	pub->topic = DatumGetTextPCopy(SPI_getbinval(row, desc, 1, &isnull));
	pub->keys = attnums_of(SPI_getbinval(row, desc, 2, &isnull), &pub->nkeys);
	columns = SPI_getbinval(row, desc, 3, &isnull);
	pub->published = palloc0(pub->natts * sizeof(bool));
	if (isnull)
		memset(pub->published, true, pub->natts * sizeof(bool));
	else
	{
		int			count;
		AttrNumber *attnums = attnums_of(columns, &count);

		for (int i = 0; i < count; i++)
			if (attnums[i] >= 1 && attnums[i] <= pub->natts)
				pub->published[attnums[i] - 1] = true;
	}
	pub->tombstones = DatumGetBool(SPI_getbinval(row, desc, 4, &isnull));
	pub->time_format = strcmp(TextDatumGetCString(SPI_getbinval(row, desc, 5, &isnull)),
							  "epoch") == 0 ? KP_TIME_EPOCH : KP_TIME_ISO;
	pub->filter = DatumGetObjectId(SPI_getbinval(row, desc, 6, &isnull));
	if (isnull)
		pub->filter = InvalidOid;
	pub->avro = DatumGetBool(SPI_getbinval(row, desc, 7, &isnull));
	pub->flat = DatumGetBool(SPI_getbinval(row, desc, 9, &isnull));
	pub->connect_key = pub->connect_value = NULL;
	if (DatumGetBool(SPI_getbinval(row, desc, 12, &isnull)))
		pub->connect_key = pub->connect_value = "";	/* made by prepare_columns */
	pub->treatment = palloc0(pub->natts * sizeof(KpTreatment));
	pub->masking = false;
	for (int column = 10; column <= 11; column++)
	{
		Datum		attnums = SPI_getbinval(row, desc, column, &isnull);

		if (!isnull)
			mark_treatment(pub, attnums, column == 10 ? KP_MASKED : KP_HASHED);
	}
	SPI_finish();
	kp_end_as_owner(&saved);
}

/* per attribute: whether it is a key column */
static bool *
key_columns(KpPublication *pub)
{
	bool	   *is_key = palloc0(pub->natts * sizeof(bool));

	for (int k = 0; k < pub->nkeys; k++)
		is_key[pub->keys[k] - 1] = true;
	return is_key;
}

/*
 * The Avro schemas of rel's events: the key columns as .Key, the published
 * columns as .Value inside the .Envelope.  An ERROR names a column whose
 * type has no Avro mapping.
 */
static void
prepare_avro(KpPublication *pub, Relation rel)
{
	bool	   *is_key = key_columns(pub);
	KpAvroSchema *row;

	pub->avro_key = kp_avro_row_schema(rel, pub->encoded_desc, is_key, "Key");
	row = kp_avro_row_schema(rel, pub->encoded_desc, pub->published, "Value");
	pub->avro_value = pub->flat ? kp_avro_flat_schema(rel, row) :
		kp_avro_envelope_schema(rel, row);
	pub->avro_source.version = KP_EXTENSION_VERSION;
	pub->avro_source.name = get_database_name(MyDatabaseId);
	pub->avro_source.db = pub->avro_source.name;
	pub->avro_source.schema = get_namespace_name(RelationGetNamespace(rel));
	pub->avro_source.table = pstrdup(RelationGetRelationName(rel));
	pub->avro_source.partition = pub->relid == pub->published_relid ? NULL :
		get_rel_name(pub->relid);
}

/*
 * The row filter runs as the table's owner: it must be the owner's own
 * function, which the owner may execute.
 */
static void
check_filter(Oid filter, Relation rel)
{
	Oid			owner = RelationGetForm(rel)->relowner;

	if (!pg_proc_ownercheck(filter, owner) ||
		pg_proc_aclcheck(filter, owner, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("row filter of published table \"%s\" is not its owner's to execute",
						RelationGetRelationName(rel)),
				 errdetail("Function %s is owned by another role, or its owner may not execute it.",
						   format_procedure(filter)),
				 errhint("Run kafka_publish() again to make the filter anew.")));
}

/*
 * The Kafka Connect schemas that come before the payload of each key and
 * value, named as Debezium names them: <server>.<schema>.<table>, the
 * database's name as the server's.
 */
static void
prepare_connect(KpPublication *pub, Relation rel)
{
	bool	   *is_key = key_columns(pub);
	char	   *prefix = psprintf("%s.%s.%s", get_database_name(MyDatabaseId),
								  get_namespace_name(RelationGetNamespace(rel)),
								  RelationGetRelationName(rel));

	pub->connect_key = psprintf("{\"schema\":%s,\"payload\":",
								kp_connect_key_schema(pub->encoded_desc, is_key,
													  prefix, pub->time_format));
	pub->connect_value = psprintf("{\"schema\":%s,\"payload\":",
								  kp_connect_value_schema(pub->encoded_desc,
														  pub->published, prefix,
														  pub->time_format, pub->flat));
}

/*
 * The row type events are encoded with: the published table's, but for
 * masked and hashed columns, which are text; and the output functions of
 * the hashed columns' types.
 */
static void
prepare_treatments(KpPublication *pub)
{
	pub->encoded_desc = pub->desc;
	if (!pub->masking)
		return;
	pub->encoded_desc = CreateTupleDescCopy(pub->desc);
	pub->output = palloc0(pub->natts * sizeof(FmgrInfo));
	for (int i = 0; i < pub->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(pub->encoded_desc, i);
		Oid			output;
		bool		varlena;

		if (pub->treatment[i] == KP_AS_IS || attr->attisdropped)
			continue;
		getTypeOutputInfo(attr->atttypid, &output, &varlena);
		fmgr_info_cxt(output, &pub->output[i], pub->context);
		TupleDescInitEntry(pub->encoded_desc, i + 1, NameStr(attr->attname),
						   TEXTOID, -1, 0);
		TupleDescAttr(pub->encoded_desc, i)->attnotnull =
			TupleDescAttr(pub->desc, i)->attnotnull;
	}
}

/*
 * The column encoders, names and "source" constants for the columns of
 * rel, the published table, and how the changed table's rows become its.
 */
static void
prepare_columns(KpPublication *pub, Relation rel, Relation changed)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData source;
	MemoryContext old = MemoryContextSwitchTo(pub->context);

	pub->desc = CreateTupleDescCopyConstr(desc);
	pub->to_published = rel == changed ? NULL :
		convert_tuples_by_name(RelationGetDescr(changed), desc);
	prepare_treatments(pub);

	pub->columns = palloc0(pub->natts * sizeof(KpJsonColumn));
	pub->names = palloc0(pub->natts * sizeof(char *));
	pub->name_lengths = palloc0(pub->natts * sizeof(int));
	pub->values = palloc(pub->natts * sizeof(Datum));
	pub->nulls = palloc(pub->natts * sizeof(bool));
	for (int i = 0; i < pub->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);

		if (attr->attisdropped)
		{
			pub->published[i] = false;
			continue;
		}
		kp_json_column_init(&pub->columns[i],
							TupleDescAttr(pub->encoded_desc, i)->atttypid,
							pub->context);
		/* Connect's json is a string of it */
		if (pub->connect_value != NULL &&
			(pub->columns[i].kind == KP_JSON_JSON || pub->columns[i].kind == KP_JSON_JSONB))
			pub->columns[i].kind = KP_JSON_TEXT;
		pub->names[i] = psprintf("%s:", json_string(NameStr(attr->attname)));
		pub->name_lengths[i] = strlen(pub->names[i]);
	}
	for (int k = 0; k < pub->nkeys; k++)
		if (pub->keys[k] < 1 || pub->keys[k] > pub->natts ||
			TupleDescAttr(desc, pub->keys[k] - 1)->attisdropped)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("a key column of published table \"%s\" was dropped",
							RelationGetRelationName(rel)),
					 errhint("Run kafka_publish() again with the new key_columns.")));
	initStringInfo(&source);
	appendStringInfo(&source,
					 "\"version\":\"%s\",\"connector\":\"postgresql\",\"name\":%s,"
					 "\"db\":%s,\"schema\":%s,\"table\":%s",
					 KP_EXTENSION_VERSION,
					 json_string(get_database_name(MyDatabaseId)),
					 json_string(get_database_name(MyDatabaseId)),
					 json_string(get_namespace_name(RelationGetNamespace(rel))),
					 json_string(RelationGetRelationName(rel)));
	if (pub->relid != pub->published_relid)
		appendStringInfo(&source, ",\"partition\":%s",
						 json_string(get_rel_name(pub->relid)));
	pub->source = source.data;
	pub->source_length = source.len;
	pub->table = json_string(RelationGetRelationName(rel));
	if (pub->connect_value != NULL)
		prepare_connect(pub, rel);
	if (pub->avro)
		prepare_avro(pub, rel);
	if (OidIsValid(pub->filter))
	{
		check_filter(pub->filter, rel);
		/* the function is polymorphic: its call says the argument's type */
		fmgr_info_cxt(pub->filter, &pub->filter_call, pub->context);
		pub->filter_call.fn_expr = (Node *)
			makeFuncExpr(pub->filter, BOOLOID,
						 list_make1(makeNullConst(RelationGetForm(rel)->reltype,
												  -1, InvalidOid)),
						 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
	}
	MemoryContextSwitchTo(old);
}

static KpPublication *
publication_for(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	static KpPublication *last = NULL;	/* a statement's rows share it */
	KpPublication *pub;
	Relation	published;
	bool		found;

	if (last != NULL && last->relid == relid && last->valid)
		return last;
	if (publications == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(KpPublication);
		publications = hash_create("kafka_producer publications", 16, &ctl,
								   HASH_ELEM | HASH_BLOBS);
		CacheRegisterRelcacheCallback(invalidate_publication, (Datum) 0);
	}
	pub = hash_search(publications, &relid, HASH_ENTER, &found);
	if (found && pub->valid)
		return last = pub;
	if (!found)
		pub->context = AllocSetContextCreate(TopMemoryContext,
											 "kafka_producer publication",
											 ALLOCSET_SMALL_SIZES);
	MemoryContextReset(pub->context);
	pub->valid = false;
	pub->published_relid = InvalidOid;
	load_options(pub, rel);
	published = pub->published_relid == relid ? rel :
		relation_open(pub->published_relid, NoLock);
	prepare_columns(pub, published, rel);
	if (published != rel)
		relation_close(published, NoLock);
	pub->valid = true;
	last = pub;
	return pub;
}

/* rel's publication read anew, as a check of its options wants it */
static KpPublication *
reloaded_publication_for(Relation rel)
{
	if (publications != NULL)
		invalidate_publication((Datum) 0, RelationGetRelid(rel));
	return publication_for(rel);
}

/* ---------------------------------------------------------------------
 * Events
 * ---------------------------------------------------------------------
 */

/* a string literal, its length known when compiled */
#define append_literal(out, literal) \
	appendBinaryStringInfo((out), (literal), sizeof(literal) - 1)

/* a StringInfo that becomes a bytea: room for the header first */
static void
init_bytes(StringInfo out)
{
	initStringInfo(out);
	appendStringInfoSpaces(out, VARHDRSZ);
}

static bytea *
finish_bytes(StringInfo out)
{
	if (GetDatabaseEncoding() != PG_UTF8)
	{
		char	   *utf8 = pg_server_to_any(out->data + VARHDRSZ,
											out->len - VARHDRSZ, PG_UTF8);

		if (utf8 != out->data + VARHDRSZ)
		{
			out->len = VARHDRSZ;
			appendStringInfoString(out, utf8);
		}
	}
	SET_VARSIZE(out->data, out->len);
	return (bytea *) out->data;
}

static void
append_row(StringInfo out, KpPublication *pub, TupleDesc desc, HeapTuple tuple)
{
	bool		first = true;

	if (tuple == NULL)
	{
		append_literal(out, "null");
		return;
	}
	/* once, not a column at a time: heap_getattr is slow past a varlena */
	heap_deform_tuple(tuple, desc, pub->values, pub->nulls);
	appendStringInfoCharMacro(out, '{');
	for (int i = 0; i < pub->natts; i++)
	{
		if (!pub->published[i])
			continue;
		if (!first)
			appendStringInfoCharMacro(out, ',');
		first = false;
		appendBinaryStringInfo(out, pub->names[i], pub->name_lengths[i]);
		kp_json_append_value(out, &pub->columns[i], pub->values[i],
							 pub->nulls[i], pub->time_format);
	}
	appendStringInfoCharMacro(out, '}');
}

/* a StringInfo for a JSON key or value, which with a schema starts with it */
static void
init_json(StringInfo out, const char *connect_prefix)
{
	init_bytes(out);
	if (connect_prefix != NULL)
		appendStringInfoString(out, connect_prefix);
}

static bytea *
finish_json(StringInfo out, const char *connect_prefix)
{
	if (connect_prefix != NULL)
		appendStringInfoCharMacro(out, '}');
	return finish_bytes(out);
}

static bytea *
json_key(KpPublication *pub, TupleDesc desc, HeapTuple tuple)
{
	StringInfoData out;

	init_json(&out, pub->connect_key);
	appendStringInfoCharMacro(&out, '{');
	for (int k = 0; k < pub->nkeys; k++)
	{
		int			i = pub->keys[k] - 1;
		bool		isnull;
		Datum		value = heap_getattr(tuple, i + 1, desc, &isnull);

		if (k > 0)
			appendStringInfoCharMacro(&out, ',');
		appendBinaryStringInfo(&out, pub->names[i], pub->name_lengths[i]);
		kp_json_append_value(&out, &pub->columns[i], value, isnull, pub->time_format);
	}
	appendStringInfoCharMacro(&out, '}');
	return finish_json(&out, pub->connect_key);
}

static int64
epoch_ms(TimestampTz ts)
{
	return ts / 1000 + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
}

static void
append_member_int(StringInfo out, const char *name, int64 value)
{
	char		digits[MAXINT8LEN + 1];

	appendBinaryStringInfo(out, name, strlen(name));
	appendBinaryStringInfo(out, digits, pg_lltoa(value, digits));
}

/*
 * The row after the change or, of a delete, before it, with the members
 * Debezium's ExtractNewRecordState adds with add.fields=op,table,source.ts_ms
 * and delete.handling.mode=rewrite.
 */
static bytea *
json_flat_value(KpPublication *pub, TupleDesc desc, HeapTuple before,
				HeapTuple after, char op)
{
	StringInfoData out;

	init_json(&out, pub->connect_value);
	append_row(&out, pub, desc, after ? after : before);
	/* the row's members, then ours */
	out.len--;
	if (out.data[out.len - 1] != '{')
		appendStringInfoCharMacro(&out, ',');
	append_literal(&out, "\"__op\":\"");
	appendStringInfoCharMacro(&out, op);
	append_literal(&out, "\",\"__table\":");
	appendStringInfoString(&out, pub->table);
	append_member_int(&out, ",\"__source_ts_ms\":",
					  epoch_ms(GetCurrentStatementStartTimestamp()));
	appendStringInfoString(&out, op == 'd' ? ",\"__deleted\":\"true\"}" :
						   ",\"__deleted\":\"false\"}");
	return finish_json(&out, pub->connect_value);
}

static bytea *
json_value(KpPublication *pub, TupleDesc desc, HeapTuple before,
		   HeapTuple after, char op)
{
	StringInfoData out;

	if (pub->flat)
		return json_flat_value(pub, desc, before, after, op);
	init_json(&out, pub->connect_value);
	append_literal(&out, "{\"before\":");
	append_row(&out, pub, desc, before);
	append_literal(&out, ",\"after\":");
	append_row(&out, pub, desc, after);
	/* no appendStringInfo: its formatting showed in profiles */
	append_literal(&out, ",\"source\":{");
	appendBinaryStringInfo(&out, pub->source, pub->source_length);
	append_member_int(&out, ",\"ts_ms\":", epoch_ms(GetCurrentStatementStartTimestamp()));
	if (op == 'r')
		append_literal(&out, ",\"snapshot\":\"true\"");
	else
		append_literal(&out, ",\"snapshot\":\"false\"");
	append_member_int(&out, ",\"txId\":", GetTopTransactionId());
	append_member_int(&out, ",\"lsn\":", (int64) GetXLogInsertRecPtr());
	append_literal(&out, ",\"xmin\":null},\"op\":\"");
	appendStringInfoCharMacro(&out, op);
	append_member_int(&out, "\",\"ts_ms\":", epoch_ms(GetCurrentTimestamp()));
	appendStringInfoCharMacro(&out, '}');
	return finish_json(&out, pub->connect_value);
}

static bytea *
event_key(KpPublication *pub, TupleDesc desc, HeapTuple tuple)
{
	if (!pub->avro)
		return json_key(pub, desc, tuple);
	return kp_avro_single_object(pub->avro_key,
								 kp_avro_encode_row(pub->avro_key, desc, tuple,
													KP_SINGLE_OBJECT_HEADER),
								 pub->topic, true);
}

static bytea *
event_value(KpPublication *pub, TupleDesc desc, HeapTuple before,
			HeapTuple after, char op)
{
	KpAvroSource *source = &pub->avro_source;

	if (!pub->avro)
		return json_value(pub, desc, before, after, op);
	source->ts_ms = epoch_ms(GetCurrentStatementStartTimestamp());
	source->txid = GetTopTransactionId();
	source->lsn = (int64) GetXLogInsertRecPtr();
	source->event_ts_ms = epoch_ms(GetCurrentTimestamp());
	return kp_avro_single_object(pub->avro_value,
								 pub->flat ?
								 kp_avro_encode_flat(pub->avro_value, desc,
													 after ? after : before, source,
													 op, KP_SINGLE_OBJECT_HEADER) :
								 kp_avro_encode_event(pub->avro_value, desc, before,
													  after, source, op,
													  KP_SINGLE_OBJECT_HEADER),
								 pub->topic, false);
}

static void
enqueue_event(KpPublication *pub, bytea *key, bytea *value)
{
	KpNewMessage msg;

	msg.topic = pub->topic;
	msg.key = key;
	msg.value = value;
	msg.partition = KP_PARTITION_ANY;
	msg.headers = NULL;
	kp_enqueue_buffered(&msg);
}

/* SHA-256, in hex, of kafka.hash_salt and the text of value. */
static Datum
hashed(KpPublication *pub, int attribute, Datum value)
{
	char	   *text = OutputFunctionCall(&pub->output[attribute], value);
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char		hex[PG_SHA256_DIGEST_LENGTH * 2 + 1];

	if (ctx == NULL ||
		pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (uint8 *) kp_hash_salt, strlen(kp_hash_salt)) < 0 ||
		pg_cryptohash_update(ctx, (uint8 *) text, strlen(text)) < 0 ||
		pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute a SHA-256 hash: %s", pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);
	hex[hex_encode((char *) digest, sizeof(digest), hex)] = '\0';
	return CStringGetTextDatum(hex);
}

/* tuple with its masked and hashed columns replaced, of pub->encoded_desc */
static HeapTuple
masked(KpPublication *pub, HeapTuple tuple)
{
	if (tuple == NULL)
		return NULL;
	heap_deform_tuple(tuple, pub->desc, pub->values, pub->nulls);
	for (int i = 0; i < pub->natts; i++)
	{
		if (pub->treatment[i] == KP_AS_IS || pub->nulls[i])
			continue;
		pub->values[i] = pub->treatment[i] == KP_MASKED ?
			CStringGetTextDatum(KP_MASK_TEXT) : hashed(pub, i, pub->values[i]);
	}
	return heap_form_tuple(pub->encoded_desc, pub->values, pub->nulls);
}

/* An event for one row; a delete is followed by a tombstone if wanted. */
static void
publish_row(KpPublication *pub, TupleDesc desc, HeapTuple before,
			HeapTuple after, char op)
{
	bytea	   *key;

	if (pub->masking)
	{
		before = masked(pub, before);
		after = masked(pub, after);
		desc = pub->encoded_desc;
	}
	key = event_key(pub, desc, after ? after : before);

	enqueue_event(pub, key, event_value(pub, desc, before, after, op));
	if (op == 'd' && pub->tombstones)
		enqueue_event(pub, key, NULL);
}

static bool
keys_equal(KpPublication *pub, TupleDesc desc, HeapTuple a, HeapTuple b)
{
	for (int k = 0; k < pub->nkeys; k++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, pub->keys[k] - 1);
		bool		a_null;
		bool		b_null;
		Datum		a_value = heap_getattr(a, pub->keys[k], desc, &a_null);
		Datum		b_value = heap_getattr(b, pub->keys[k], desc, &b_null);

		if (a_null != b_null ||
			(!a_null && !datum_image_eq(a_value, b_value, attr->attbyval,
										attr->attlen)))
			return false;
	}
	return true;
}

static bool
passes_filter(KpPublication *pub, TupleDesc desc, HeapTuple tuple)
{
	if (!OidIsValid(pub->filter))
		return true;
	return DatumGetBool(FunctionCall1(&pub->filter_call,
									  heap_copy_tuple_as_datum(tuple, desc)));
}

/*
 * An update: "u", or, when the key changed, a delete of the old key and a
 * create of the new one, as Debezium does.  With a row filter, a row that
 * leaves it is deleted and one that enters it is created.
 */
static void
publish_update(KpPublication *pub, TupleDesc desc, HeapTuple before,
			   HeapTuple after)
{
	bool		was_in = passes_filter(pub, desc, before);
	bool		is_in = passes_filter(pub, desc, after);

	if (was_in && is_in && keys_equal(pub, desc, before, after))
		publish_row(pub, desc, before, after, 'u');
	else
	{
		if (was_in)
			publish_row(pub, desc, before, NULL, 'd');
		if (is_in)
			publish_row(pub, desc, NULL, after, 'c');
	}
}

/* A partition's row as a row of its published ancestor. */
static HeapTuple
as_published(KpPublication *pub, HeapTuple tuple)
{
	return pub->to_published ? execute_attr_map_tuple(tuple, pub->to_published) :
		tuple;
}

/* A created or deleted row, its event if it passes the row filter. */
static void
publish_one(KpPublication *pub, HeapTuple before, HeapTuple after, char op)
{
	if (passes_filter(pub, pub->desc, before ? before : after))
		publish_row(pub, pub->desc, before, after, op);
}

/* A truncate has no row: a flat publication leaves it out. */
static void
publish_truncate(KpPublication *pub, TupleDesc desc)
{
	if (pub->flat)
		return;
	enqueue_event(pub, NULL, event_value(pub, desc, NULL, NULL, 't'));
}

/*
 * AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW, and FOR EACH STATEMENT
 * (to write the statement's events), and AFTER TRUNCATE, on a published
 * table.
 */
Datum
kafka_publish_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TriggerEvent event;
	KpPublication *pub;
	TupleDesc	desc;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function kafka.publish_trigger() must be fired AFTER a change"),
				 errhint("Attach it with kafka_publish().")));
	event = trigdata->tg_event;
	pub = publication_for(trigdata->tg_relation);
	desc = pub->desc;
	if (TRIGGER_FIRED_BY_TRUNCATE(event))
		publish_truncate(pub, desc);
	else if (!TRIGGER_FIRED_FOR_ROW(event))
		kp_enqueue_flush();		/* after the statement's row triggers */
	else if (TRIGGER_FIRED_BY_INSERT(event))
		publish_one(pub, NULL, as_published(pub, trigdata->tg_trigtuple), 'c');
	else if (TRIGGER_FIRED_BY_DELETE(event))
		publish_one(pub, as_published(pub, trigdata->tg_trigtuple), NULL, 'd');
	else
		publish_update(pub, desc, as_published(pub, trigdata->tg_trigtuple),
					   as_published(pub, trigdata->tg_newtuple));
	return PointerGetDatum(NULL);
}

/*
 * kafka.check_publication(tbl regclass): prepares a publication's
 * encoders once, so that kafka_publish() reports what would fail at the
 * first change.
 */
Datum
kafka_check_publication(PG_FUNCTION_ARGS)
{
	Relation	rel = table_open(PG_GETARG_OID(0), AccessShareLock);
	KpPublication *pub;

	/* a database at an older version is checked at its first change after the update */
	if (!kp_extension_is_current(kp_extension_version()))
	{
		table_close(rel, AccessShareLock);
		PG_RETURN_VOID();
	}
	pub = reloaded_publication_for(rel);
	for (int i = 0; i < pub->natts; i++)
		if (pub->treatment[i] == KP_HASHED && kp_hash_salt[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("kafka.hash_salt must be set to hash columns"),
					 errdetail("Without a salt, a hash of a short value is found by hashing every candidate."),
					 errhint("Set kafka.hash_salt to a long random secret in postgresql.conf and reload.")));
	table_close(rel, AccessShareLock);
	PG_RETURN_VOID();
}

/* Each row of rel, a table with storage, as an "r" event; returns how many. */
static int64
snapshot_table(Relation rel, Snapshot snapshot)
{
	KpPublication *pub = publication_for(rel);
	TableScanDesc scan = table_beginscan(rel, snapshot, 0, NULL);
	HeapTuple	tuple;
	int64		count = 0;

	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		HeapTuple	row = as_published(pub, tuple);

		CHECK_FOR_INTERRUPTS();
		if (!passes_filter(pub, pub->desc, row))
			continue;
		publish_row(pub, pub->desc, NULL, row, 'r');
		count++;
	}
	table_endscan(scan);
	return count;
}

/* WARNING unless the registry would take schema under topic's subject. */
static void
check_registry(text *topic, bool is_key, KpAvroSchema *schema)
{
	char		subject[KP_SUBJECT_MAX];
	char	   *why;

	kp_avro_subject(subject, text_to_cstring(topic), is_key);
	if (!kp_registry_compatible(subject, kp_avro_schema_json(schema), &why))
		ereport(WARNING,
				(errmsg("the schema registry would refuse the new schema of subject \"%s\"",
						subject),
				 errdetail("The registry says: %s", why),
				 errhint("Change the table back, or the subject's compatibility level, before the table's next change: its events would fail.")));
}

/*
 * kafka.check_schema_change(tbl regclass), after ALTER TABLE of a published
 * table: with a schema registry, asks it whether it would take the Avro
 * schemas of the table's events as they now are.
 */
Datum
kafka_check_schema_change(PG_FUNCTION_ARGS)
{
	Relation	rel = table_open(PG_GETARG_OID(0), AccessShareLock);
	KpPublication *pub;

	if (kp_registry_enabled())
	{
		pub = reloaded_publication_for(rel);
		if (pub->avro)
		{
			check_registry(pub->topic, true, pub->avro_key);
			check_registry(pub->topic, false, pub->avro_value);
		}
	}
	table_close(rel, AccessShareLock);
	PG_RETURN_VOID();
}

/*
 * A row of the published table, read by a snapshot in rel (the table, or
 * the partition it is in), as an "r" event if it passes the row filter.
 * Returns whether it did.
 */
bool
kp_publish_snapshot_row(Relation rel, HeapTuple row)
{
	KpPublication *pub = publication_for(rel);

	if (!passes_filter(pub, pub->desc, row))
		return false;
	publish_row(pub, pub->desc, NULL, row, 'r');
	return true;
}

/*
 * kafka.snapshot_now(tbl regclass) returns the number of rows enqueued
 *
 * Every row of a published table without a primary key, or of each
 * partition of a partitioned one, as an "r" event, in the caller's
 * transaction.  The tables are locked against writers until the
 * transaction ends, then read with a snapshot taken after the locks: a
 * change committed before is in the snapshot, one made after waits for the
 * lock and comes after the snapshot's events.
 */
Datum
kafka_snapshot_now(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	List	   *tables;
	ListCell   *lc;
	Snapshot	snapshot;
	int64		count = 0;

	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot snapshot a published table in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("It reads the table with a snapshot taken after locking it.")));
	rel = table_open(relid, ShareLock);
	(void) publication_for(rel);
	/* a partitioned table's partitions are its rows; inheritance children are not */
	tables = rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE ?
		find_all_inheritors(relid, ShareLock, NULL) : list_make1_oid(relid);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	foreach(lc, tables)
	{
		Relation	table;

		if (get_rel_relkind(lfirst_oid(lc)) != RELKIND_RELATION)
			continue;
		table = table_open(lfirst_oid(lc), NoLock);
		count += snapshot_table(table, snapshot);
		table_close(table, NoLock);
	}
	kp_enqueue_flush();
	UnregisterSnapshot(snapshot);
	table_close(rel, NoLock);
	PG_RETURN_INT64(count);
}
