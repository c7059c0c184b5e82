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
 * What a call answered is forgotten once something may have changed it: a
 * call that runs for the same object (idem_claim: the same key and scope;
 * idem_transition: the same table, since one row has many spellings of
 * its id), any owner's call (idem_complete and the others), a guard
 * judging a row, idem_purge (these call IdemMemoForget), and a rollback
 * of the subtransaction it ran in.  Arguments are equal only if their
 * types are too.
 *
 * The spread copies of a call are evaluated in one context when they are
 * columns of one target list.  Spread elsewhere too (a sort key, the
 * argument of a set-returning function, a wrapper function's result), a
 * copy evaluated in another context runs again: SELECT * FROM f(...) is
 * the form to use.  A call in FROM is nobody's copy (the executor runs it
 * once per scan, and tells by passing a ReturnSetInfo): it neither takes
 * nor leaves an answer, and only makes earlier ones about its object be
 * forgotten.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
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
	SubTransactionId subid;		/* in which subtransaction */
	int			nargs;
	Oid			types[MEMO_MAX_ARGS];
	Datum		args[MEMO_MAX_ARGS];
	bool		nulls[MEMO_MAX_ARGS];
	Datum		result;			/* a row: a varlena */
} MemoEntry;

typedef struct Memo
{
	MemoryContext cxt;			/* the context it lives in and serves */
	struct Memo *next;			/* the memo of another context */
	int			n;				/* entries used, oldest first */
	MemoEntry	entries[MEMO_ENTRIES];
} Memo;

/*
 * One memo per context that calls ran in: a call inside another (a
 * PL/pgSQL function in a target list) keeps its own, and leaves the outer
 * one as it was.  The list holds no memo past the end of the transaction.
 */
static Memo *memos = NULL;
static bool callbacks_registered = false;

/*
 * A type's length and whether it is passed by value, kept for the few
 * built-in types the remembered functions take (text, interval, ...): a
 * catalog look-up for each argument of each call is a good part of what
 * remembering costs.  A built-in type's storage never changes; a type of
 * the user's (idem_transition's id) is looked up every time, since its OID
 * could, after a DROP TYPE, one day name another type.
 */
static void
type_storage(Oid type, int16 *typlen, bool *typbyval)
{
	static struct
	{
		Oid			type;
		int16		typlen;
		bool		typbyval;
	}			known[8];
	static int	nknown = 0;

	for (int i = 0; i < nknown; i++)
		if (known[i].type == type)
		{
			*typlen = known[i].typlen;
			*typbyval = known[i].typbyval;
			return;
		}
	get_typlenbyval(type, typlen, typbyval);
	if (type < FirstNormalObjectId && nknown < (int) lengthof(known))
	{
		known[nknown].type = type;
		known[nknown].typlen = *typlen;
		known[nknown].typbyval = *typbyval;
		nknown++;
	}
}

/* Is this a call in FROM? */
static bool
in_from(FunctionCallInfo fcinfo)
{
	return fcinfo->resultinfo != NULL && IsA(fcinfo->resultinfo, ReturnSetInfo);
}

static Memo *
memo_of(MemoryContext cxt)
{
	for (Memo *m = memos; m != NULL; m = m->next)
		if (m->cxt == cxt)
			return m;
	return NULL;
}

/* A memo's context is reset or deleted: what it held is gone. */
static void
memo_context_reset(void *arg)
{
	for (Memo **m = &memos; *m != NULL; m = &(*m)->next)
		if ((*m)->cxt == (MemoryContext) arg)
		{
			*m = (*m)->next;
			return;
		}
}

/* Drop entry i of m, keeping the order of the others. */
static void
drop_entry(Memo *m, int i)
{
	memmove(&m->entries[i], &m->entries[i + 1], sizeof(MemoEntry) * (m->n - i - 1));
	m->n--;
}

/*
 * A subtransaction rolled back: what its calls (and those of the
 * subtransactions in it, whose ids are greater) answered is undone.
 */
static void
memo_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	for (Memo *m = memos; m != NULL; m = m->next)
		for (int i = m->n - 1; i >= 0; i--)
			if (m->entries[i].subid >= mySubid)
				drop_entry(m, i);
}

/* The transaction ended: its contexts are gone or going. */
static void
memo_xact_callback(XactEvent event, void *arg)
{
	memos = NULL;
}

/* Forget every remembered call: a write changed what they answered. */
void
IdemMemoForget(void)
{
	for (Memo *m = memos; m != NULL; m = m->next)
		m->n = 0;
}

/*
 * Is argument i of the call that of entry e: the same type and value?  A
 * varlena is compared by its bytes, whatever its header or compression
 * (a key read from a column has a short header, the same key written as a
 * literal a long one).
 */
static bool
same_arg(FunctionCallInfo fcinfo, const MemoEntry *e, int i)
{
	Oid			type = get_fn_expr_argtype(fcinfo->flinfo, i);
	int16		typlen;
	bool		typbyval;

	if (e->types[i] != type || e->nulls[i] != fcinfo->args[i].isnull)
		return false;
	if (e->nulls[i])
		return true;
	type_storage(type, &typlen, &typbyval);
	if (typlen == -1)
	{
		struct varlena *a = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(e->args[i]));
		struct varlena *b = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(fcinfo->args[i].value));

		return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
			memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
	}
	return datumIsEqual(e->args[i], fcinfo->args[i].value, typbyval, typlen);
}

static bool
same_args(FunctionCallInfo fcinfo, const MemoEntry *e)
{
	if (e->nargs != fcinfo->nargs)
		return false;
	for (int i = 0; i < e->nargs; i++)
		if (!same_arg(fcinfo, e, i))
			return false;
	return true;
}

/*
 * The remembered result of this call, or false.  Call after the
 * arguments are checked and before anything is read or written.
 */
bool
IdemMemoFind(FunctionCallInfo fcinfo, Datum *result)
{
	Memo	   *m;

	if (memos == NULL || fcinfo->flinfo->fn_expr == NULL || in_from(fcinfo) ||
		(m = memo_of(CurrentMemoryContext)) == NULL)
		return false;
	for (int i = 0; i < m->n; i++)
	{
		MemoEntry  *e = &m->entries[i];

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
 * A call of the function ran: forget what earlier calls answered about the
 * same object, the one its arguments identity[0..nidentity-1] name.
 */
static void
forget_object(FunctionCallInfo fcinfo, const int *identity, int nidentity)
{
	for (Memo *m = memos; m != NULL; m = m->next)
		for (int i = m->n - 1; i >= 0; i--)
		{
			MemoEntry  *e = &m->entries[i];
			bool		same = e->fn == fcinfo->flinfo->fn_oid && e->nargs == fcinfo->nargs;

			for (int k = 0; same && k < nidentity; k++)
				same = same_arg(fcinfo, e, identity[k]);
			if (same)
				drop_entry(m, i);
		}
}

/*
 * Remember the result (a row) of a call that ran, and return it; forget
 * first what was remembered about the same object (identity: the numbers
 * of the arguments that name it).  Calls made without an expression (from
 * C) are not remembered, but still make the memo forget.
 */
Datum
IdemMemoKeep(FunctionCallInfo fcinfo, Datum result, const int *identity, int nidentity)
{
	MemoryContext cxt = CurrentMemoryContext;
	MemoryContext old;
	MemoEntry  *e;
	Memo	   *m;

	if (fcinfo->nargs > MEMO_MAX_ARGS || fcinfo->flinfo->fn_expr == NULL)
	{
		IdemMemoForget();
		return result;
	}
	forget_object(fcinfo, identity, nidentity);
	if (in_from(fcinfo))
		return result;
	if (!callbacks_registered)
	{
		RegisterSubXactCallback(memo_subxact_callback, NULL);
		RegisterXactCallback(memo_xact_callback, NULL);
		callbacks_registered = true;
	}
	old = MemoryContextSwitchTo(cxt);
	m = memo_of(cxt);
	if (m == NULL)
	{
		MemoryContextCallback *cb = palloc(sizeof(MemoryContextCallback));

		m = palloc0(sizeof(Memo));
		m->cxt = cxt;
		m->next = memos;
		memos = m;
		cb->func = memo_context_reset;
		cb->arg = cxt;
		MemoryContextRegisterResetCallback(cxt, cb);
	}
	/* Full: the oldest goes. */
	if (m->n == MEMO_ENTRIES)
		drop_entry(m, 0);
	e = &m->entries[m->n++];
	e->site = fcinfo->flinfo;
	e->fn = fcinfo->flinfo->fn_oid;
	e->user = GetUserId();
	e->subid = GetCurrentSubTransactionId();
	e->nargs = fcinfo->nargs;
	for (int i = 0; i < e->nargs; i++)
	{
		e->types[i] = get_fn_expr_argtype(fcinfo->flinfo, i);
		e->nulls[i] = fcinfo->args[i].isnull;
		if (!e->nulls[i])
		{
			int16		typlen;
			bool		typbyval;

			type_storage(e->types[i], &typlen, &typbyval);
			e->args[i] = datumCopy(fcinfo->args[i].value, typbyval, typlen);
		}
	}
	e->result = datumCopy(result, false, -1);
	MemoryContextSwitchTo(old);
	return result;
}
