/*-------------------------------------------------------------------------
 *
 * util.c
 *	  Helpers shared by the SQL-callable functions: argument checks that
 *	  raise the same errors everywhere, SPI plans prepared once per backend
 *	  and kept, and the switch to the extension owner's rights.
 *
 * Rights.  The claim, lease and token functions read and write their
 * tables with the rights of the extension's owner, not the caller's
 * (who has none on them): each checks first that the caller may use the
 * scope (policy.c), then switches with IdemAsOwner around its table work
 * and back with IdemRestoreUser.  The switch is the one a SECURITY DEFINER
 * function makes, marked also as a security-restricted operation (as
 * VACUUM and ANALYZE mark theirs), so that nothing run inside may SET ROLE
 * or create temporary objects.  An error raised while switched needs no
 * cleanup here: aborting the transaction, or the subtransaction of a
 * PL/pgSQL block that catches it, restores the user and security context
 * that were current when it began.  An internal subtransaction begun
 * after the switch (IdemInSubtransaction) restores the owner when it is
 * rolled back, which is right too: its caller switches back afterwards.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/inval.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "idempotency.h"

/*
 * A required argument must not be NULL.
 */
void
IdemRequireArg(FunctionCallInfo fcinfo, int n, const char *name)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name),
				 errhint("Pass a value for \"%s\".", name)));
}

/*
 * Validate a name-like argument (a key, a scope, a lease name): not NULL,
 * not empty, not longer than max_bytes.
 */
text *
IdemNameArg(FunctionCallInfo fcinfo, int n, const char *what, int max_bytes,
			const char *empty_hint)
{
	text	   *t;
	int			len;

	IdemRequireArg(fcinfo, n, what);
	t = PG_GETARG_TEXT_PP(n);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what),
				 errhint("%s", empty_hint)));
	if (len > max_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", what),
				 errdetail("It is %d bytes; the limit is %d.", len, max_bytes),
				 errhint("Use a shorter %s, or a digest of it.", what)));
	return t;
}

char *
IdemIntervalText(Interval *iv)
{
	return DatumGetCString(DirectFunctionCall1(interval_out, IntervalPGetDatum(iv)));
}

/* An interval in days, months counting as 30 (as EXTRACT(epoch ...) does). */
double
IdemIntervalDays(const Interval *iv)
{
	return ((double) iv->time / USECS_PER_DAY) + iv->day + (double) iv->month * DAYS_PER_MONTH;
}

/* The shorter of two intervals (in IdemIntervalDays), b on a tie. */
const Interval *
IdemShorter(const Interval *a, const Interval *b)
{
	return IdemIntervalDays(a) < IdemIntervalDays(b) ? a : b;
}

/*
 * Validate a duration: positive, and not longer than max; max_name says
 * what max is.
 */
Interval *
IdemDurationArg(FunctionCallInfo fcinfo, int n, const char *what, Interval *max,
				const char *max_name, const char *hint)
{
	Interval   *iv;

	IdemRequireArg(fcinfo, n, what);
	iv = PG_GETARG_INTERVAL_P(n);
	/* Mixed signs ('1 month -29 days') would depend on the calendar. */
	if (IdemIntervalDays(iv) <= 0 || iv->month < 0 || iv->day < 0 || iv->time < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be positive", what),
				 errdetail("It is %s; its months, days and time must each be zero or more, and not all zero.",
						   IdemIntervalText(iv)),
				 errhint("Pass a positive interval, such as '24 hours'.")));
	if (IdemIntervalDays(iv) > IdemIntervalDays(max))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be longer than %s", what, max_name),
				 errdetail("It is %s; %s is %s.", IdemIntervalText(iv), max_name,
						   IdemIntervalText(max)),
				 errhint("%s", hint ? hint : "Pass a shorter interval.")));
	return iv;
}

/*
 * What a function returning a row whose first column is an outcome enum
 * needs: the row type, blessed, and the enum value of each outcome name.
 * The row must have the columns the C code fills (types[], the first
 * being the outcome enum): a superuser's ALTER TYPE is refused here
 * rather than read past.  A prepared statement builds its call sites anew
 * at every execution, so the answer is kept per backend too, by function
 * and result type (a recreated extension has other OIDs); a call through
 * fmgr without an expression (idem_serve calling idem_claim) finds it by
 * the function's declared result type.  It is looked at again when the
 * row type may have changed (the type cache's identifier of its
 * descriptor moved: any invalidation of the type's relation, an owner
 * change included) or an enum label changed anywhere: rebuilt, and kept
 * in place of the old answer only if it differs (a different answer
 * leaves the old one allocated, since a running call site may still
 * point at it: a few hundred bytes per real change).  A slot is taken
 * only when free or when its function is gone.
 */
#define RESULT_CACHES 4
static struct
{
	Oid			fn;
	Oid			rettype;
	uint64		tupdesc_id;
	IdemResultCache *cache;
	bool		fresh;			/* no invalidation since tupdesc_id matched */
}			result_caches[RESULT_CACHES];

/* An enum label changed: every kept answer is looked at again. */
static void
result_caches_enum_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	for (int i = 0; i < RESULT_CACHES; i++)
	{
		result_caches[i].tupdesc_id = 0;	/* never a descriptor's identifier */
		result_caches[i].fresh = false;
	}
}

/*
 * A relation's definition changed, or a function's: the type cache's
 * identifier of a row type may have moved (it changes only on such an
 * invalidation of the type's relation), and a function's OID may name
 * another function.  Each kept answer is checked against the type cache
 * again at its next call.  (Called by the catalog watch, below.)
 */
static void
result_caches_stale(void)
{
	for (int i = 0; i < RESULT_CACHES; i++)
		result_caches[i].fresh = false;
}

/* Does a kept answer say the same as the one just built? */
static bool
same_result_cache(const IdemResultCache *kept, TupleDesc tupdesc, const Datum *outcomes,
				  int noutcomes)
{
	if (!equalTupleDescs(kept->tupdesc, tupdesc))
		return false;
	for (int k = 0; k < noutcomes; k++)
		if (kept->outcomes[k] != outcomes[k])
			return false;
	return true;
}

/*
 * The row type must have the first nrequired columns of types, or more of
 * them (the columns a later version added), with those types.
 */
void
IdemCheckResultRow(Oid fn, TupleDesc tupdesc, const Oid *types, int nrequired, int ntypes)
{
	bool		ok = tupdesc->natts >= nrequired && tupdesc->natts <= ntypes;

	for (int i = 0; ok && i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		ok = !att->attisdropped &&
			(i == 0 ? type_is_enum(att->atttypid) : att->atttypid == types[i]);
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("the result type of %s has been altered", get_func_name(fn)),
				 errdetail("The function fills %d columns of the types its install script gave them.", ntypes),
				 errhint("Put the type back as the extension created it, or reinstall the extension.")));
}

IdemResultCache *
IdemGetResultCache(FunctionCallInfo fcinfo, const char *const *outcome_names, int noutcomes,
				   const Oid *types, int nrequired, int ntypes)
{
	IdemResultCache *cache = fcinfo->flinfo->fn_extra;
	Oid			fn = fcinfo->flinfo->fn_oid;
	Oid			rettype;
	uint64		tupdesc_id = 0;
	MemoryContext old;
	TupleDesc	tupdesc;
	Datum		outcomes[16];
	int			slot = -1;

	if (cache != NULL)
		return cache;
	if (noutcomes > (int) lengthof(outcomes))
		elog(ERROR, "too many outcomes: %d", noutcomes);
	IdemWatchCatalogs();
	rettype = get_fn_expr_rettype(fcinfo->flinfo);
	if (!OidIsValid(rettype) && fcinfo->flinfo->fn_expr == NULL)
		rettype = get_func_rettype(fn);
	if (OidIsValid(rettype) && rettype != RECORDOID)
	{
		TypeCacheEntry *tce;

		/* Nothing changed since the last look: no type cache look-up. */
		for (int i = 0; i < RESULT_CACHES; i++)
			if (result_caches[i].fresh && result_caches[i].fn == fn &&
				result_caches[i].rettype == rettype)
				return fcinfo->flinfo->fn_extra = result_caches[i].cache;
		tce = lookup_type_cache(rettype, TYPECACHE_TUPDESC);
		tupdesc_id = tce->tupDesc_identifier;
		for (int i = 0; i < RESULT_CACHES; i++)
			if (result_caches[i].fn == fn && result_caches[i].rettype == rettype)
			{
				/*
				 * Fresh from here on: nothing between the look-up and this
				 * test can take in an invalidation, and any later one
				 * clears it.
				 */
				if (result_caches[i].tupdesc_id == tupdesc_id)
				{
					result_caches[i].fresh = true;
					return fcinfo->flinfo->fn_extra = result_caches[i].cache;
				}
				slot = i;		/* maybe changed: look again */
				break;
			}
		for (int i = 0; slot < 0 && i < RESULT_CACHES; i++)
			if (!OidIsValid(result_caches[i].fn) ||
				!SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(result_caches[i].fn)))
				slot = i;
	}

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "function returning an outcome must return a row");
	IdemCheckResultRow(fn, tupdesc, types, nrequired, ntypes);
	for (int k = 0; k < noutcomes; k++)
		outcomes[k] = DirectFunctionCall2(enum_in, CStringGetDatum(outcome_names[k]),
										  ObjectIdGetDatum(TupleDescAttr(tupdesc, 0)->atttypid));
	if (slot >= 0 && result_caches[slot].fn == fn && result_caches[slot].rettype == rettype &&
		same_result_cache(result_caches[slot].cache, tupdesc, outcomes, noutcomes))
	{
		/* Nothing changed that the answer holds: keep it. */
		result_caches[slot].tupdesc_id = tupdesc_id;
		return fcinfo->flinfo->fn_extra = result_caches[slot].cache;
	}
	old = MemoryContextSwitchTo(slot >= 0 ? CacheMemoryContext : fcinfo->flinfo->fn_mcxt);
	cache = palloc(offsetof(IdemResultCache, outcomes) + sizeof(Datum) * noutcomes);
	cache->tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
	memcpy(cache->outcomes, outcomes, sizeof(Datum) * noutcomes);
	MemoryContextSwitchTo(old);
	if (slot >= 0)
	{
		result_caches[slot].fn = fn;
		result_caches[slot].rettype = rettype;
		result_caches[slot].tupdesc_id = tupdesc_id;
		result_caches[slot].cache = cache;
		result_caches[slot].fresh = false;	/* the next call checks the identifier */
	}
	fcinfo->flinfo->fn_extra = cache;
	return cache;
}

void
IdemConnectSPI(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/* A statement's plan, prepared and kept the first time. */
static SPIPlanPtr
kept_plan(const IdemPlanDef *def, SPIPlanPtr *plan)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(def->sql, def->nargs, (Oid *) def->argtypes);

		if (p == NULL)
			elog(ERROR, "could not prepare \"%s\": %s", def->sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

/*
 * Run one of a file's statements, preparing and keeping its plan the first
 * time; returns the number of rows processed.  nulls is in SPI's form ('n'
 * for NULL, ' ' otherwise), or NULL when no argument is NULL.
 */
uint64
IdemRunPlan(const IdemPlanDef *def, SPIPlanPtr *plan, Datum *args, const char *nulls,
			bool read_only)
{
	int			rc = SPI_execute_plan(kept_plan(def, plan), args, nulls, read_only, 0);

	if (rc < 0)
		elog(ERROR, "\"%s\" failed: %s", def->sql, SPI_result_code_string(rc));
	return SPI_processed;
}

/*
 * Run a read-only statement of configuration tables (policies, machines)
 * with a snapshot taken now rather than the caller's: a commit is visible
 * to new snapshots before its cache invalidation goes out, so what is read
 * here is never older than an invalidation already taken in, and a cache
 * filled from it never outlives the change (foreign-key checks read the
 * same way).  Reads that must agree pass one registered snapshot of
 * GetLatestSnapshot(); InvalidSnapshot takes a new one.  Not for parallel
 * mode, where no new snapshot may be taken: every caller is parallel
 * unsafe.  The plan is kept like IdemRunPlan's; returns the number of rows.
 */
uint64
IdemReadLatest(const IdemPlanDef *def, SPIPlanPtr *plan, Datum *args, Snapshot snapshot)
{
	int			rc = SPI_execute_snapshot(kept_plan(def, plan), args, NULL,
											  snapshot != InvalidSnapshot ? snapshot : GetLatestSnapshot(),
											  InvalidSnapshot, true, false, 0);

	if (rc != SPI_OK_SELECT)
		elog(ERROR, "\"%s\" failed: %s", def->sql, SPI_result_code_string(rc));
	return SPI_processed;
}

/*
 * Run fn(arg) in an internal subtransaction, kept if fn returns true and
 * rolled back otherwise.  An error inside rolls the subtransaction back
 * and goes on up, unless its SQLSTATE is swallow (0 for none): then
 * *swallowed is set and false returned.  The caller's memory context and
 * resource owner are restored either way.
 */
bool
IdemInSubtransaction(bool (*fn) (void *arg), void *arg, int swallow, bool *swallowed)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool keep = false;

	if (swallowed)
		*swallowed = false;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		keep = fn(arg);
		if (keep)
			ReleaseCurrentSubTransaction();
		else
			RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (swallow == 0 || edata->sqlerrcode != swallow)
			ReThrowError(edata);
		FreeErrorData(edata);
		if (swallowed)
			*swallowed = true;
		keep = false;
	}
	PG_END_TRY();
	return keep;
}

typedef struct ContestedWrite
{
	const IdemPlanDef *def;
	SPIPlanPtr *plan;
	Datum	   *args;
	const char *nulls;
} ContestedWrite;

static bool
contested_write(void *arg)
{
	ContestedWrite *w = arg;

	return IdemRunPlan(w->def, w->plan, w->args, w->nulls, false) > 0;
}

/*
 * Run a write that may lose a race, in a subtransaction that is rolled back
 * if the write changed nothing; true if it changed a row.  While it waits
 * for another transaction and re-checks the row, READ COMMITTED locks the
 * row's newest version; a caller that then goes on to report someone
 * else's claim or lease must not keep that lock, or it would hold up the
 * owner.  Rows the write returns are in SPI_tuptable.
 */
bool
IdemRunContested(const IdemPlanDef *def, SPIPlanPtr *plan, Datum *args, const char *nulls)
{
	return IdemRunContestedUntil(def, plan, args, nulls, 0);
}

/*
 * IdemInSubtransaction(fn, arg) with its lock waits cut off at deadline: a
 * wait still going then is given up, the subtransaction rolled back, and
 * false returned, as if fn had changed nothing.  A shorter lock_timeout of
 * the caller's applies instead, and raises its error as usual.
 */
bool
IdemInSubtransactionUntil(bool (*fn) (void *arg), void *arg, TimestampTz deadline)
{
	long		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
	int			saved = LockTimeout;
	volatile bool keep = false;
	bool		given_up;

	if (saved > 0 && saved <= ms)
		return IdemInSubtransaction(fn, arg, 0, NULL);
	LockTimeout = (int) Max(Min(ms, INT_MAX), 1);	/* 0 would mean never */
	PG_TRY();
	{
		keep = IdemInSubtransaction(fn, arg, ERRCODE_LOCK_NOT_AVAILABLE, &given_up);
	}
	PG_FINALLY();
	{
		LockTimeout = saved;
	}
	PG_END_TRY();
	return keep;
}

/* IdemRunContested, its lock waits cut off at deadline (0: none). */
bool
IdemRunContestedUntil(const IdemPlanDef *def, SPIPlanPtr *plan, Datum *args,
					  const char *nulls, TimestampTz deadline)
{
	ContestedWrite w = {def, plan, args, nulls};

	if (deadline == 0)
		return IdemInSubtransaction(contested_write, &w, 0, NULL);
	return IdemInSubtransactionUntil(contested_write, &w, deadline);
}

/*
 * The owner of the extension (pg_extension.extowner), looked up once and
 * kept until an invalidation may have changed it.  PostgreSQL 15 keeps no
 * cache of pg_extension whose invalidations could be watched.  The owner
 * changes only through REASSIGN OWNED (which also reassigns the tables
 * the extension created, queuing relcache invalidations of them) or by
 * dropping and creating the extension again (new tables, the same), and
 * a role that goes away is a pg_authid change: so any relcache
 * invalidation, or a change of a role, makes the next call look again.
 * Both are rare in a running system; the look-up is one index probe.
 */
static Oid	owner_id = InvalidOid;

/*
 * The catalog watch: one relcache callback and three catalog cache
 * callbacks for what this file and call_scan.c keep per backend.
 * PostgreSQL has room for ten relcache callbacks in a backend, shared by
 * every module loaded (logical decoding takes two), so the extension's
 * caches share one: the other files' relcache handlers
 * (IdemOnRelcacheChange) are called from it, in the order they were
 * added.
 */
static bool catalog_watch = false;

#define RELCACHE_HANDLERS 8
static RelcacheCallbackFunction relcache_handlers[RELCACHE_HANDLERS];
static int	nrelcache_handlers = 0;

static void
watch_relcache(Datum arg, Oid relid)
{
	owner_id = InvalidOid;
	result_caches_stale();
	for (int i = 0; i < nrelcache_handlers; i++)
		relcache_handlers[i] (arg, relid);
}

static void
watch_syscache(Datum arg, int cacheid, uint32 hashvalue)
{
	switch (cacheid)
	{
		case AUTHOID:
			owner_id = InvalidOid;
			break;
		case ENUMOID:
			result_caches_enum_changed(arg, cacheid, hashvalue);
			break;
		case PROCOID:
			result_caches_stale();
			IdemCallScanForget();
			break;
	}
}

void
IdemWatchCatalogs(void)
{
	if (catalog_watch)
		return;
	CacheRegisterRelcacheCallback(watch_relcache, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHOID, watch_syscache, (Datum) 0);
	CacheRegisterSyscacheCallback(ENUMOID, watch_syscache, (Datum) 0);
	CacheRegisterSyscacheCallback(PROCOID, watch_syscache, (Datum) 0);
	catalog_watch = true;
}

/*
 * Have fn called on every relcache invalidation, as by
 * CacheRegisterRelcacheCallback but without taking one of PostgreSQL's
 * ten slots.  Adding the same function again changes nothing.
 */
void
IdemOnRelcacheChange(RelcacheCallbackFunction fn)
{
	for (int i = 0; i < nrelcache_handlers; i++)
		if (relcache_handlers[i] == fn)
			return;
	if (nrelcache_handlers == RELCACHE_HANDLERS)
		elog(ERROR, "too many relcache handlers in the idempotency extension");
	IdemWatchCatalogs();
	relcache_handlers[nrelcache_handlers++] = fn;
}

/*
 * Read the extension's row of pg_extension in this database: its owner
 * (InvalidOid if it is not installed) and, with version, its version
 * (NULL if not installed).
 */
static Oid
read_extension(char **version)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			owner = InvalidOid;

	if (version)
		*version = NULL;
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("idempotency"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
		if (version)
		{
			bool		isnull;
			Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
										 RelationGetDescr(rel), &isnull);

			if (!isnull)
				*version = TextDatumGetCString(d);
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return owner;
}

static Oid
extension_owner(void)
{
	Oid			owner;

	if (OidIsValid(owner_id))
		return owner_id;
	IdemWatchCatalogs();
	owner = read_extension(NULL);
	if (!OidIsValid(owner))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"idempotency\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION idempotency; in this database.")));
	owner_id = owner;
	return owner;
}

/* The installed version of the extension in this database, or NULL. */
char *
IdemExtensionVersion(void)
{
	char	   *version;

	(void) read_extension(&version);
	return version;
}

/*
 * Switch to the extension owner's rights, saving the current user and
 * security context in *save for IdemRestoreUser.  Call it only after the
 * caller's checks (the scope's access list above all), since everything
 * after it runs with the owner's rights; every statement run then names
 * each table, function, type and operator with its schema, as the SQL of
 * this extension always does.
 */
void
IdemAsOwner(IdemUserSave *save)
{
	Oid			owner = extension_owner();

	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	SetUserIdAndSecContext(owner, save->sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
}

/* Switch back to the user and security context IdemAsOwner saved. */
void
IdemRestoreUser(const IdemUserSave *save)
{
	SetUserIdAndSecContext(save->userid, save->sec_context);
}
