/*-------------------------------------------------------------------------
 *
 * policy.c
 *	  Per-scope policies (idempotency.policies), cached per backend, and
 *	  the check that the calling role may use a scope.
 *
 * A DBA writes one row per scope that needs other limits than the
 * defaults; a scope without a row gets the column defaults, which are
 * repeated here.  The table's CHECK constraints keep every value within
 * the hard limits.  A default_ttl longer than max_ttl counts as max_ttl,
 * so that a row giving only a short max_ttl means what it says.
 *
 * Strictness.  With idempotency.require_policy on, a scope without a row
 * (but "default") is refused, so that a misspelt scope fails instead of
 * quietly getting the defaults.
 *
 * Access.  A scope's allowed_roles lists the roles whose members may use
 * it; NULL (and a scope without a row) means every role with the
 * privileges of idempotency_user.  Roles with the privileges of
 * idempotency_admin, and superusers, may use every scope.  The caller is
 * the current user when the function is entered (inside a SECURITY
 * DEFINER function, its owner), judged with has_privs_of_role, as
 * PostgreSQL judges a GRANT.  Every function that takes a scope calls
 * IdemCheckScope before it touches a table or looks at a key, token or
 * lease, so a refusal tells nothing about them.
 *
 * Every call that takes a scope asks for its policy, so the answer is
 * cached in a hash table by scope name, including "no row", with the
 * outcome of the access check for the last role that asked.  A statement
 * trigger on the table queues a relcache invalidation of it, which every
 * session takes in at its next transaction (and the writing session at
 * its next command); the callback only marks the cache stale, and the next
 * lookup throws it away.  A lookup reads with a snapshot of its own, taken
 * then (IdemReadLatest), so that what it caches is never older than the
 * invalidations already taken in; one that took in an invalidation while
 * it was reading returns what it read without caching it.  A change of
 * role membership or of a role (pg_auth_members, pg_authid) makes every
 * cached access check stale, the same way as PostgreSQL's own cache of
 * role memberships, so that a GRANT or REVOKE counts from the next
 * transaction on (in the session that made it, from its next command).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "idempotency.h"

/* A scope is at most this long (see the table's CHECK). */
#define POLICY_MAX_SCOPE_BYTES	255
/* Past this many cached scopes, start over rather than grow. */
#define POLICY_CACHE_MAX		1024

/* The roles a scope's access falls back to, and the one that passes all. */
#define USER_ROLE	"idempotency_user"
#define ADMIN_ROLE	"idempotency_admin"

typedef struct PolicyEntry
{
	char		scope[POLICY_MAX_SCOPE_BYTES + 1];	/* hash key */
	IdemPolicy	policy;			/* the limits */
	bool		has_row;		/* the scope has a row (else: the defaults) */
	bool		any_user;		/* allowed_roles is NULL */
	int			nroles;			/* how many roles allowed_roles lists */
	Oid		   *roles;			/* which (NULL elements left out) */
	Oid			checked_role;	/* the role last checked, or InvalidOid */
	uint64		checked_generation; /* role_generation when checked */
	bool		allowed;		/* whether checked_role may use the scope */
} PolicyEntry;

static MemoryContext policy_cxt = NULL;	/* the cache and its role lists */
static HTAB *policy_cache = NULL;
static Oid	policies_relid = InvalidOid;
static bool cache_stale = false;
static bool callbacks_registered = false;
static uint64 cache_generation = 0;
static uint64 role_generation = 1;	/* never 0, the value of a new entry */

static const IdemPlanDef read_def = {
	"SELECT default_ttl, max_ttl, lease, max_key_length, require_fingerprint, allowed_roles"
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

/* A role, or who is a member of which, changed: check access again. */
static void
role_syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	role_generation++;
}

/* The policy of a scope without a row: the table's column defaults. */
static void
default_policy(PolicyEntry *e)
{
	memset(&e->policy, 0, sizeof(e->policy));
	e->policy.default_ttl.time = (int64) 24 * USECS_PER_HOUR;
	e->policy.max_ttl.day = 30;
	e->policy.lease.time = (int64) 60 * USECS_PER_SEC;
	e->policy.max_key_length = 255;
	e->policy.require_fingerprint = false;
	e->has_row = false;
	e->any_user = true;
	e->nroles = 0;
	e->roles = NULL;
}

/*
 * Read the scope's row into *e, its roles allocated in cxt; false if it
 * has none.  Read with the extension owner's rights, so that the check
 * does not depend on what the caller may read.
 */
static bool
read_policy(const char *scope, PolicyEntry *e, MemoryContext cxt)
{
	Datum		arg = CStringGetTextDatum(scope);
	IdemUserSave save;
	bool		found;

	IdemAsOwner(&save);
	IdemConnectSPI();
	found = IdemReadLatest(&read_def, &read_plan, &arg, InvalidSnapshot) > 0;
	if (found)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		IdemPolicy *p = &e->policy;
		bool		isnull;
		Datum		roles;

		/* All columns but allowed_roles are NOT NULL. */
		p->default_ttl = *DatumGetIntervalP(SPI_getbinval(tup, desc, 1, &isnull));
		p->max_ttl = *DatumGetIntervalP(SPI_getbinval(tup, desc, 2, &isnull));
		p->lease = *DatumGetIntervalP(SPI_getbinval(tup, desc, 3, &isnull));
		p->max_key_length = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		p->require_fingerprint = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		p->default_ttl = *IdemShorter(&p->max_ttl, &p->default_ttl);

		roles = SPI_getbinval(tup, desc, 6, &isnull);
		e->has_row = true;
		e->any_user = isnull;
		e->nroles = 0;
		e->roles = NULL;
		if (!isnull)
		{
			Datum	   *elems;
			bool	   *elem_nulls;
			int			n;

			deconstruct_array(DatumGetArrayTypeP(roles), REGROLEOID, sizeof(Oid), true,
							  TYPALIGN_INT, &elems, &elem_nulls, &n);
			e->roles = MemoryContextAlloc(cxt, sizeof(Oid) * Max(n, 1));
			for (int i = 0; i < n; i++)
				if (!elem_nulls[i])
					e->roles[e->nroles++] = DatumGetObjectId(elems[i]);
		}
	}
	SPI_finish();
	IdemRestoreUser(&save);
	return found;
}

/*
 * The cache entry of a scope, read on a miss; *local, filled, when what
 * was read may not be cached.
 */
static PolicyEntry *
policy_entry(const char *name, PolicyEntry *local)
{
	PolicyEntry *entry;
	uint64		generation;
	bool		found;

	if (!callbacks_registered)
	{
		IdemOnRelcacheChange(policy_relcache_callback);
		CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, role_syscache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, role_syscache_callback, (Datum) 0);
		policy_cxt = AllocSetContextCreate(CacheMemoryContext, "idempotency policies",
										   ALLOCSET_SMALL_SIZES);
		callbacks_registered = true;
	}
	if (policy_cache != NULL &&
		(cache_stale || hash_get_num_entries(policy_cache) >= POLICY_CACHE_MAX))
	{
		/* Drops the hash table too, which lives in a child context. */
		MemoryContextReset(policy_cxt);
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
		ctl.hcxt = policy_cxt;
		policy_cache = hash_create("idempotency policies", 64, &ctl,
								   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}

	entry = hash_search(policy_cache, name, HASH_FIND, NULL);
	if (entry != NULL)
		return entry;

	memset(local, 0, sizeof(*local));
	generation = cache_generation;
	if (!read_policy(name, local, CurrentMemoryContext))
		default_policy(local);
	if (generation != cache_generation || cache_stale || policy_cache == NULL)
		return local;
	entry = hash_search(policy_cache, name, HASH_ENTER, &found);
	entry->policy = local->policy;
	entry->has_row = local->has_row;
	entry->any_user = local->any_user;
	entry->nroles = local->nroles;
	entry->roles = NULL;
	if (local->nroles > 0)
	{
		entry->roles = MemoryContextAlloc(policy_cxt, sizeof(Oid) * local->nroles);
		memcpy(entry->roles, local->roles, sizeof(Oid) * local->nroles);
	}
	entry->checked_role = InvalidOid;
	entry->checked_generation = 0;
	entry->allowed = false;
	return entry;
}

/* May role use the scope of e? */
static bool
may_use(Oid role, const PolicyEntry *e)
{
	Oid			admin = get_role_oid(ADMIN_ROLE, true);

	if (superuser_arg(role) || (OidIsValid(admin) && has_privs_of_role(role, admin)))
		return true;
	if (e->any_user)
	{
		Oid			user = get_role_oid(USER_ROLE, true);

		return OidIsValid(user) && has_privs_of_role(role, user);
	}
	for (int i = 0; i < e->nroles; i++)
		if (has_privs_of_role(role, e->roles[i]))
			return true;
	return false;
}

/*
 * Refuse the calling role the scope: the scope and the role are all it
 * names, so the refusal says nothing of the scope's keys, tokens or leases.
 */
static void
refuse(const char *scope, Oid role, const PolicyEntry *e)
{
	if (e->any_user)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for idempotency scope \"%s\"", scope),
				 errdetail("The scope has no allowed_roles, so it is open to roles with the privileges of %s, and role \"%s\" does not have them.",
						   USER_ROLE, GetUserNameFromId(role, false)),
				 errhint("Have a DBA grant %s to the role, or list one of its roles in allowed_roles of the scope in idempotency.policies.",
						 USER_ROLE)));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for idempotency scope \"%s\"", scope),
			 errdetail("Role \"%s\" has the privileges of none of the roles in the scope's allowed_roles.",
					   GetUserNameFromId(role, false)),
			 errhint("Have a DBA add one of the role's roles to allowed_roles of the scope in idempotency.policies.")));
}

/*
 * A scope without a row while idempotency.require_policy is on: most
 * likely a misspelt one.  Raised after the access check, so that it tells
 * a caller nothing about a scope the caller may not use.
 */
static void
refuse_unlisted(const char *scope)
{
	if (strlen(scope) > POLICY_MAX_SCOPE_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("idempotency scope of %d bytes has no policy", (int) strlen(scope)),
				 errdetail("idempotency.require_policy is on, and a policy's scope is at most %d bytes, so a longer scope cannot have one.",
						   POLICY_MAX_SCOPE_BYTES),
				 errhint("Use a scope of at most %d bytes.", POLICY_MAX_SCOPE_BYTES)));
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("idempotency scope \"%s\" has no policy", scope),
			 errdetail("idempotency.require_policy is on, so every scope but \"default\" needs a row in idempotency.policies."),
			 errhint("Check the scope's spelling, or have an idempotency_admin add it: INSERT INTO idempotency.policies (scope) VALUES (%s).",
					 quote_literal_cstr(scope))));
}

/*
 * Check that the calling role (the current user) may use the scope, and
 * copy its policy into *p (if p is not NULL); true if the scope has a row
 * in idempotency.policies.  Call it before anything else that depends on
 * the scope, and before IdemAsOwner.  Scopes longer than a policy's
 * (keyed locks allow 1,024 bytes) have no row: they get the defaults,
 * checked on every call.
 */
bool
IdemCheckScope(text *scope, IdemPolicy *p)
{
	char		name[POLICY_MAX_SCOPE_BYTES + 1];
	int			len = VARSIZE_ANY_EXHDR(scope);
	Oid			role = GetUserId();
	PolicyEntry local;
	PolicyEntry *entry;

	if (len > POLICY_MAX_SCOPE_BYTES)
	{
		memset(&local, 0, sizeof(local));
		default_policy(&local);
		entry = &local;
	}
	else
	{
		memcpy(name, VARDATA_ANY(scope), len);
		name[len] = '\0';
		entry = policy_entry(name, &local);
	}

	if (entry->checked_role != role || entry->checked_generation != role_generation)
	{
		/* A change of roles while checking makes the next call check again. */
		uint64		generation = role_generation;

		entry->allowed = may_use(role, entry);
		entry->checked_role = role;
		entry->checked_generation = generation;
	}
	if (!entry->allowed)
		refuse(text_to_cstring(scope), role, entry);
	if (idem_require_policy && !entry->has_row &&
		!(len == 7 && memcmp(VARDATA_ANY(scope), "default", 7) == 0))
		refuse_unlisted(text_to_cstring(scope));
	if (p)
		*p = entry->policy;
	return entry->has_row;
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
