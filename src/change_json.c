/*-------------------------------------------------------------------------
 *
 * change_json.c
 *	  PostgreSQL values as JSON for change events, exactly: integers and
 *	  booleans as JSON numbers and booleans, numeric as a string (never a
 *	  lossy double), bytea as base64, json and jsonb embedded, arrays as
 *	  arrays, dates and times in ISO 8601 (timestamptz in UTC) or, on
 *	  request, in Debezium's epoch units; anything else as its text.
 *
 *	  A column's encoding is chosen once per relation version
 *	  (kp_json_column_init) and applied per row (kp_json_append_value).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/base64.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "change_json.h"

static KpJsonKind
kind_of(Oid typid)
{
	switch (typid)
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
			return KP_JSON_INTEGER;
		case FLOAT4OID:
		case FLOAT8OID:
			return KP_JSON_FLOAT;
		case BOOLOID:
			return KP_JSON_BOOL;
		case TEXTOID:
		case VARCHAROID:
			return KP_JSON_STRING;
		case NUMERICOID:
			return KP_JSON_NUMERIC;
		case BYTEAOID:
			return KP_JSON_BYTEA;
		case JSONOID:
			return KP_JSON_JSON;
		case JSONBOID:
			return KP_JSON_JSONB;
		case DATEOID:
			return KP_JSON_DATE;
		case TIMEOID:
			return KP_JSON_TIME;
		case TIMESTAMPOID:
			return KP_JSON_TIMESTAMP;
		case TIMESTAMPTZOID:
			return KP_JSON_TIMESTAMPTZ;
		default:
			return KP_JSON_TEXT;
	}
}

/* Chooses how values of typid are written; domains are their base type. */
void
kp_json_column_init(KpJsonColumn *column, Oid typid, MemoryContext mcxt)
{
	Oid			base = getBaseType(typid);
	Oid			element = get_element_type(base);
	Oid			output;
	bool		isvarlena;

	memset(column, 0, sizeof(*column));
	if (OidIsValid(element))
	{
		column->kind = KP_JSON_ARRAY;
		column->element = MemoryContextAlloc(mcxt, sizeof(KpJsonColumn));
		kp_json_column_init(column->element, element, mcxt);
		column->element_type = getBaseType(element);
		get_typlenbyvalalign(element, &column->elmlen, &column->elmbyval,
							 &column->elmalign);
		return;
	}
	column->kind = kind_of(base);
	column->typid = base;
	getTypeOutputInfo(base, &output, &isvarlena);
	fmgr_info_cxt(output, &column->output, mcxt);
}

/* the characters with a short escape in JSON, and their escapes' letters */
#define JSON_ESCAPED "\b\f\n\r\t\"\\"
#define JSON_ESCAPES "bfnrt\"\\"

/*
 * str[0 .. len - 1] as a JSON string, escaped as escape_json() does, but
 * a run of characters that need no escaping at a time: they are most.
 */
static void
append_escaped(StringInfo out, const char *str, int len)
{
	const char *end = str + len;
	const char *escaped;

	appendStringInfoCharMacro(out, '"');
	while (str < end)
	{
		const char *run = str;

		while (str < end && (unsigned char) *str >= ' ' && *str != '"' &&
			   *str != '\\')
			str++;
		appendBinaryStringInfo(out, run, str - run);
		if (str == end)
			break;
		escaped = *str != '\0' ? strchr(JSON_ESCAPED, *str) : NULL;
		if (escaped != NULL)
		{
			appendStringInfoCharMacro(out, '\\');
			appendStringInfoCharMacro(out, JSON_ESCAPES[escaped - JSON_ESCAPED]);
		}
		else
			appendStringInfo(out, "\\u%04x", (int) *str);
		str++;
	}
	appendStringInfoCharMacro(out, '"');
}

static void
append_text(StringInfo out, KpJsonColumn *column, Datum value)
{
	char	   *text = OutputFunctionCall(&column->output, value);

	append_escaped(out, text, strlen(text));
}

/* text or varchar, without its output function's copy */
static void
append_string(StringInfo out, Datum value)
{
	text	   *string = DatumGetTextPP(value);

	append_escaped(out, VARDATA_ANY(string), VARSIZE_ANY_EXHDR(string));
}

static void
append_bytea(StringInfo out, Datum value)
{
	bytea	   *bytes = DatumGetByteaPP(value);
	int			len = VARSIZE_ANY_EXHDR(bytes);
	int			encoded_len = pg_b64_enc_len(len);

	appendStringInfoChar(out, '"');
	enlargeStringInfo(out, encoded_len + 2);
	encoded_len = pg_b64_encode(VARDATA_ANY(bytes), len, out->data + out->len,
								encoded_len);
	if (encoded_len < 0)
		elog(ERROR, "could not encode bytea as base64");
	out->len += encoded_len;
	out->data[out->len] = '\0';
	appendStringInfoChar(out, '"');
}

/* a float as a JSON number, or as a string for NaN and infinities */
static void
append_float(StringInfo out, KpJsonColumn *column, Datum value)
{
	char	   *text = OutputFunctionCall(&column->output, value);

	if (strcmp(text, "NaN") == 0 || strstr(text, "Infinity") != NULL)
		escape_json(out, text);
	else
		appendStringInfoString(out, text);
}

/* a string that needs no escaping: digits, signs, colons, dots, letters */
static void
append_quoted(StringInfo out, const char *str)
{
	appendStringInfoChar(out, '"');
	appendStringInfoString(out, str);
	appendStringInfoChar(out, '"');
}

static void
append_date(StringInfo out, DateADT date, KpTimeFormat format)
{
	struct pg_tm tm;
	char		buf[MAXDATELEN + 1];

	if (format == KP_TIME_EPOCH && !DATE_NOT_FINITE(date))
	{
		appendStringInfo(out, "%d", date + (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE));
		return;
	}
	if (DATE_NOT_FINITE(date))
	{
		escape_json(out, DATE_IS_NOBEGIN(date) ? "-infinity" : "infinity");
		return;
	}
	j2date(date + POSTGRES_EPOCH_JDATE, &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
	EncodeDateOnly(&tm, USE_XSD_DATES, buf);
	append_quoted(out, buf);
}

static void
append_time(StringInfo out, TimeADT time, KpTimeFormat format)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char		buf[MAXDATELEN + 1];

	if (format == KP_TIME_EPOCH)
	{
		appendStringInfo(out, INT64_FORMAT, (int64) time);
		return;
	}
	time2tm(time, &tm, &fsec);
	EncodeTimeOnly(&tm, fsec, false, 0, USE_XSD_DATES, buf);
	append_quoted(out, buf);
}

/*
 * A timestamp in ISO 8601 (with Z when it is a timestamptz: always UTC),
 * or in microseconds since the Unix epoch for a timestamp without time
 * zone in Debezium's units; Debezium writes timestamptz as an ISO string
 * in both.
 */
static void
append_timestamp(StringInfo out, Timestamp ts, bool utc, KpTimeFormat format)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char		buf[MAXDATELEN + 2];

	if (TIMESTAMP_NOT_FINITE(ts))
	{
		escape_json(out, TIMESTAMP_IS_NOBEGIN(ts) ? "-infinity" : "infinity");
		return;
	}
	if (format == KP_TIME_EPOCH && !utc)
	{
		appendStringInfo(out, INT64_FORMAT,
						 ts + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY);
		return;
	}
	if (timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	EncodeDateTime(&tm, fsec, false, 0, NULL, USE_XSD_DATES, buf);
	if (utc)
		strcat(buf, "Z");
	append_quoted(out, buf);
}

/* The elements of dimension dim on, from *next on, as nested JSON arrays. */
static void
append_dimension(StringInfo out, KpJsonColumn *column, int ndims, int *dims,
				 int dim, Datum *elements, bool *nulls, int *next,
				 KpTimeFormat format)
{
	appendStringInfoChar(out, '[');
	for (int i = 0; i < dims[dim]; i++)
	{
		if (i > 0)
			appendStringInfoChar(out, ',');
		if (dim + 1 < ndims)
			append_dimension(out, column, ndims, dims, dim + 1, elements, nulls,
							 next, format);
		else
		{
			kp_json_append_value(out, column->element, elements[*next],
								 nulls[*next], format);
			(*next)++;
		}
	}
	appendStringInfoChar(out, ']');
}

static void
append_array(StringInfo out, KpJsonColumn *column, Datum value,
			 KpTimeFormat format)
{
	ArrayType  *array = DatumGetArrayTypeP(value);
	Datum	   *elements;
	bool	   *nulls;
	int			count;
	int			next = 0;

	if (ARR_NDIM(array) == 0)
	{
		appendStringInfoString(out, "[]");
		return;
	}
	deconstruct_array(array, ARR_ELEMTYPE(array), column->elmlen,
					  column->elmbyval, column->elmalign, &elements, &nulls,
					  &count);
	append_dimension(out, column, ARR_NDIM(array), ARR_DIMS(array), 0,
					 elements, nulls, &next, format);
}

/* an integer as its digits, without the output function's palloc */
static void
append_integer(StringInfo out, Oid typid, Datum value)
{
	int64		number;

	switch (typid)
	{
		case INT2OID:
			number = DatumGetInt16(value);
			break;
		case INT4OID:
			number = DatumGetInt32(value);
			break;
		case OIDOID:
			number = DatumGetObjectId(value);
			break;
		default:
			number = DatumGetInt64(value);
			break;
	}
	enlargeStringInfo(out, MAXINT8LEN + 1);
	out->len += pg_lltoa(number, out->data + out->len);
}

/* Appends one value, or null. */
void
kp_json_append_value(StringInfo out, KpJsonColumn *column, Datum value,
					 bool isnull, KpTimeFormat format)
{
	if (isnull)
	{
		appendStringInfoString(out, "null");
		return;
	}
	switch (column->kind)
	{
		case KP_JSON_INTEGER:
			append_integer(out, column->typid, value);
			break;
		case KP_JSON_BOOL:
			appendStringInfoString(out, DatumGetBool(value) ? "true" : "false");
			break;
		case KP_JSON_FLOAT:
			append_float(out, column, value);
			break;
		case KP_JSON_TEXT:
			append_text(out, column, value);
			break;
		case KP_JSON_STRING:
			append_string(out, value);
			break;
		case KP_JSON_NUMERIC:
			append_quoted(out, OutputFunctionCall(&column->output, value));
			break;
		case KP_JSON_BYTEA:
			append_bytea(out, value);
			break;
		case KP_JSON_JSON:
			appendStringInfoString(out, OutputFunctionCall(&column->output, value));
			break;
		case KP_JSON_JSONB:
			{
				Jsonb	   *jb = DatumGetJsonbP(value);

				(void) JsonbToCString(out, &jb->root, VARSIZE(jb));
			}
			break;
		case KP_JSON_DATE:
			append_date(out, DatumGetDateADT(value), format);
			break;
		case KP_JSON_TIME:
			append_time(out, DatumGetTimeADT(value), format);
			break;
		case KP_JSON_TIMESTAMP:
			append_timestamp(out, DatumGetTimestamp(value), false, format);
			break;
		case KP_JSON_TIMESTAMPTZ:
			append_timestamp(out, DatumGetTimestampTz(value), true, format);
			break;
		case KP_JSON_ARRAY:
			append_array(out, column, value, format);
			break;
	}
}
