/*-------------------------------------------------------------------------
 *
 * tables.c
 *	  Access to the extension's tables, shared by the backends that
 *	  enqueue and the worker that delivers.
 *
 *	  The tables are found in the extension's schema and checked against
 *	  the column counts this library knows; rows are written with heap
 *	  and index functions directly, without the executor, because one is
 *	  written per message.  Bookkeeping that users without rights on
 *	  kafka.* cause runs as the schema's owner.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/brin_internal.h"
#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "kafka_producer.h"

Oid
kp_relation_oid(const char *name)
{
	Oid			nsp = get_namespace_oid(KP_SCHEMA_NAME, false);
	Oid			relid = get_relname_relid(name, nsp);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s.%s\" of extension \"%s\" is missing",
						KP_SCHEMA_NAME, name, KP_EXTENSION_NAME),
				 errhint("Drop and create the extension again.")));
	return relid;
}

static const char *const outbox_columns[OUTBOX_NATTS] = {
	[OUTBOX_ID] = "id",
	[OUTBOX_TOPIC] = "topic",
	[OUTBOX_KEY] = "key",
	[OUTBOX_VALUE] = "value",
	[OUTBOX_HEADERS] = "headers",
	[OUTBOX_PARTITION] = "partition",
	[OUTBOX_ATTEMPTS] = "attempts",
	[OUTBOX_LAST_ERROR] = "last_error",
	[OUTBOX_ENQUEUED_AT] = "enqueued_at",
	[OUTBOX_ENQUEUED_BY] = "enqueued_by",
};

static const char *const batch_columns[BATCH_NATTS] = {
	[BATCH_FIRST_ID] = "first_id",
	[BATCH_TOPIC] = "topic",
	[BATCH_KEYS] = "keys",
	[BATCH_VALUES] = "values",
	[BATCH_ENQUEUED_AT] = "enqueued_at",
	[BATCH_ENQUEUED_BY] = "enqueued_by",
};

/* Whether rel's columns are columns[0 .. count - 1], in this order. */
static bool
has_columns(Relation rel, const char *const *columns, int count)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (desc->natts != count)
		return false;
	for (int i = 0; i < count; i++)
		if (strcmp(NameStr(TupleDescAttr(desc, i)->attname), columns[i]) != 0)
			return false;
	return true;
}

/*
 * ERROR if this database's extension is older than the library, which does
 * not know its tables' shape.
 */
void
kp_extension_check_current(void)
{
	char	   *version = kp_extension_version();

	if (version != NULL && !kp_extension_is_current(version))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"%s\" must be updated to version %s",
						KP_EXTENSION_NAME, KP_EXTENSION_VERSION),
				 errdetail("This database has version %s of its SQL objects; the server runs version %s of its library.",
						   version, KP_EXTENSION_VERSION),
				 errhint("Run ALTER EXTENSION %s UPDATE.", KP_EXTENSION_NAME)));
}

/*
 * Opens kafka.<name>, checking that its columns are columns[0 .. count -
 * 1], the shape the library writes: they are not in a database whose
 * extension is older than the library.
 */
Relation
kp_table_open(const char *name, const char *const *columns, int count,
			  LOCKMODE lockmode)
{
	Relation	rel = table_open(kp_relation_oid(name), lockmode);

	if (has_columns(rel, columns, count))
		return rel;
	kp_extension_check_current();
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("relation \"%s.%s\" of extension \"%s\" was altered",
					KP_SCHEMA_NAME, name, KP_EXTENSION_NAME),
			 errdetail("Its columns are not those the library writes."),
			 errhint("Drop and create the extension again.")));
	return NULL;				/* not reached */
}

/*
 * Acts as the owner of the extension's schema, with only pg_catalog on the
 * search_path, until kp_end_as_owner(): for the extension's bookkeeping in
 * a trigger or function that users without rights on kafka.* may run.
 */
void
kp_begin_as_owner(KpSavedUser *saved)
{
	Oid			nsp = get_namespace_oid(KP_SCHEMA_NAME, false);
	HeapTuple	tuple = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for namespace %u", nsp);
	owner = ((Form_pg_namespace) GETSTRUCT(tuple))->nspowner;
	ReleaseSysCache(tuple);
	GetUserIdAndSecContext(&saved->userid, &saved->sec_context);
	SetUserIdAndSecContext(owner, saved->sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	saved->guc_nest_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

void
kp_end_as_owner(KpSavedUser *saved)
{
	AtEOXact_GUC(false, saved->guc_nest_level);
	SetUserIdAndSecContext(saved->userid, saved->sec_context);
}

Relation
kp_outbox_open(LOCKMODE lockmode)
{
	return kp_table_open("outbox", outbox_columns, OUTBOX_NATTS, lockmode);
}

Relation
kp_outbox_batch_open(LOCKMODE lockmode)
{
	return kp_table_open("outbox_batch", batch_columns, BATCH_NATTS, lockmode);
}

/*
 * Whether index is a BRIN index of minmax operator classes over 64-bit
 * integers and timestamps: a block range's summary is then the least and
 * greatest value of each column, and the tuples of a heap page that hold
 * those give it the summary all of the page's tuples would.
 */
static bool
is_int64_minmax_brin(Relation index)
{
	if (index->rd_rel->relam != BRIN_AM_OID)
		return false;
	for (int k = 0; k < IndexRelationGetNumberOfKeyAttributes(index); k++)
	{
		Oid			type = TupleDescAttr(RelationGetDescr(index), k)->atttypid;

		if ((type != INT8OID && type != TIMESTAMPTZOID) ||
			index_getprocid(index, k + 1, BRIN_PROCNUM_OPCINFO) != F_BRIN_MINMAX_OPCINFO)
			return false;
	}
	return true;
}

void
kp_indexes_open(Relation rel, KpIndexes *indexes)
{
	List	   *oids = RelationGetIndexList(rel);
	int			i = 0;
	ListCell   *lc;

	indexes->count = list_length(oids);
	indexes->indexes = palloc(indexes->count * sizeof(Relation));
	indexes->infos = palloc(indexes->count * sizeof(IndexInfo *));
	indexes->page_extremes = palloc(indexes->count * sizeof(bool));
	foreach(lc, oids)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);
		IndexInfo  *info = BuildIndexInfo(index);

		if (info->ii_Expressions != NIL || info->ii_Predicate != NIL)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("index \"%s\" on %s.%s is not supported",
							RelationGetRelationName(index), KP_SCHEMA_NAME,
							RelationGetRelationName(rel)),
					 errdetail("The extension writes its tables without the executor, and cannot compute expression or partial indexes."),
					 errhint("Drop the index.")));
		indexes->indexes[i] = index;
		indexes->infos[i] = info;
		indexes->page_extremes[i] = is_int64_minmax_brin(index);
		i++;
	}
	list_free(oids);
}

/* Adds the heap tuple at tid, whose columns are values, to index i. */
static void
index_insert_one(KpIndexes *indexes, int i, Relation rel, ItemPointer tid,
				 Datum *values, bool *nulls)
{
	IndexInfo  *info = indexes->infos[i];
	Datum		index_values[INDEX_MAX_KEYS];
	bool		index_nulls[INDEX_MAX_KEYS];

	for (int k = 0; k < info->ii_NumIndexAttrs; k++)
	{
		AttrNumber	attnum = info->ii_IndexAttrNumbers[k];

		index_values[k] = values[attnum - 1];
		index_nulls[k] = nulls[attnum - 1];
	}
	index_insert(indexes->indexes[i], index_values, index_nulls, tid, rel,
				 info->ii_Unique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
				 false, info);
}

/* Adds the heap tuple at tid, whose columns are values, to every index. */
void
kp_indexes_insert(KpIndexes *indexes, Relation rel, ItemPointer tid,
				  Datum *values, bool *nulls)
{
	for (int i = 0; i < indexes->count; i++)
		index_insert_one(indexes, i, rel, tid, values, nulls);
}

/*
 * Adds to page_extremes index i the tuples slots[0 .. count - 1] of one
 * heap page that hold the least or greatest value of a column, or its
 * first NULL, and the page's first tuple, whose insertion may ask for the
 * previous block range to be summarized (autosummarize).
 */
static void
index_insert_page_extremes(KpIndexes *indexes, int i, Relation rel,
						   TupleTableSlot **slots, int count)
{
	IndexInfo  *info = indexes->infos[i];
	bool	   *chosen = palloc0(count * sizeof(bool));

	for (int k = 0; k < info->ii_NumIndexAttrs; k++)
	{
		int			column = info->ii_IndexAttrNumbers[k] - 1;
		int			least = -1;
		int			greatest = -1;
		int			null = -1;

		for (int j = 0; j < count; j++)
		{
			int64		value = DatumGetInt64(slots[j]->tts_values[column]);

			if (slots[j]->tts_isnull[column])
				null = null < 0 ? j : null;
			else if (least < 0)
				least = greatest = j;
			else if (value < DatumGetInt64(slots[least]->tts_values[column]))
				least = j;
			else if (value > DatumGetInt64(slots[greatest]->tts_values[column]))
				greatest = j;
		}
		if (least >= 0)
			chosen[least] = chosen[greatest] = true;
		if (null >= 0)
			chosen[null] = true;
	}
	for (int j = 0; j < count; j++)
		if (chosen[j] || ItemPointerGetOffsetNumber(&slots[j]->tts_tid) == FirstOffsetNumber)
			index_insert_one(indexes, i, rel, &slots[j]->tts_tid,
							 slots[j]->tts_values, slots[j]->tts_isnull);
	pfree(chosen);
}

/*
 * Adds the heap tuples in slots[0 .. count - 1], just written and with all
 * their columns in the slots, to every index.  A minmax BRIN index over
 * 64-bit values gets only each heap page's extremes: the same summaries,
 * and kafka.delivered's BRIN took a seventh of the worker's time when
 * every delivery record went in (PostgreSQL 15 reads the index's metapage
 * for each).
 */
void
kp_indexes_insert_chunk(KpIndexes *indexes, Relation rel,
						TupleTableSlot **slots, int count)
{
	for (int i = 0; i < indexes->count; i++)
	{
		int			first = 0;

		if (!indexes->page_extremes[i])
		{
			for (int j = 0; j < count; j++)
				index_insert_one(indexes, i, rel, &slots[j]->tts_tid,
								 slots[j]->tts_values, slots[j]->tts_isnull);
			continue;
		}
		for (int j = 1; j <= count; j++)
		{
			if (j < count && ItemPointerGetBlockNumber(&slots[j]->tts_tid) ==
				ItemPointerGetBlockNumber(&slots[first]->tts_tid))
				continue;
			index_insert_page_extremes(indexes, i, rel, slots + first, j - first);
			first = j;
		}
	}
}

void
kp_indexes_close(KpIndexes *indexes)
{
	for (int i = 0; i < indexes->count; i++)
		index_close(indexes->indexes[i], RowExclusiveLock);
}

/* The extension's version in this database; NULL where it is not created. */
char *
kp_extension_version(void)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	char	   *version = NULL;

	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum(KP_EXTENSION_NAME));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		datum = heap_getattr(tuple, Anum_pg_extension_extversion,
										 RelationGetDescr(rel), &isnull);

		version = TextDatumGetCString(datum);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * Whether the extension is created in this database, at the version of
 * its SQL objects that this library works with.
 */
bool
kp_extension_ready(void)
{
	return kp_extension_is_current(kp_extension_version());
}

/* Whether version, as kp_extension_version() gives it, is this library's. */
bool
kp_extension_is_current(const char *version)
{
	return version != NULL && strcmp(version, KP_EXTENSION_VERSION) == 0;
}

/* Forms and inserts a row of rel; its position in *tid. */
void
kp_insert_row(Relation rel, KpIndexes *indexes, Datum *values, bool *nulls,
			  ItemPointer tid)
{
	HeapTuple	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);

	simple_heap_insert(rel, tuple);
	kp_indexes_insert(indexes, rel, &tuple->t_self, values, nulls);
	if (tid != NULL)
		*tid = tuple->t_self;
	heap_freetuple(tuple);
}

Datum
kp_datum_array(Datum *elements, int count, Oid element_type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(element_type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(elements, count, element_type,
										   typlen, typbyval, typalign));
}
