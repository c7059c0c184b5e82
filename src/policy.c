/*-------------------------------------------------------------------------
 *
 * policy.c
 *	  Per-scope policies (idempotency.policies), cached per backend.
 *
 * A DBA writes one row per scope that needs other limits than the
 * defaults; a scope without a row gets the column defaults, which are
 * repeated here.  The table's CHECK constraints keep every value within
 * the hard limits.  A default_ttl longer than max_ttl counts as max_ttl,
 * so that a row giving only a short max_ttl means what it says.
 *
 * Every call that takes a scope asks for its policy, so the answer is
 * cached in a hash table by scope name, including "no row".  A statement
 * trigger on the table queues a relcache invalidation of it, which every
 * session takes in at its next transaction (and the writing session at
 * its next command); the callback only marks the cache stale, and the next
 * lookup throws it away.  A lookup reads with a snapshot of its own, taken
 * then (IdemReadLatest), so that what it caches is never older than the
 * invalidations already taken in; one that took in an invalidation while
 * it was reading returns what it read without caching it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "idempotency.h"

/* A scope is at most this long (see the table's CHECK). */
#define POLICY_MAX_SCOPE_BYTES	255
/* Past this many cached scopes, start over rather than grow. */
#define POLICY_CACHE_MAX		1024

typedef struct PolicyEntry
{
	char		scope[POLICY_MAX_SCOPE_BYTES + 1];	/* hash key */
	IdemPolicy	policy;
} PolicyEntry;

static HTAB *policy_cache = NULL;
static Oid	policies_relid = InvalidOid;
static bool cache_stale = false;
static bool callback_registered = false;
static uint64 cache_generation = 0;

static const IdemPlanDef read_def = {
	"SELECT default_ttl, max_ttl, lease, max_key_length, require_fingerprint"
	" FROM idempotency.policies WHERE scope OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};
static SPIPlanPtr read_plan = NULL;

static void
policy_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == policies_relid)
	{
		cache_stale = true;
		cache_generation++;
	}
}

/* The policy of a scope without a row: the table's column defaults. */
static void
default_policy(IdemPolicy *p)
{
	memset(p, 0, sizeof(*p));
	p->default_ttl.time = (int64) 24 * USECS_PER_HOUR;
	p->max_ttl.day = 30;
	p->lease.time = (int64) 60 * USECS_PER_SEC;
	p->max_key_length = 255;
	p->require_fingerprint = false;
}

/* Read the scope's row into *p; false if it has none. */
static bool
read_policy(const char *scope, IdemPolicy *p)
{
	Datum		arg = CStringGetTextDatum(scope);
	bool		found;

	IdemConnectSPI();
	found = IdemReadLatest(&read_def, &read_plan, &arg, InvalidSnapshot) > 0;
	if (found)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		/* All columns are NOT NULL. */
		p->default_ttl = *DatumGetIntervalP(SPI_getbinval(tup, desc, 1, &isnull));
		p->max_ttl = *DatumGetIntervalP(SPI_getbinval(tup, desc, 2, &isnull));
		p->lease = *DatumGetIntervalP(SPI_getbinval(tup, desc, 3, &isnull));
		p->max_key_length = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		p->require_fingerprint = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		p->default_ttl = *IdemShorter(&p->max_ttl, &p->default_ttl);
	}
	SPI_finish();
	return found;
}

/*
 * The policy of a scope (at most POLICY_MAX_SCOPE_BYTES long, checked by
 * the caller), copied into *p.
 */
void
IdemGetPolicy(text *scope, IdemPolicy *p)
{
	char		name[POLICY_MAX_SCOPE_BYTES + 1];
	int			len = VARSIZE_ANY_EXHDR(scope);
	PolicyEntry *entry;
	uint64		generation;
	bool		found;

	if (len > POLICY_MAX_SCOPE_BYTES)
		elog(ERROR, "scope of %d bytes passed to IdemGetPolicy", len);
	memcpy(name, VARDATA_ANY(scope), len);
	name[len] = '\0';

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(policy_relcache_callback, (Datum) 0);
		callback_registered = true;
	}
	if (policy_cache != NULL &&
		(cache_stale || hash_get_num_entries(policy_cache) >= POLICY_CACHE_MAX))
	{
		hash_destroy(policy_cache);
		policy_cache = NULL;
	}
	if (policy_cache == NULL)
	{
		HASHCTL		ctl;
		Oid			nsp = get_namespace_oid("idempotency", false);

		cache_stale = false;
		policies_relid = get_relname_relid("policies", nsp);
		if (!OidIsValid(policies_relid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("table \"idempotency.policies\" does not exist"),
					 errhint(IDEM_HINT_MISSING_TABLE)));
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(entry->scope);
		ctl.entrysize = sizeof(PolicyEntry);
		policy_cache = hash_create("idempotency policies", 64, &ctl,
								   HASH_ELEM | HASH_STRINGS);
	}

	entry = hash_search(policy_cache, name, HASH_FIND, NULL);
	if (entry != NULL)
	{
		*p = entry->policy;
		return;
	}

	generation = cache_generation;
	if (!read_policy(name, p))
		default_policy(p);
	if (generation == cache_generation && !cache_stale && policy_cache != NULL)
	{
		entry = hash_search(policy_cache, name, HASH_ENTER, &found);
		entry->policy = *p;
	}
}

/*
 * Validate argument n, a ttl or lease, against the scope's max_ttl.
 */
Interval *
IdemPolicyTtlArg(FunctionCallInfo fcinfo, int n, const char *what,
				 const IdemPolicy *p, text *scope)
{
	const char *max_name = "max_ttl";

	/* The scope is named only when the error is raised. */
	if (!PG_ARGISNULL(n) &&
		IdemIntervalDays(PG_GETARG_INTERVAL_P(n)) > IdemIntervalDays(&p->max_ttl))
		max_name = psprintf("max_ttl of scope \"%s\"", text_to_cstring(scope));
	return IdemDurationArg(fcinfo, n, what, (Interval *) &p->max_ttl, max_name,
						   "Pass a shorter interval, or have an idempotency_admin raise max_ttl "
						   "for the scope in idempotency.policies.");
}
