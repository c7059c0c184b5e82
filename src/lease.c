/*-------------------------------------------------------------------------
 *
 * lease.c
 *	  Leases with fencing tokens: idem_lease_acquire, idem_lease_renew,
 *	  idem_lease_release, idem_lease_check.
 *
 * A lease is a row of idempotency.leases: a scope and a name, its holder,
 * a fencing token and an expiry.  Acquiring takes a new token from one
 * sequence, drawn while holding the name's row, so the tokens of a name
 * only grow, also across releases and purges; time is the database's
 * clock, clock_timestamp(), when the call runs.
 *
 * Rights.  Every call checks first that the caller may use the scope
 * (IdemCheckScope), then reads and writes the table with the extension
 * owner's rights (IdemAsOwner).  A refusal of a holder names its own
 * token, never the current one or another holder.
 *
 * Concurrency.  Acquire is one INSERT ... ON CONFLICT DO UPDATE whose
 * WHERE admits only an expired lease or the same holder: two acquirers of
 * a free name serialize on the unique index, and the second, once the
 * first commits, finds a live lease and gets NULL.  Renew and release
 * restate the token and the expiry in their WHERE.  Writes that can lose
 * such a race run in a subtransaction rolled back when they change
 * nothing, so a loser keeps no lock on the winner's row.
 *
 * Fencing.  idem_lease_check locks the lease row FOR SHARE: until the
 * checking transaction ends, nobody can take the lease over, so writes it
 * makes after the check cannot interleave with a new holder's.  A holder
 * whose lease ran out or was taken over gets an error instead.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_lease_acquire);
PG_FUNCTION_INFO_V1(idem_lease_renew);
PG_FUNCTION_INFO_V1(idem_lease_release);
PG_FUNCTION_INFO_V1(idem_lease_check);

#define LEASE_MAX_NAME_BYTES	255
#define LEASE_MAX_SCOPE_BYTES	255
#define LEASE_MAX_TTL_DAYS		366

#define CLOCK	"pg_catalog.clock_timestamp()"
#define EQ		" OPERATOR(pg_catalog.=) "
#define LIVE	" AND expires_at OPERATOR(pg_catalog.>) " CLOCK
/* The lease: $1 is its scope, $2 its name. */
#define NAME_IS	" WHERE scope" EQ "$1 AND name" EQ "$2"

typedef enum LeasePlan
{
	PLAN_ACQUIRE, PLAN_TOKEN, PLAN_RENEW, PLAN_RELEASE, PLAN_CHECK, NUM_PLANS
} LeasePlan;

static const IdemPlanDef plan_defs[NUM_PLANS] = {
	/* Take the name (token still to come)... */
	[PLAN_ACQUIRE] = {
		"INSERT INTO idempotency.leases AS l (scope, name, holder, token, acquired_at, expires_at)"
		" VALUES ($1, $2, $3, 0, " CLOCK ", " CLOCK " OPERATOR(pg_catalog.+) $4)"
		" ON CONFLICT (scope, name) DO UPDATE SET holder = excluded.holder,"
		" acquired_at = excluded.acquired_at, expires_at = excluded.expires_at"
		" WHERE l.expires_at OPERATOR(pg_catalog.<=) " CLOCK
		" OR l.holder" EQ "excluded.holder",
		4, {TEXTOID, TEXTOID, TEXTOID, INTERVALOID}
	},
	/* ...then draw the token while holding its row. */
	[PLAN_TOKEN] = {
		"UPDATE idempotency.leases"
		" SET token = pg_catalog.nextval('idempotency.lease_tokens'::pg_catalog.regclass)"
		NAME_IS " RETURNING token",
		2, {TEXTOID, TEXTOID}
	},
	[PLAN_RENEW] = {
		"UPDATE idempotency.leases SET expires_at = " CLOCK " OPERATOR(pg_catalog.+) $4"
		NAME_IS " AND token" EQ "$3" LIVE,
		4, {TEXTOID, TEXTOID, INT8OID, INTERVALOID}
	},
	[PLAN_RELEASE] = {
		"DELETE FROM idempotency.leases" NAME_IS " AND token" EQ "$3" LIVE,
		3, {TEXTOID, TEXTOID, INT8OID}
	},
	[PLAN_CHECK] = {
		"SELECT token, expires_at, expires_at OPERATOR(pg_catalog.>) " CLOCK
		" FROM idempotency.leases" NAME_IS " FOR SHARE",
		2, {TEXTOID, TEXTOID}
	},
};

static SPIPlanPtr plans[NUM_PLANS];

static text *
lease_name(FunctionCallInfo fcinfo)
{
	return IdemNameArg(fcinfo, 0, "name", LEASE_MAX_NAME_BYTES,
					   "Name what the lease is for, such as 'nightly-report'.");
}

/*
 * The scope (argument n, the last), checked: the caller may use it.  Of
 * the scope's policy, only allowed_roles applies to leases.
 */
static text *
lease_scope(FunctionCallInfo fcinfo, int n)
{
	text	   *scope = IdemNameArg(fcinfo, n, "scope", LEASE_MAX_SCOPE_BYTES,
									"Name the kind of job, or leave scope out for 'default'.");

	IdemCheckScope(scope, NULL);
	return scope;
}

static Interval *
lease_ttl(FunctionCallInfo fcinfo, int n)
{
	static Interval max_ttl = {.time = 0,.day = LEASE_MAX_TTL_DAYS,.month = 0};

	return IdemDurationArg(fcinfo, n, "ttl", &max_ttl, "366 days", NULL);
}

static int64
lease_token(FunctionCallInfo fcinfo)
{
	IdemRequireArg(fcinfo, 1, "token");
	return PG_GETARG_INT64(1);
}

/* An acquire, for IdemInSubtransaction. */
typedef struct Acquire
{
	Datum	   *args;
	int64		token;
} Acquire;

/*
 * Take the name if it is free (or ours), then draw the token.  The token
 * is drawn only once the row is ours: any token drawn for the name before
 * was drawn by a transaction that held the row and has ended, so ours is
 * greater.  (Drawn in the INSERT's VALUES, it would be drawn before the
 * wait for a competing acquirer, and could come out smaller than the
 * winner's.)
 */
static bool
acquire(void *arg)
{
	Acquire    *a = arg;
	bool		isnull;

	if (IdemRunPlan(&plan_defs[PLAN_ACQUIRE], &plans[PLAN_ACQUIRE], a->args, NULL, false) == 0)
		return false;
	if (IdemRunPlan(&plan_defs[PLAN_TOKEN], &plans[PLAN_TOKEN], a->args, NULL, false) != 1)
		elog(ERROR, "lease row vanished while held");
	a->token = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return true;
}

/*
 * idem_lease_acquire(name, holder, ttl, scope) → bigint: a new token, or
 * NULL while another holder's lease is live.
 */
Datum
idem_lease_acquire(PG_FUNCTION_ARGS)
{
	Datum		args[4];
	Acquire		a = {args, 0};
	bool		acquired;
	IdemUserSave save;

	args[1] = PointerGetDatum(lease_name(fcinfo));
	args[2] = PointerGetDatum(IdemNameArg(fcinfo, 1, "holder", LEASE_MAX_NAME_BYTES,
										  "Name the process asking, such as its host name and process id."));
	args[3] = IntervalPGetDatum(lease_ttl(fcinfo, 2));
	args[0] = PointerGetDatum(lease_scope(fcinfo, 3));
	IdemAsOwner(&save);
	IdemConnectSPI();
	/* A subtransaction, so that a caller who loses keeps no lock. */
	acquired = IdemInSubtransaction(acquire, &a, 0, NULL);
	SPI_finish();
	IdemRestoreUser(&save);
	if (!acquired)
		PG_RETURN_NULL();
	PG_RETURN_INT64(a.token);
}

/*
 * A holder's write (renew with the ttl in argument 2, or release), which
 * changes nothing unless its token holds the live lease; scope_arg is the
 * scope's argument.
 */
static bool
holder_write(FunctionCallInfo fcinfo, LeasePlan which, int scope_arg)
{
	Datum		args[4];
	bool		changed;
	IdemUserSave save;

	args[1] = PointerGetDatum(lease_name(fcinfo));
	args[2] = Int64GetDatum(lease_token(fcinfo));
	if (which == PLAN_RENEW)
		args[3] = IntervalPGetDatum(lease_ttl(fcinfo, 2));
	args[0] = PointerGetDatum(lease_scope(fcinfo, scope_arg));
	IdemAsOwner(&save);
	IdemConnectSPI();
	changed = IdemRunContested(&plan_defs[which], &plans[which], args, NULL);
	SPI_finish();
	IdemRestoreUser(&save);
	return changed;
}

/*
 * idem_lease_renew(name, token, ttl, scope) → boolean
 */
Datum
idem_lease_renew(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(holder_write(fcinfo, PLAN_RENEW, 3));
}

/*
 * idem_lease_release(name, token, scope) → boolean
 */
Datum
idem_lease_release(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(holder_write(fcinfo, PLAN_RELEASE, 2));
}

/*
 * idem_lease_check(name, token, scope) → true, or an error if the token
 * does not hold the live lease.  The errors name the caller's token and
 * never the current one or its holder.
 */
Datum
idem_lease_check(PG_FUNCTION_ARGS)
{
	text	   *name = lease_name(fcinfo);
	int64		token = lease_token(fcinfo);
	Datum		args[2];
	bool		isnull;
	int64		current;
	bool		live;
	HeapTuple	row;
	TupleDesc	desc;
	IdemUserSave save;

	args[0] = PointerGetDatum(lease_scope(fcinfo, 2));
	args[1] = PointerGetDatum(name);
	IdemAsOwner(&save);
	IdemConnectSPI();
	if (IdemRunPlan(&plan_defs[PLAN_CHECK], &plans[PLAN_CHECK], args, NULL, false) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lease \"%s\" is not held", text_to_cstring(name)),
				 errdetail("Token %lld is not current: the lease was released, purged or never acquired.",
						   (long long) token),
				 errhint("Stop acting on the lease; acquire it again for a new token.")));
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	current = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
	live = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull));
	if (current != token)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lease \"%s\" is held by a newer token", text_to_cstring(name)),
				 errdetail("Token %lld was superseded.", (long long) token),
				 errhint("Stop acting on the lease; acquire it again for a new token.")));
	/* The token is the caller's own: so is the expiry. */
	if (!live)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lease \"%s\" has run out", text_to_cstring(name)),
				 errdetail("Token %lld expired at %s.", (long long) token, SPI_getvalue(row, desc, 2)),
				 errhint("Stop acting on the lease; acquire it again for a new token.")));
	SPI_finish();
	IdemRestoreUser(&save);
	/* The lease may rest on an acquire no standby has yet: sync_wait.c. */
	IdemAwaitSyncStandbys("the lease");
	PG_RETURN_BOOL(true);
}
