/*-------------------------------------------------------------------------
 *
 * claim_wait.c
 *	  Waking the callers that wait for a claim in progress to end.
 *
 * idem_claim(..., wait_for => bound) waits, when another caller holds the
 * key, for that caller's claim to end.  A claim not yet committed is
 * waited for on its transaction's lock, as a row wait would (claim.c), so
 * that the deadlock detector sees the wait.  A claim committed and in
 * progress under a lease, its owner working outside any transaction, ends
 * with a completion, a failure or a release committed later, or with the
 * lease running out; for it there is no lock to wait on.  The waiter sleeps on
 * one of a fixed set of condition variables in shared memory, chosen by a
 * hash of the database, scope and key, so that keys share them and no
 * memory is needed per key.  Every backend that writes a claim notes the
 * key's variable, and at the end of its transaction (commit or abort,
 * when what it wrote has become visible or vanished) wakes everyone on
 * each variable it noted.  A woken waiter reads the key again and either
 * has its answer or, its variable being shared with another key or the
 * claim still in progress, sleeps again.
 *
 * Nothing is lost between the read and the sleep: the waiter joins the
 * variable's queue before it reads, so a wake-up sent after the read finds
 * it there.  What no backend announces (a lease running out, a claim
 * ended by a prepared transaction committed elsewhere, a row changed by
 * hand) the waiter finds by reading again when the lease ends and at
 * least every WAIT_RECHECK_MS.
 *
 * Without shared memory (the library not preloaded) the waiter reads
 * again every WAIT_POLL_MS instead.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "port/pg_bitutils.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "utils/wait_event.h"

#include "idempotency.h"

#define WAIT_RECHECK_MS		5000
#define WAIT_POLL_MS		10

/* The variables this transaction's claim writes will wake at its end. */
static uint64 noted[IDEM_CLAIM_WAIT_SLOTS / 64];
static bool noted_any = false;
static bool callback_registered = false;

void
IdemClaimWaitShmemInit(IdemClaimWaitShared *w, bool found)
{
	if (!found)
		for (int i = 0; i < IDEM_CLAIM_WAIT_SLOTS; i++)
			ConditionVariableInit(&w->cv[i]);
}

/* The variable of a key: the database, the scope and the key, hashed. */
int
IdemClaimWaitSlot(const text *scope, const text *key)
{
	uint32		h = hash_bytes_uint32((uint32) MyDatabaseId);

	h = hash_combine(h, hash_bytes((const unsigned char *) VARDATA_ANY(scope),
								   VARSIZE_ANY_EXHDR(scope)));
	h = hash_combine(h, hash_bytes((const unsigned char *) VARDATA_ANY(key),
								   VARSIZE_ANY_EXHDR(key)));
	return (int) (h % IDEM_CLAIM_WAIT_SLOTS);
}

/* At the end of the transaction, what it wrote is there (or gone): wake. */
static void
wake_noted(XactEvent event, void *arg)
{
	if (!noted_any)
		return;
	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT &&
		event != XACT_EVENT_PARALLEL_COMMIT && event != XACT_EVENT_PARALLEL_ABORT &&
		event != XACT_EVENT_PREPARE)
		return;
	if (idem_shared != NULL)
		for (int w = 0; w < (int) lengthof(noted); w++)
			for (uint64 bits = noted[w]; bits != 0; bits &= bits - 1)
				ConditionVariableBroadcast(&idem_shared->claim_wait.cv[w * 64 + pg_rightmost_one_pos64(bits)]);
	memset(noted, 0, sizeof(noted));
	noted_any = false;
}

/* This transaction wrote the claim of a key (scope and key given). */
void
IdemClaimWaitNote(const text *scope, const text *key)
{
	int			slot = IdemClaimWaitSlot(scope, key);

	if (!callback_registered)
	{
		RegisterXactCallback(wake_noted, NULL);
		callback_registered = true;
	}
	noted[slot / 64] |= UINT64CONST(1) << (slot % 64);
	noted_any = true;
}

/*
 * Join the queue of a key's variable, before reading the key; then sleep
 * (IdemClaimWaitSleep) if what was read says to wait, and leave the queue
 * with IdemClaimWaitDone.
 */
void
IdemClaimWaitPrepare(int slot)
{
	if (idem_shared != NULL)
		ConditionVariablePrepareToSleep(&idem_shared->claim_wait.cv[slot]);
}

/*
 * Sleep until woken or until timeout_ms (at most WAIT_RECHECK_MS) has
 * passed.  Interrupts (a cancel, statement_timeout) are served.
 */
void
IdemClaimWaitSleep(int slot, long timeout_ms)
{
	timeout_ms = Max(1, timeout_ms);
	if (idem_shared != NULL)
		(void) ConditionVariableTimedSleep(&idem_shared->claim_wait.cv[slot],
										   Min(timeout_ms, WAIT_RECHECK_MS),
										   IdemWaitEvent(IDEM_WAIT_CLAIM));
	else
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(timeout_ms, WAIT_POLL_MS), IdemWaitEvent(IDEM_WAIT_CLAIM));
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

void
IdemClaimWaitDone(void)
{
	if (idem_shared != NULL)
		ConditionVariableCancelSleep();
}
