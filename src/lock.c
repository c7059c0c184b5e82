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
 * with ours.  Two different keys share a lock only if their 64-bit ids
 * are equal (with a million distinct keys held at once, a chance of about
 * three in a hundred million that any two do): the cost would be a needless
 * wait, never two holders of one key.  Like any lock PostgreSQL takes in a
 * subtransaction, a keyed lock taken after a savepoint goes with ROLLBACK
 * TO SAVEPOINT.
 *
 * idem_lock and idem_try_lock check first that the caller may use the
 * scope (IdemCheckScope), so a role cannot take, or learn by waiting who
 * holds, a lock of a scope it may not use.  Scopes share the 64 bits, so
 * the id must also be one that nobody can aim at another scope's: a plain
 * hash can be run backwards to a key of one's own scope with the id of
 * anyone's lock (pg_locks shows them all).  The id is therefore the first
 * 64 bits of an HMAC-SHA-256 of (scope, key) under a secret of 32 random
 * bytes made by CREATE EXTENSION (idempotency.lock_secret, which only the
 * extension's owner can read).  Each backend reads it once, and again
 * after any relation cache invalidation (the table dropped with the
 * extension, say).  idem_lock_id computes the id for anyone (PUBLIC), to
 * find a lock in pg_locks; it reveals nothing about the secret.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/inval.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_lock);
PG_FUNCTION_INFO_V1(idem_try_lock);
PG_FUNCTION_INFO_V1(idem_lock_id);

/* What sets our advisory locks apart in the lock tag's fourth field. */
#define KEYED_LOCK_SPACE	73
#define LOCK_MAX_KEY_BYTES	1024
#define LOCK_SECRET_BYTES	32

static const IdemPlanDef secret_def = {
	"SELECT secret FROM idempotency.lock_secret", 0, {InvalidOid}
};
static SPIPlanPtr secret_plan;
static uint8 secret[LOCK_SECRET_BYTES];
static bool secret_valid = false;
static bool secret_callback = false;

static void
secret_invalidate(Datum arg, Oid relid)
{
	secret_valid = false;
}

/* The secret the lock ids are made with, read as the extension's owner. */
static const uint8 *
lock_secret(void)
{
	IdemUserSave save;
	bool		ok = false;

	if (secret_valid)
		return secret;
	if (!secret_callback)
	{
		IdemOnRelcacheChange(secret_invalidate);
		secret_callback = true;
	}
	IdemAsOwner(&save);
	IdemConnectSPI();
	if (IdemRunPlan(&secret_def, &secret_plan, NULL, NULL, true) == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		bytea	   *b = isnull ? NULL : DatumGetByteaPP(d);

		if (b != NULL && VARSIZE_ANY_EXHDR(b) == LOCK_SECRET_BYTES)
		{
			memcpy(secret, VARDATA_ANY(b), LOCK_SECRET_BYTES);
			ok = true;
		}
	}
	SPI_finish();
	IdemRestoreUser(&save);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the secret of keyed locks in \"idempotency.lock_secret\" is missing or damaged"),
				 errdetail("The table must hold one row of %d random bytes.", LOCK_SECRET_BYTES),
				 errhint("%s", IDEM_HINT_MISSING_TABLE)));
	secret_valid = true;
	return secret;
}

/*
 * The 64-bit id of (scope, key): HMAC-SHA-256 under the secret of the
 * scope's length, the scope and the key, so that ("ab", "c") and ("a",
 * "bc") differ.  With check_scope, the caller must be allowed to use the
 * scope, which is checked before anything else.
 */
static uint64
lock_id(FunctionCallInfo fcinfo, bool check_scope)
{
	text	   *key = IdemNameArg(fcinfo, 0, "key", LOCK_MAX_KEY_BYTES,
								  "Name what the lock protects, such as 'invoice:42'.");
	text	   *scope = IdemNameArg(fcinfo, 1, "scope", LOCK_MAX_KEY_BYTES,
									"Name the kind of resource, or leave scope out for 'default'.");
	uint32		scope_len = pg_hton32((uint32) VARSIZE_ANY_EXHDR(scope));
	const uint8 *key_secret;
	pg_hmac_ctx *ctx;
	uint8		mac[PG_SHA256_DIGEST_LENGTH];
	uint64		id;

	if (check_scope)
		IdemCheckScope(scope, NULL);
	key_secret = lock_secret();
	ctx = pg_hmac_create(PG_SHA256);
	if (ctx == NULL ||
		pg_hmac_init(ctx, key_secret, LOCK_SECRET_BYTES) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) &scope_len, sizeof(scope_len)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) VARDATA_ANY(scope), VARSIZE_ANY_EXHDR(scope)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)) < 0 ||
		pg_hmac_final(ctx, mac, sizeof(mac)) < 0)
		elog(ERROR, "could not compute the id of a keyed lock: %s",
			 ctx ? pg_hmac_error(ctx) : "out of memory");
	pg_hmac_free(ctx);
	memcpy(&id, mac, sizeof(id));
	return pg_ntoh64(id);
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
