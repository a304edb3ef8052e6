/*-------------------------------------------------------------------------
 *
 * publish_admin.c
 *	  kafka_publish(), kafka_unpublish(), kafka_snapshot() and
 *	  kafka_snapshot_cancel(): who may publish which table.
 *
 *	  Publishing is a change to a table, as ALTER TABLE is: its owner (or a
 *	  member of the owning role, or a superuser) may do it, given EXECUTE
 *	  on the function, and nobody else; nobody needs rights on kafka.*.
 *	  These entry points check ownership as the caller, then do the work
 *	  (kafka.publish_as_owner, kafka.unpublish_as_owner) as the owner of
 *	  the extension's schema.  The work never runs the caller's code: the
 *	  row filter is a function owned by the table's owner, SECURITY DEFINER
 *	  with a fixed search_path, so it runs with the table owner's rights
 *	  whoever publishes or writes the table.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "kafka_producer.h"

PG_FUNCTION_INFO_V1(kafka_publish);
PG_FUNCTION_INFO_V1(kafka_unpublish);
PG_FUNCTION_INFO_V1(kafka_snapshot);
PG_FUNCTION_INFO_V1(kafka_snapshot_cancel);

/* ERROR unless the current user may alter table relid. */
static void
check_table_owner(Oid relid)
{
	char		relkind = get_rel_relkind(relid);

	if (relkind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(relkind),
					   get_rel_name(relid));
}

/*
 * Runs query with fcinfo's arguments, of types argtypes, as the owner of
 * kafka.*; returns the bigint it returns, or 0.
 */
static int64
run_as_owner(const char *query, FunctionCallInfo fcinfo, Oid *argtypes)
{
	int64		result = 0;
	bool		isnull;
	int			nargs = PG_NARGS();
	Datum		values[FUNC_MAX_ARGS];
	char		nulls[FUNC_MAX_ARGS];
	KpSavedUser saved;

	for (int i = 0; i < nargs; i++)
	{
		values[i] = PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	kp_begin_as_owner(&saved);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(query, nargs, argtypes, values, nulls, false, 0) !=
		SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", query);
	if (SPI_tuptable->tupdesc->natts == 1 &&
		TupleDescAttr(SPI_tuptable->tupdesc, 0)->atttypid == INT8OID)
		result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	kp_end_as_owner(&saved);
	return result;
}

/*
 * kafka_publish(tbl regclass, topic text, format text, key_columns text[],
 *				 columns text[], snapshot boolean, "where" text,
 *				 tombstones boolean, time_format text) returns void
 */
Datum
kafka_publish(PG_FUNCTION_ARGS)
{
	Oid			argtypes[] = {REGCLASSOID, TEXTOID, TEXTOID, TEXTARRAYOID,
		TEXTARRAYOID, BOOLOID, TEXTOID, BOOLOID, TEXTOID, TEXTOID, TEXTARRAYOID,
	TEXTARRAYOID};

	Assert(PG_NARGS() == lengthof(argtypes));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table must not be null")));
	check_table_owner(PG_GETARG_OID(0));
	run_as_owner("SELECT kafka.publish_as_owner($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
				 fcinfo, argtypes);
	if (!PG_ARGISNULL(5) && PG_GETARG_BOOL(5))
		kp_shmem_generation_advance_at_commit(KP_GENERATION_SNAPSHOT);
	PG_RETURN_VOID();
}

/* kafka_unpublish(tbl regclass) returns void */
Datum
kafka_unpublish(PG_FUNCTION_ARGS)
{
	Oid			argtypes[] = {REGCLASSOID};

	check_table_owner(PG_GETARG_OID(0));
	run_as_owner("SELECT kafka.unpublish_as_owner($1)", fcinfo, argtypes);
	PG_RETURN_VOID();
}

/*
 * Checks condition, a row filter for tbl, as its caller (who owns tbl):
 * the worker runs it later as the table's owner.
 */
static void
check_condition(Oid relid, text *condition)
{
	/* as the worker will run it: on lines of its own, one statement */
	char	   *query = psprintf("SELECT FROM %s WHERE (\n%s\n) LIMIT 0",
								 quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
															get_rel_name(relid)),
								 text_to_cstring(condition));
	SPIPlanPtr	plan;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = SPI_prepare(query, 0, NULL);
	if (plan == NULL || SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not check the condition of a snapshot: %s",
			 SPI_result_code_string(SPI_result));
	SPI_finish();
}

/*
 * kafka_snapshot(tbl regclass, "where" text) returns the snapshot's id in
 * kafka.snapshots: the worker reads the rows in the background once the
 * transaction commits.
 */
Datum
kafka_snapshot(PG_FUNCTION_ARGS)
{
	Oid			argtypes[] = {REGCLASSOID, TEXTOID};
	int64		id;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table must not be null")));
	check_table_owner(PG_GETARG_OID(0));
	if (!PG_ARGISNULL(1))
		check_condition(PG_GETARG_OID(0), PG_GETARG_TEXT_PP(1));
	id = run_as_owner("SELECT kafka.start_snapshot($1, $2)", fcinfo, argtypes);
	kp_shmem_generation_advance_at_commit(KP_GENERATION_SNAPSHOT);
	PG_RETURN_INT64(id);
}

/* kafka_snapshot_cancel(tbl regclass) returns how many it canceled */
Datum
kafka_snapshot_cancel(PG_FUNCTION_ARGS)
{
	Oid			argtypes[] = {REGCLASSOID};

	check_table_owner(PG_GETARG_OID(0));
	PG_RETURN_INT64(run_as_owner("SELECT kafka.cancel_snapshots($1)", fcinfo,
								 argtypes));
}
