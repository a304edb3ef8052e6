/*-------------------------------------------------------------------------
 *
 * notify.c
 *	  NOTIFY kafka_delivery: the worker announces final outcomes in the
 *	  transaction that records them.
 *
 *	  Payload: "<status>:<ids>", status delivered or failed, ids ascending
 *	  as a comma-separated list of single ids and inclusive ranges, e.g.
 *	  "delivered:17,20-31".  A batch takes as many notifications as needed
 *	  to keep each payload under NOTIFY's limit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/async.h"
#include "lib/stringinfo.h"

#include "kafka_producer.h"

#define KP_NOTIFY_CHANNEL "kafka_delivery"
/* NOTIFY takes payloads below 8000 bytes; a range adds at most 41 */
#define KP_NOTIFY_PAYLOAD_FLUSH 7900

static int
compare_ids(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * Queues notifications of the final status of ids (sorted in place); they
 * go out when the worker's recording transaction commits.
 */
void
kp_notify_ids(const char *status, int64 *ids, int count)
{
	StringInfoData payload;

	if (count == 0)
		return;
	qsort(ids, count, sizeof(int64), compare_ids);
	initStringInfo(&payload);
	for (int first = 0; first < count;)
	{
		int			last = first;

		while (last + 1 < count && ids[last + 1] <= ids[last] + 1)
			last++;
		appendStringInfoString(&payload, payload.len == 0 ? status : ",");
		if (payload.len == (int) strlen(status))
			appendStringInfoChar(&payload, ':');
		appendStringInfo(&payload, INT64_FORMAT, ids[first]);
		if (ids[last] != ids[first])
			appendStringInfo(&payload, "-" INT64_FORMAT, ids[last]);
		if (payload.len > KP_NOTIFY_PAYLOAD_FLUSH)
		{
			Async_Notify(KP_NOTIFY_CHANNEL, payload.data);
			resetStringInfo(&payload);
		}
		first = last + 1;
	}
	if (payload.len > 0)
		Async_Notify(KP_NOTIFY_CHANNEL, payload.data);
}
