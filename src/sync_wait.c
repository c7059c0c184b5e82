/*-------------------------------------------------------------------------
 *
 * sync_wait.c
 *	  Answers that a failover cannot take back: wait until the synchronous
 *	  standbys have confirmed the state an answer reads.
 *
 * A call that writes (a claim, a consume, an acquire) is covered by its own
 * commit, which waits for the synchronous standbys before it becomes
 * visible.  A call that only reads committed state and answers from it (a
 * replayed response, a lease check) writes nothing, so its commit waits for
 * nothing; and the commit it read may have become visible without the
 * standbys' confirmation, when that commit's own wait was cancelled (or ran
 * with synchronous_commit = local or off).  A failover to a standby then
 * takes the state back, and the answer with it.
 *
 * So before such an answer, IdemAwaitSyncStandbys waits until the standbys
 * confirm a WAL position at or past that commit.  The exact position of the
 * commit is not kept anywhere; every commit visible to the caller was
 * inserted before the current insert position, which is therefore the
 * position waited for.  Under write load that costs a round trip to the
 * standbys; without synchronous standbys, or with a synchronous_commit that
 * would not wait either, it costs nothing.
 *
 * The wait polls the position the walsenders publish (WalSndCtl->lsn[]),
 * rather than joining the commit wait queue through SyncRepWaitForLSN,
 * which on a cancel warns that a transaction committed locally and returns
 * as if done: here nothing committed, and a cancel must be an error.
 * statement_timeout and cancels end the wait through the usual interrupt
 * (SQLSTATE 57014, with a detail and hint added here); lock_timeout is
 * applied by the loop itself (55P03).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "miscadmin.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "idempotency.h"

/* Longest sleep between two looks at the standbys' position. */
#define SYNC_WAIT_MAX_SLEEP_MS	10

/*
 * The kind of confirmation this session's commits wait for, or -1 when
 * they wait for none: synchronous_commit decides, as for a commit.
 */
static int
wait_mode(void)
{
	if (!SyncRepRequested() || SyncRepStandbyNames == NULL ||
		SyncRepStandbyNames[0] == '\0')
		return -1;
	switch (synchronous_commit)
	{
		case SYNCHRONOUS_COMMIT_REMOTE_WRITE:
			return SYNC_REP_WAIT_WRITE;
		case SYNCHRONOUS_COMMIT_REMOTE_APPLY:
			return SYNC_REP_WAIT_APPLY;
		default:
			return SYNC_REP_WAIT_FLUSH;
	}
}

/*
 * Have the synchronous standbys confirmed lsn?  Also true once none are
 * configured any more (the checkpointer clears the flag after a reload),
 * as a commit waiting then is released too.
 */
static bool
confirmed(int mode, XLogRecPtr lsn)
{
	bool		done;

	LWLockAcquire(SyncRepLock, LW_SHARED);
#ifdef SYNC_STANDBY_DEFINED
	done = WalSndCtl->lsn[mode] >= lsn ||
		((WalSndCtl->sync_standbys_status & SYNC_STANDBY_INIT) &&
		 !(WalSndCtl->sync_standbys_status & SYNC_STANDBY_DEFINED));
#else
	done = WalSndCtl->lsn[mode] >= lsn || !WalSndCtl->sync_standbys_defined;
#endif
	LWLockRelease(SyncRepLock);
	return done;
}

/*
 * The end of the WAL inserted so far.  GetXLogInsertRecPtr() is where the
 * next record would start: at the start of a page (after a segment switch,
 * say) that is past the page header, which is not written yet, and neither
 * a flush nor a standby can reach it until more WAL comes.  The end is
 * before the header.
 */
static XLogRecPtr
insert_end(void)
{
	XLogRecPtr	ptr = GetXLogInsertRecPtr();

	if (XLogSegmentOffset(ptr, wal_segment_size) == SizeOfXLogLongPHD)
		ptr -= SizeOfXLogLongPHD;
	else if (ptr % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		ptr -= SizeOfXLogShortPHD;
	return ptr;
}

/* Error context while waiting; a cancel also gets a detail and a hint. */
static void
sync_wait_context(void *arg)
{
	if (geterrcode() == ERRCODE_QUERY_CANCELED)
	{
		errdetail("The answer rests on a commit that the synchronous standbys "
				  "have not confirmed; a failover could still take it back.");
		errhint("Check the synchronous standbys (pg_stat_replication), then "
				"call again.");
	}
	errcontext("waiting for the synchronous standbys to confirm %s",
			   (const char *) arg);
}

/*
 * Wait until the synchronous standbys have confirmed every commit the
 * caller can see.  what names the answer, for messages: "the stored
 * response", "the lease".
 */
void
IdemAwaitSyncStandbys(const char *what)
{
	int			mode = wait_mode();
	XLogRecPtr	target;
	TimestampTz deadline = 0;
	long		sleep_ms = 1;
	ErrorContextCallback errcb;

	if (mode < 0 || RecoveryInProgress())
		return;
	target = insert_end();
	if (confirmed(mode, target))
		return;

	errcb.callback = sync_wait_context;
	errcb.arg = unconstify(char *, what);
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	/* The standbys are only sent what is flushed here. */
	XLogFlush(target);
	if (LockTimeout > 0)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LockTimeout);

	while (!confirmed(mode, target))
	{
		if (deadline != 0 && GetCurrentTimestamp() >= deadline)
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("synchronous standbys did not confirm %s within lock_timeout", what),
					 errdetail("The answer rests on a commit that the synchronous standbys "
							   "have not confirmed; a failover could still take it back."),
					 errhint("Check the synchronous standbys (pg_stat_replication), then call again.")));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, IdemWaitEvent(IDEM_WAIT_SYNC_STANDBY));
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		sleep_ms = Min(sleep_ms * 2, SYNC_WAIT_MAX_SLEEP_MS);
	}

	error_context_stack = errcb.previous;
}
