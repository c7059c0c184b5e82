/*-------------------------------------------------------------------------
 *
 * serve.c
 *	  idem_serve: one request in one statement.  It claims the key, runs
 *	  the caller's handler on the request, stores the handler's answer,
 *	  and returns it; or returns what the claim found (a replay, a claim
 *	  in progress, a mismatch).
 *
 * The handler is a function of the caller's, of exactly this form:
 *
 *		handler(key text, request bytea, OUT status int, OUT body bytea,
 *				OUT content_type text, OUT headers jsonb)
 *
 * checked in its catalog row before anything runs, so that its result is
 * read as it is and no cast of anyone's is applied to it.  It is called
 * through fmgr, as the executor would call it: the caller's rights (a
 * SECURITY DEFINER handler switches to its owner's, as ever), the
 * caller's search_path, and the checks the executor makes first: USAGE on
 * its schema (a name in SQL would need it) and EXECUTE on it.
 *
 * The claim and the completion are idem_claim and idem_complete, called
 * the same way (the caller must be allowed to execute them), so that they
 * are checked, counted and woken exactly as when a client calls them.
 *
 * All of it runs in a subtransaction: a status of 500 or more is checked
 * by idem_complete like any answer, then rolled back with the claim and
 * the handler's writes, so that a retry runs again; the answer is kept in
 * the statement's memory and returned.  An error of the handler's, or of
 * ours, rolls the subtransaction back and ends the statement.
 *
 * The handler's settings end with it (see serve_once), so that calls of
 * idem_serve in one transaction, or on one connection, do not see each
 * other's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_serve);

/* idem_serve's arguments. */
enum
{
	ARG_HANDLER, ARG_KEY, ARG_REQUEST, ARG_FINGERPRINT, ARG_SCOPE, ARG_TTL, ARG_WAIT_FOR
};

/* Its result's columns, and the handler's OUT parameters from status on. */
enum
{
	OUT_OUTCOME, OUT_STATUS, OUT_BODY, OUT_CONTENT_TYPE, OUT_HEADERS, NUM_OUT
};

/* Columns of idem_claim_result that idem_serve reads (1-based). */
#define CLAIM_OUTCOME		1
#define CLAIM_TOKEN			2
#define CLAIM_STATUS		4
#define CLAIM_BODY			8
#define CLAIM_CONTENT_TYPE	9
#define CLAIM_HEADERS		10

/* The handler's form: its argument types, IN then OUT, and their modes. */
static const Oid handler_types[] = {TEXTOID, BYTEAOID, INT4OID, BYTEAOID, TEXTOID, JSONBOID};
static const char handler_modes[] = {'i', 'i', 'o', 'o', 'o', 'o'};

/* idem_serve_result's columns (the first, the outcome enum, checked as one). */
static const Oid result_types[] = {InvalidOid, INT4OID, BYTEAOID, TEXTOID, JSONBOID};

/* What one call site keeps from call to call, in its fn_mcxt. */
typedef struct ServeSite
{
	FmgrInfo	claim;			/* idempotency.idem_claim */
	FmgrInfo	complete;		/* idempotency.idem_complete */
	TupleDesc	answer;			/* (status, body, content_type, headers) */
	IdemResultCache *result;	/* idem_serve_result, as the C code fills it */
	List	   *handlers;		/* SiteHandler per handler called here */
} ServeSite;

/*
 * A handler as a call site calls it, kept for the statement as the
 * executor keeps a function's: its fn_extra (a SQL function's plans, a
 * SECURITY DEFINER's settings) lives as long, instead of being built again
 * for every row, or for every switch between handlers.
 */
typedef struct SiteHandler
{
	Oid			handler;
	FmgrInfo	call;
} SiteHandler;

/* One call: its arguments, and the answer built in the caller's memory. */
typedef struct ServeCall
{
	FunctionCallInfo fcinfo;
	ServeSite  *site;
	Oid			handler;
	FmgrInfo   *call;			/* the handler's, in site->handlers */
	Datum		values[NUM_OUT];
	bool		nulls[NUM_OUT];
} ServeCall;

/*
 * What every call site starts from, kept per backend (a prepared
 * statement builds its call sites anew at every execution): idem_claim
 * and idem_complete of the schema of the idem_serve last called, found by
 * signature, until any function changes; and the answer's descriptor, of
 * built-in types only.  Whether the outcome means "run the handler", and
 * the descriptor of idem_claim's row, are the call's own
 * (IdemClaimOwns, IdemClaimResultDesc), never looked up here.
 */
static struct
{
	bool		valid;
	Oid			serve;			/* the idem_serve they were found for */
	FmgrInfo	claim;
	FmgrInfo	complete;
}			kept;
static TupleDesc kept_answer = NULL;
static uint64 kept_generation = 0;
static needs_fmgr_hook_type kept_hook = NULL;	/* when they were looked up */

/*
 * Handlers found to be of the form idem_serve calls, with their schema
 * and FmgrInfo, kept per backend until any function changes: a service
 * calls the same few handlers statement after statement.  The rights to
 * call one are checked at every call all the same.
 */
#define KEPT_HANDLERS 8
static struct
{
	Oid			handler;		/* or InvalidOid */
	Oid			nsp;
	FmgrInfo	call;
}			kept_handlers[KEPT_HANDLERS];
static int	kept_handlers_next = 0;

static void
kept_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	kept.valid = false;
	for (int i = 0; i < KEPT_HANDLERS; i++)
		kept_handlers[i].handler = InvalidOid;
	kept_generation++;
}

/* An extension function of the schema idem_serve is in, by signature. */
static void
own_function(Oid nsp, const char *name, const Oid *types, int ntypes, FmgrInfo *finfo)
{
	oidvector  *args = buildoidvector(types, ntypes);
	Oid			fn = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid,
									 CStringGetDatum(name), PointerGetDatum(args),
									 ObjectIdGetDatum(nsp));

	if (!OidIsValid(fn))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s.%s of the idempotency extension does not exist",
						get_namespace_name(nsp), name),
				 errhint("Update the extension: ALTER EXTENSION idempotency UPDATE.")));
	fmgr_info_cxt(fn, finfo, CacheMemoryContext);
}

static void
look_up_kept(Oid serve)
{
	static bool callback = false;
	static const Oid claim_types[] = {TEXTOID, INTERVALOID, BYTEAOID, TEXTOID, INTERVALOID, BOOLOID, INTERVALOID};
	static const Oid complete_types[] = {TEXTOID, INT8OID, JSONBOID, INT4OID, TEXTOID, BYTEAOID, TEXTOID, JSONBOID};
	uint64		generation;
	Oid			nsp;

	if (!callback)
	{
		CacheRegisterSyscacheCallback(PROCOID, kept_invalidate, (Datum) 0);
		callback = true;
	}
	if (kept_answer == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(CacheMemoryContext);
		TupleDesc	answer = CreateTemplateTupleDesc(4);

		for (int i = 0; i < 4; i++)
			TupleDescInitEntry(answer, i + 1, NULL, handler_types[i + 2], -1, 0);
		MemoryContextSwitchTo(old);
		kept_answer = answer;
	}
	if (kept.valid && kept.serve == serve)
		return;
	kept.valid = false;
	generation = kept_generation;
	nsp = get_func_namespace(serve);
	own_function(nsp, "idem_claim", claim_types, lengthof(claim_types), &kept.claim);
	own_function(nsp, "idem_complete", complete_types, lengthof(complete_types), &kept.complete);
	kept.serve = serve;
	/* Unless a function changed while looking: then again next time. */
	kept.valid = generation == kept_generation;
}

static ServeSite *
serve_site(FunctionCallInfo fcinfo)
{
	ServeSite  *site = fcinfo->flinfo->fn_extra;
	MemoryContext cxt = fcinfo->flinfo->fn_mcxt;
	IdemResultCache *result;

	if (site != NULL)
		return site;

	/*
	 * The kept call information was built without the fmgr hook of a
	 * module loaded since (LOAD), or with one: looked up again, so that
	 * the hook sees the calls made here as it sees any other.
	 */
	if (kept_hook != needs_fmgr_hook)
	{
		kept_invalidate((Datum) 0, PROCOID, 0);
		kept_hook = needs_fmgr_hook;
	}
	look_up_kept(fcinfo->flinfo->fn_oid);
	/* The result row checked and kept as for idem_claim's (it sets fn_extra). */
	result = IdemGetResultCache(fcinfo, NULL, 0, result_types, NUM_OUT, NUM_OUT);
	site = MemoryContextAllocZero(cxt, sizeof(ServeSite));
	site->result = result;
	fmgr_info_copy(&site->claim, &kept.claim, cxt);
	fmgr_info_copy(&site->complete, &kept.complete, cxt);
	site->answer = kept_answer;
	fcinfo->flinfo->fn_extra = site;
	return site;
}

/* EXECUTE on a function, as a call from SQL checks it. */
static void
may_execute(Oid fn)
{
	AclResult	acl = idem_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE);

	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_FUNCTION, get_func_name(fn));
	InvokeFunctionExecuteHook(fn);
}

/* Whether an array column of the handler's pg_proc row is exactly want. */
static bool
array_is(HeapTuple proc, AttrNumber att, Oid elemtype, const void *want, int n, int elemsize)
{
	bool		isnull;
	Datum		d = SysCacheGetAttr(PROCOID, proc, att, &isnull);
	ArrayType  *a;

	if (isnull)
		return false;
	a = DatumGetArrayTypeP(d);
	/* (one dimension, no nulls: the data follow the fixed header) */
	return ARR_NDIM(a) == 1 && ARR_DIMS(a)[0] == n && !ARR_HASNULL(a) &&
		ARR_ELEMTYPE(a) == elemtype &&
		memcmp((char *) a + ARR_OVERHEAD_NONULLS(1), want, (size_t) n * elemsize) == 0;
}

/*
 * Check in its catalog row that handler is of the form idem_serve calls,
 * and keep it: the index of its entry in kept_handlers.
 */
static int
look_up_handler(Oid handler)
{
	uint64		generation = kept_generation;
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(handler));
	Form_pg_proc proc;
	int			k;

	if (!HeapTupleIsValid(tup) ||
		(proc = (Form_pg_proc) GETSTRUCT(tup))->prokind != PROKIND_FUNCTION ||
		proc->proretset || proc->pronargs != 2 ||
		!array_is(tup, Anum_pg_proc_proallargtypes, OIDOID, handler_types,
				  lengthof(handler_types), sizeof(Oid)) ||
		!array_is(tup, Anum_pg_proc_proargmodes, CHAROID, handler_modes,
				  lengthof(handler_modes), sizeof(char)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("handler %s is not a function of the form idem_serve calls",
						format_procedure(handler)),
				 errdetail("It must be a plain function (key text, request bytea, OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)."),
				 errhint("Declare it with those arguments and OUT parameters, in that order.")));
	k = kept_handlers_next;
	kept_handlers_next = (k + 1) % KEPT_HANDLERS;
	kept_handlers[k].handler = InvalidOid;
	kept_handlers[k].nsp = proc->pronamespace;
	ReleaseSysCache(tup);
	fmgr_info_cxt(handler, &kept_handlers[k].call, CacheMemoryContext);
	/* Unless a function changed while looking: then looked up again next time. */
	if (generation == kept_generation)
		kept_handlers[k].handler = handler;
	return k;
}

/*
 * The handler, checked (of the form above, in a schema the caller may use,
 * executable by the caller) on every call: the site's FmgrInfo for it.
 */
static FmgrInfo *
check_handler(FunctionCallInfo fcinfo, ServeSite *site, Oid handler)
{
	int			k = 0;
	AclResult	acl;
	ListCell   *lc;
	SiteHandler *h;
	MemoryContext old;

	while (k < KEPT_HANDLERS && kept_handlers[k].handler != handler)
		k++;
	if (k == KEPT_HANDLERS || !OidIsValid(handler))
		k = look_up_handler(handler);

	acl = idem_namespace_aclcheck(kept_handlers[k].nsp, GetUserId(), ACL_USAGE);
	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_SCHEMA, get_namespace_name(kept_handlers[k].nsp));
	may_execute(handler);

	foreach(lc, site->handlers)
	{
		h = lfirst(lc);
		if (h->handler == handler)
			return &h->call;
	}
	old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	h = palloc(sizeof(SiteHandler));
	h->handler = handler;
	fmgr_info_copy(&h->call, &kept_handlers[k].call, fcinfo->flinfo->fn_mcxt);
	site->handlers = lappend(site->handlers, h);
	MemoryContextSwitchTo(old);
	return &h->call;
}


/*
 * The row the handler returned is of the types it declares.  A declaration
 * does not make it so: a SQL function declared with these OUT parameters
 * may return a ROW() of other types, which PostgreSQL leaves to the caller
 * to check at run time (as the executor does for a function in FROM).
 * Read with our descriptor, other bytes would be taken for a varlena or a
 * toast pointer.
 */
static void
check_answer_type(Oid handler, HeapTupleHeader row, TupleDesc want)
{
	TupleDesc	got = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(row),
											 HeapTupleHeaderGetTypMod(row));
	bool		same = got->natts == want->natts &&
		HeapTupleHeaderGetNatts(row) <= got->natts;

	for (int i = 0; same && i < want->natts; i++)
	{
		Form_pg_attribute g = TupleDescAttr(got, i);
		Form_pg_attribute w = TupleDescAttr(want, i);

		same = !g->attisdropped && g->atttypid == w->atttypid &&
			g->attlen == w->attlen && g->attbyval == w->attbyval &&
			g->attalign == w->attalign;
	}
	ReleaseTupleDesc(got);
	if (!same)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("handler %s returned a row of other types than it declares",
						format_procedure(handler)),
				 errdetail("idem_serve reads (status int, body bytea, content_type text, headers jsonb)."),
				 errhint("Return the OUT parameters themselves, or a row of exactly those types.")));
}

/* A field of a composite datum, by its 1-based number. */
static Datum
field(HeapTupleHeader row, TupleDesc desc, int n, bool *isnull)
{
	HeapTupleData tuple;

	tuple.t_len = HeapTupleHeaderGetDatumLength(row);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = row;
	return heap_getattr(&tuple, n, desc, isnull);
}

/*
 * The claim, the handler and the completion, in the subtransaction that
 * IdemInSubtransaction runs: true keeps what they wrote, false (a server
 * error's answer) rolls it back.
 */
static bool
serve_once(void *arg)
{
	ServeCall  *c = arg;
	FunctionCallInfo fcinfo = c->fcinfo;
	ServeSite  *site = c->site;
	LOCAL_FCINFO(cfc, 8);
	Datum		claim;
	HeapTupleHeader crow;
	TupleDesc	cdesc;
	Datum		token;
	bool		isnull;
	FmgrInfo   *handler;
	Datum		answer = (Datum) 0;
	int32		status;

	/* idem_claim(key, ttl, fingerprint, scope, lease, wait, wait_for) */
	InitFunctionCallInfoData(*cfc, &site->claim, 7, InvalidOid, NULL, NULL);
	cfc->args[0].value = PG_GETARG_DATUM(ARG_KEY);
	cfc->args[0].isnull = PG_ARGISNULL(ARG_KEY);
	cfc->args[1].value = PG_GETARG_DATUM(ARG_TTL);
	cfc->args[1].isnull = PG_ARGISNULL(ARG_TTL);
	cfc->args[2].value = PG_GETARG_DATUM(ARG_FINGERPRINT);
	cfc->args[2].isnull = PG_ARGISNULL(ARG_FINGERPRINT);
	cfc->args[3].value = PG_GETARG_DATUM(ARG_SCOPE);
	cfc->args[3].isnull = PG_ARGISNULL(ARG_SCOPE);
	cfc->args[4].value = (Datum) 0;
	cfc->args[4].isnull = true;
	/* Without a bound, a claim in progress is answered at once. */
	cfc->args[5].value = BoolGetDatum(!PG_ARGISNULL(ARG_WAIT_FOR));
	cfc->args[5].isnull = false;
	cfc->args[6].value = PG_GETARG_DATUM(ARG_WAIT_FOR);
	cfc->args[6].isnull = PG_ARGISNULL(ARG_WAIT_FOR);
	claim = FunctionCallInvoke(cfc);
	if (cfc->isnull)
		elog(ERROR, "idem_claim returned NULL");
	crow = DatumGetHeapTupleHeader(claim);
	cdesc = IdemClaimResultDesc(&site->claim, crow);
	c->values[OUT_OUTCOME] = field(crow, cdesc, CLAIM_OUTCOME, &c->nulls[OUT_OUTCOME]);
	if (c->nulls[OUT_OUTCOME] ||
		!IdemClaimOwns(&site->claim, cdesc, c->values[OUT_OUTCOME]))
	{
		/* A replay, a claim in progress or a mismatch: idem_claim's answer. */
		c->values[OUT_STATUS] = field(crow, cdesc, CLAIM_STATUS, &c->nulls[OUT_STATUS]);
		c->values[OUT_BODY] = field(crow, cdesc, CLAIM_BODY, &c->nulls[OUT_BODY]);
		c->values[OUT_CONTENT_TYPE] = field(crow, cdesc, CLAIM_CONTENT_TYPE, &c->nulls[OUT_CONTENT_TYPE]);
		c->values[OUT_HEADERS] = field(crow, cdesc, CLAIM_HEADERS, &c->nulls[OUT_HEADERS]);
		ReleaseTupleDesc(cdesc);
		return true;
	}
	token = field(crow, cdesc, CLAIM_TOKEN, &isnull);
	ReleaseTupleDesc(cdesc);
	/* Whether the answer may be stored, before the handler does anything. */
	may_execute(site->complete.fn_oid);
	CommandCounterIncrement();

	/* handler(key, request) */
	handler = c->call;
	InitFunctionCallInfoData(*cfc, handler, 2, PG_GET_COLLATION(), NULL, NULL);
	cfc->args[0].value = PG_GETARG_DATUM(ARG_KEY);
	cfc->args[0].isnull = false;
	cfc->args[1].value = PG_GETARG_DATUM(ARG_REQUEST);
	cfc->args[1].isnull = PG_ARGISNULL(ARG_REQUEST);
	if (handler->fn_strict && cfc->args[1].isnull)
		cfc->isnull = true;		/* what the executor would make of it */
	else
	{
		/*
		 * What the handler sets (set_config, SET, SET LOCAL, SET ROLE) is
		 * undone when it returns, as if it had been declared with a SET
		 * clause for every setting: the completion runs under the
		 * caller's settings and rights, and another request served in
		 * the same transaction (several calls in one statement, as the
		 * clients' group commit sends them) or on the same connection
		 * starts from them too, not from a setting an earlier request's
		 * handler made, such as the user a row-level security policy
		 * reads.  (An error undoes them with the subtransaction.)
		 */
		int			settings = NewGUCNestLevel();

		answer = FunctionCallInvoke(cfc);
		AtEOXact_GUC(false, settings);
	}
	if (cfc->isnull)
		c->nulls[OUT_STATUS] = true;
	else
	{
		HeapTupleHeader arow = DatumGetHeapTupleHeader(answer);

		check_answer_type(c->handler, arow, site->answer);
		for (int i = 0; i < site->answer->natts; i++)
			c->values[OUT_STATUS + i] = field(arow, site->answer, i + 1, &c->nulls[OUT_STATUS + i]);
	}
	status = c->nulls[OUT_STATUS] ? 0 : DatumGetInt32(c->values[OUT_STATUS]);
	if (status < 100 || status > 599)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("handler %s returned status %s", format_procedure(c->handler),
						c->nulls[OUT_STATUS] ? "NULL" : psprintf("%d", status)),
				 errhint("Return an HTTP status, 100 to 599.")));
	CommandCounterIncrement();

	/* idem_complete(key, token, response, status, scope, body, content_type, headers) */
	InitFunctionCallInfoData(*cfc, &site->complete, 8, InvalidOid, NULL, NULL);
	cfc->args[0].value = PG_GETARG_DATUM(ARG_KEY);
	cfc->args[0].isnull = false;
	cfc->args[1].value = token;
	cfc->args[1].isnull = isnull;
	cfc->args[2].value = (Datum) 0;
	cfc->args[2].isnull = true;
	cfc->args[3].value = c->values[OUT_STATUS];
	cfc->args[3].isnull = false;
	cfc->args[4].value = PG_GETARG_DATUM(ARG_SCOPE);
	cfc->args[4].isnull = PG_ARGISNULL(ARG_SCOPE);
	for (int i = 0; i < 3; i++)
	{
		cfc->args[5 + i].value = c->values[OUT_BODY + i];
		cfc->args[5 + i].isnull = c->nulls[OUT_BODY + i];
	}
	(void) FunctionCallInvoke(cfc);

	/* A server error's answer is given, not kept: a retry runs again. */
	return status < 500;
}

/*
 * The answer as a set of one row, for a caller other than the call node:
 * a tuple store of the row as built here, with the descriptor it was
 * built for (the caller checks it against the one it expects, so that a
 * row type altered since the statement was planned is refused, not read).
 */
static void
return_in_store(ReturnSetInfo *rsinfo, TupleDesc desc, Datum *values, bool *nulls)
{
	MemoryContext old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);

	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setDesc = CreateTupleDescCopy(desc);
	rsinfo->setResult = tuplestore_begin_heap(false, false, work_mem);
	MemoryContextSwitchTo(old);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

Datum
idem_serve(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ServeCall	c = {0};

	if (PG_ARGISNULL(ARG_HANDLER))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("handler must not be null"),
				 errhint("Pass the handler as a regprocedure, such as 'place_order(text, bytea)'.")));
	/* Refused where a set cannot be returned, before anything is done. */
	if (!IdemCallSinkOffered(fcinfo) &&
		(rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		 (rsinfo->allowedModes & SFRM_Materialize) == 0))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set"),
				 errhint("Call idem_serve in FROM: SELECT * FROM idempotency.idem_serve(...).")));
	c.fcinfo = fcinfo;
	c.site = serve_site(fcinfo);
	IdemCallSinkCheck(fcinfo, c.site->result->tupdesc);
	c.handler = PG_GETARG_OID(ARG_HANDLER);
	/* The handler is checked first, whatever the claim then finds. */
	c.call = check_handler(fcinfo, c.site, c.handler);
	may_execute(c.site->claim.fn_oid);

	/*
	 * The answer's values are allocated in this call's memory (the
	 * subtransaction runs in it), which a rollback leaves alone.
	 */
	(void) IdemInSubtransaction(serve_once, &c, 0, NULL);
	if (!IdemCallSinkTake(fcinfo, c.site->result->tupdesc, c.values, c.nulls))
		return_in_store(rsinfo, c.site->result->tupdesc, c.values, c.nulls);
	return (Datum) 0;
}
