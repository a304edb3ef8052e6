/*-------------------------------------------------------------------------
 *
 * committing.c
 *	  Transactions that enqueued messages, from just before they commit
 *	  until a scan of the worker sees them finished: the scan starts low
 *	  enough to send each of them whole, in id order.
 *
 *	  The worker scans the outbox in id order from where its last scan
 *	  ended.  Ids are taken while transactions run and they commit in any
 *	  order, so a transaction can commit ids below that position.  Telling
 *	  the worker after the commit is too late: the transaction is visible
 *	  before its commit callbacks run, and a scan in between would send its
 *	  ids above the position before those below, reordering a key.  So each
 *	  backend registers its transaction's xid and lowest id before commit
 *	  (XACT_EVENT_PRE_COMMIT), while nobody can see it yet; every scan starts
 *	  at or below the lowest registered id, and removes an entry only once
 *	  its own snapshot sees the transaction finished, after which the scan
 *	  position itself covers it.
 *
 *	  Locking: one slot per backend, indexed by MyBackendId, each with its
 *	  own spinlock; a backend writes only its slot, a worker reads those of
 *	  its database and clears those it saw finished.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/backendid.h"
#include "storage/spin.h"
#include "utils/snapmgr.h"

#include "kafka_producer.h"

typedef struct KpCommittingSlot
{
	slock_t		mutex;
	TransactionId xid;			/* invalid: the slot is free */
	Oid			database;
	int64		first_id;
} KpCommittingSlot;

static KpCommittingSlot *slots = NULL;

static Size
shmem_size(void)
{
	return mul_size(MaxBackends, sizeof(KpCommittingSlot));
}

static void
shmem_attach(void *memory, bool found)
{
	slots = memory;
	if (found)
		return;
	for (int i = 0; i < MaxBackends; i++)
	{
		SpinLockInit(&slots[i].mutex);
		slots[i].xid = InvalidTransactionId;
		slots[i].first_id = 0;
	}
}

void
kp_committing_init(void)
{
	kp_shmem_add("kafka_producer committing transactions", shmem_size,
				 shmem_attach);
}

/*
 * Called before the current transaction, xid, becomes visible, with the
 * lowest id it enqueued.  A previous transaction of this backend that no
 * scan has seen yet keeps its lower id in the slot: it is visible already,
 * and stays covered until this one is seen finished too.
 */
void
kp_committing_register(TransactionId xid, int64 first_id)
{
	KpCommittingSlot *slot;

	Assert(TransactionIdIsValid(xid));
	Assert(MyBackendId >= 1 && MyBackendId <= MaxBackends);
	slot = &slots[MyBackendId - 1];
	SpinLockAcquire(&slot->mutex);
	if (!TransactionIdIsValid(slot->xid) || first_id < slot->first_id)
		slot->first_id = first_id;
	slot->xid = xid;
	slot->database = MyDatabaseId;
	SpinLockRelease(&slot->mutex);
}

/*
 * The lowest id a scan with snapshot must start from so that no
 * registered transaction is sent in part; PG_INT64_MAX if none is
 * registered.  Forgets the transactions that snapshot sees finished:
 * committed ones are sent by this scan, aborted ones have nothing to send.
 */
int64
kp_committing_scan_floor(Snapshot snapshot)
{
	int64		floor = PG_INT64_MAX;

	for (int i = 0; i < MaxBackends; i++)
	{
		KpCommittingSlot *slot = &slots[i];
		TransactionId xid;

		SpinLockAcquire(&slot->mutex);
		xid = slot->database == MyDatabaseId ? slot->xid : InvalidTransactionId;
		if (TransactionIdIsValid(xid))
			floor = Min(floor, slot->first_id);
		SpinLockRelease(&slot->mutex);

		/* not under the spinlock: it may read pg_subtrans */
		if (!TransactionIdIsValid(xid) || XidInMVCCSnapshot(xid, snapshot))
			continue;
		SpinLockAcquire(&slot->mutex);
		/* unless the backend registered its next transaction meanwhile */
		if (TransactionIdEquals(slot->xid, xid))
			slot->xid = InvalidTransactionId;
		SpinLockRelease(&slot->mutex);
	}
	return floor;
}

/*
 * Whether any transaction of this database is registered: a scan may find
 * its messages.
 */
bool
kp_committing_any(void)
{
	bool		any = false;

	for (int i = 0; i < MaxBackends && !any; i++)
	{
		SpinLockAcquire(&slots[i].mutex);
		any = TransactionIdIsValid(slots[i].xid) &&
			slots[i].database == MyDatabaseId;
		SpinLockRelease(&slots[i].mutex);
	}
	return any;
}
