/*-------------------------------------------------------------------------
 *
 * lock.c
 *	  Keyed locks: idem_lock, idem_try_lock, idem_lock_id.
 *
 * A keyed lock is a heavyweight advisory lock held until the end of the
 * transaction, so PostgreSQL's lock manager does everything: waiting,
 * lock_timeout, the deadlock detector, release at commit or rollback, and
 * pg_locks.  Its tag is (database, high 32 bits, low 32 bits, 73): the 64
 * bits are a hash of scope and key, and the last field, 73, sets it apart
 * from the advisory locks users take (pg_advisory_lock(bigint) uses 1,
 * pg_advisory_lock(int, int) uses 2), which can therefore never collide
 * with ours.  Two different keys share a lock only if their 64-bit hashes
 * are equal (with a million distinct keys held at once, a chance of about
 * three in a hundred million that any two do): the cost would be a needless
 * wait, never two holders of one key.  Like any lock PostgreSQL takes in a
 * subtransaction, a keyed lock taken after a savepoint goes with ROLLBACK
 * TO SAVEPOINT.
 *
 * idem_lock and idem_try_lock check first that the caller may use the
 * scope (IdemCheckScope), so a role cannot take, or learn by waiting who
 * holds, a lock of a scope it may not use.  idem_lock_id only computes the
 * hash, and is PUBLIC.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/builtins.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_lock);
PG_FUNCTION_INFO_V1(idem_try_lock);
PG_FUNCTION_INFO_V1(idem_lock_id);

/* What sets our advisory locks apart in the lock tag's fourth field. */
#define KEYED_LOCK_SPACE	73
#define LOCK_MAX_KEY_BYTES	1024
#define LOCK_HASH_SEED		UINT64CONST(0x6964656d6c6f636b)	/* "idemlock" */

/*
 * The 64-bit id of (scope, key): the key's hash seeded with the scope's, so
 * that ("ab", "c") and ("a", "bc") differ.  With check_scope, the caller
 * must be allowed to use the scope.
 */
static uint64
lock_id(FunctionCallInfo fcinfo, bool check_scope)
{
	text	   *key = IdemNameArg(fcinfo, 0, "key", LOCK_MAX_KEY_BYTES,
								  "Name what the lock protects, such as 'invoice:42'.");
	text	   *scope = IdemNameArg(fcinfo, 1, "scope", LOCK_MAX_KEY_BYTES,
									"Name the kind of resource, or leave scope out for 'default'.");
	uint64		seed;

	if (check_scope)
		IdemCheckScope(scope, NULL);
	seed = hash_bytes_extended((unsigned char *) VARDATA_ANY(scope),
							   VARSIZE_ANY_EXHDR(scope), LOCK_HASH_SEED);
	return hash_bytes_extended((unsigned char *) VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), seed);
}

static LockAcquireResult
acquire(FunctionCallInfo fcinfo, bool dont_wait)
{
	uint64		id = lock_id(fcinfo, true);
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (id >> 32), (uint32) id,
						 KEYED_LOCK_SPACE);
	return LockAcquire(&tag, ExclusiveLock, false, dont_wait);
}

/*
 * idem_lock(key, scope): wait for the key's lock and hold it until the
 * transaction ends.
 */
Datum
idem_lock(PG_FUNCTION_ARGS)
{
	acquire(fcinfo, false);
	PG_RETURN_VOID();
}

/*
 * idem_try_lock(key, scope): take the key's lock if no other transaction
 * holds it.
 */
Datum
idem_try_lock(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(acquire(fcinfo, true) != LOCKACQUIRE_NOT_AVAIL);
}

/*
 * idem_lock_id(key, scope): the lock's 64 bits, to find it in pg_locks:
 * classid is the high half, objid the low half, objsubid 73.
 */
Datum
idem_lock_id(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) lock_id(fcinfo, false));
}
