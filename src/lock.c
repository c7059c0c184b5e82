/*-------------------------------------------------------------------------
 *
 * lock.c
 *	  Transaction-level locks on text keys, in lock spaces of the
 *	  extension's own.
 *
 * A key (with its scope) is hashed to 64 bits and locked as an advisory
 * lock tag whose fourth field names the lock space.  PostgreSQL's own
 * advisory lock functions use 1 and 2 there, so these locks never collide
 * with a user's pg_advisory_lock(), whatever the key.  They are ordinary
 * heavyweight locks: visible in pg_locks (locktype "advisory", objsubid =
 * the space), subject to lock_timeout and to the deadlock detector, and
 * released at the end of the transaction.
 *
 * Two different keys collide only if their 64-bit hashes do (about one
 * chance in 2^64 per pair): the cost of a collision is that one waits for
 * the other, never that either is wrongly allowed through.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/lock.h"

#include "idempotency.h"

/* Seed of the key hash; any constant, fixed forever once keys are locked. */
#define IDEM_KEY_HASH_SEED	UINT64CONST(0x1de3f1a5c0ffee11)

static void
key_locktag(LOCKTAG *tag, uint16 space, const char *scope, int scope_len,
			const char *key, int key_len)
{
	uint64		h;

	h = hash_bytes_extended((const unsigned char *) scope, scope_len, IDEM_KEY_HASH_SEED);
	h = hash_bytes_extended((const unsigned char *) key, key_len, h);
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h, space);
}

/*
 * Lock a key for the rest of the transaction.  With wait, block until it is
 * free (or lock_timeout, or a deadlock, raises an error); without, return
 * false at once if another transaction holds it.
 */
bool
IdemLockKey(uint16 space, const char *scope, int scope_len,
			const char *key, int key_len, bool wait)
{
	LOCKTAG		tag;

	key_locktag(&tag, space, scope, scope_len, key, key_len);
	return LockAcquire(&tag, ExclusiveLock, false, !wait) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * Release a key early, when the transaction turned out to change nothing
 * under it, so that later callers need not wait for its end.
 */
void
IdemUnlockKey(uint16 space, const char *scope, int scope_len,
			  const char *key, int key_len)
{
	LOCKTAG		tag;

	key_locktag(&tag, space, scope, scope_len, key, key_len);
	LockRelease(&tag, ExclusiveLock, false);
}
