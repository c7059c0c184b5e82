/*-------------------------------------------------------------------------
 *
 * memo.c
 *	  One answer per expression: a call repeated within one evaluation of
 *	  an expression gets the first call's result.
 *
 * SQL spreads a row-valued call over its columns by copying it:
 * SELECT (idem_claim('k')).* calls idem_claim once per column, so the
 * first call claims the key and the second finds it in progress, without
 * a token.  The functions that write and return a row (idem_claim,
 * idem_transition) therefore remember their last results: a call with the
 * same arguments, by the same user, from another call site (FmgrInfo) of
 * the same evaluation returns the remembered row instead of running again.
 *
 * "The same evaluation" is the memory context current at the call, which
 * the executor resets between rows and PL/pgSQL between statements: a
 * reset callback forgets what was remembered there.  A second call from
 * the same call site is a new evaluation (a loop, another row) and runs.
 * So do calls after any owner's call (idem_complete and the others
 * IdemMemoForget is called from) and after a subtransaction rolls back.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "idempotency.h"

/* Calls remembered per evaluation; past that, the oldest is dropped. */
#define MEMO_ENTRIES	8
#define MEMO_MAX_ARGS	8

typedef struct MemoEntry
{
	FmgrInfo   *site;			/* the call site that ran */
	Oid			fn;				/* the function */
	Oid			user;			/* as whom */
	int			nargs;
	Datum		args[MEMO_MAX_ARGS];
	bool		nulls[MEMO_MAX_ARGS];
	Datum		result;			/* a row: a varlena */
} MemoEntry;

typedef struct Memo
{
	MemoryContext cxt;			/* where entries live; NULL: empty */
	int			n;				/* entries used */
	int			next;			/* the slot the next one goes into */
	MemoEntry	entries[MEMO_ENTRIES];
} Memo;

static Memo *memo = NULL;
static bool subxact_callback_registered = false;

/* The memo's context is reset or deleted: what it held is gone. */
static void
memo_context_reset(void *arg)
{
	if (memo != NULL && memo->cxt == (MemoryContext) arg)
		memo = NULL;
}

static void
memo_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		memo = NULL;
}

/* Forget every remembered call: a write changed what they answered. */
void
IdemMemoForget(void)
{
	memo = NULL;
}

static bool
same_args(FunctionCallInfo fcinfo, const MemoEntry *e)
{
	if (e->nargs != fcinfo->nargs)
		return false;
	for (int i = 0; i < e->nargs; i++)
	{
		int16		typlen;
		bool		typbyval;

		if (e->nulls[i] != fcinfo->args[i].isnull)
			return false;
		if (e->nulls[i])
			continue;
		get_typlenbyval(get_fn_expr_argtype(fcinfo->flinfo, i), &typlen, &typbyval);
		if (!datumIsEqual(e->args[i], fcinfo->args[i].value, typbyval, typlen))
			return false;
	}
	return true;
}

/*
 * The remembered result of this call, or false.  Call after the
 * arguments are checked and before anything is read or written.
 */
bool
IdemMemoFind(FunctionCallInfo fcinfo, Datum *result)
{
	if (memo == NULL || memo->cxt != CurrentMemoryContext ||
		fcinfo->flinfo->fn_expr == NULL)
		return false;
	for (int i = 0; i < memo->n; i++)
	{
		MemoEntry  *e = &memo->entries[i];

		if (e->fn == fcinfo->flinfo->fn_oid && e->site != fcinfo->flinfo &&
			e->user == GetUserId() && same_args(fcinfo, e))
		{
			*result = datumCopy(e->result, false, -1);
			return true;
		}
	}
	return false;
}

/*
 * Remember the result (a row) of a call that ran, and return it.  Calls
 * made without an expression (from C) are not remembered.
 */
Datum
IdemMemoKeep(FunctionCallInfo fcinfo, Datum result)
{
	MemoryContext cxt = CurrentMemoryContext;
	MemoryContext old;
	MemoEntry  *e;

	if (fcinfo->nargs > MEMO_MAX_ARGS || fcinfo->flinfo->fn_expr == NULL)
		return result;
	if (!subxact_callback_registered)
	{
		RegisterSubXactCallback(memo_subxact_callback, NULL);
		subxact_callback_registered = true;
	}
	old = MemoryContextSwitchTo(cxt);
	if (memo == NULL || memo->cxt != cxt)
	{
		MemoryContextCallback *cb = palloc(sizeof(MemoryContextCallback));

		memo = palloc0(sizeof(Memo));
		memo->cxt = cxt;
		cb->func = memo_context_reset;
		cb->arg = cxt;
		MemoryContextRegisterResetCallback(cxt, cb);
	}
	e = &memo->entries[memo->next];
	memo->next = (memo->next + 1) % MEMO_ENTRIES;
	memo->n = Min(memo->n + 1, MEMO_ENTRIES);
	e->site = fcinfo->flinfo;
	e->fn = fcinfo->flinfo->fn_oid;
	e->user = GetUserId();
	e->nargs = fcinfo->nargs;
	for (int i = 0; i < e->nargs; i++)
	{
		e->nulls[i] = fcinfo->args[i].isnull;
		if (!e->nulls[i])
		{
			int16		typlen;
			bool		typbyval;

			get_typlenbyval(get_fn_expr_argtype(fcinfo->flinfo, i), &typlen, &typbyval);
			e->args[i] = datumCopy(fcinfo->args[i].value, typbyval, typlen);
		}
	}
	e->result = datumCopy(result, false, -1);
	MemoryContextSwitchTo(old);
	return result;
}
