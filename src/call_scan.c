/*-------------------------------------------------------------------------
 *
 * call_scan.c
 *	  A call of idem_claim, idem_transition or idem_serve in FROM, run
 *	  without the function scan's tuple store.
 *
 * SELECT outcome, token FROM idem_claim(...) is how applications call the
 * extension: one statement, one row.  PostgreSQL runs a function in FROM
 * through a function scan, which is built for functions returning sets:
 * every execution creates a tuple store (a 16 kB array allocated and
 * freed), copies the one row into it and reads it back.  On a replay that
 * is a few per cent of the whole statement, which a primary-key SELECT
 * does not pay.
 *
 * So a planner hook replaces the function scan of these functions by a
 * custom scan that calls the function once, keeps its row and returns it
 * (idem_serve returns a set, of exactly one row: it is called once too).
 * The semantics are the function scan's:
 *   - the function is called once per scan, and again on a rescan only if
 *     a parameter its arguments read changed (a LATERAL reference);
 *     otherwise a rescan returns the same row;
 *   - it is called with a ReturnSetInfo, as from FROM (memo.c tells the
 *     call in FROM by it), after the same EXECUTE check, and counted by
 *     track_functions;
 *   - a null result is a row of nulls.
 *
 * idem_claim and idem_serve hand their row's columns to the node
 * (IdemCallSinkTake) instead of forming a composite value the node would
 * take apart again, or a tuple store it would read back, and the scan
 * tuple holds only the columns the query reads.
 *
 * The node is used only where a function scan would run as plainly: one
 * function, no ORDINALITY, no correlated subquery in its arguments (one
 * that is not correlated runs first, as an init plan, and reaches the call
 * as a parameter), no reference to the whole row, and no row marks at the query level (so that
 * EvalPlanQual, which substitutes rows of marked relations, never needs a
 * row from it).  Anywhere else the function scan stays.
 * idempotency.call_scan = off turns the node off for new plans.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/extensible.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/clauses.h"
#include "optimizer/optimizer.h"
#include "optimizer/pathnode.h"
#include "optimizer/paths.h"
#include "optimizer/restrictinfo.h"
#include "parser/parsetree.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/typcache.h"
#if PG_VERSION_NUM >= 180000
#include "commands/explain_format.h"
#include "commands/explain_state.h"
#else
#include "commands/explain.h"
#endif

#include "idempotency.h"

bool		idem_call_scan = true;

static set_rel_pathlist_hook_type prev_set_rel_pathlist = NULL;

/* The functions whose calls in FROM the node runs. */
extern Datum idem_claim(PG_FUNCTION_ARGS);
extern Datum idem_serve(PG_FUNCTION_ARGS);
extern Datum idem_transition(PG_FUNCTION_ARGS);

/*
 * A private mode bit in the ReturnSetInfo the node passes: the function
 * may hand over its row's columns (IdemCallSinkTake).  No mode PostgreSQL
 * defines uses it.
 */
#define CALL_SCAN_SINK	0x40000000

typedef struct CallScanState
{
	CustomScanState css;
	FuncExpr   *call;
	FmgrInfo	flinfo;
	FunctionCallInfo fcinfo;
	ExprState **args;			/* per argument; NULL for a constant */
	ReturnSetInfo rsinfo;
	TupleDesc	begin_desc;		/* the row type at the start, if rows come composite */
	int			ncols;			/* columns of the scan tuple */
	AttrNumber *attnos;			/* the result column of each */
	Datum	   *values;			/* the row, as the scan tuple has it */
	bool	   *nulls;
	MemoryContext call_cxt;		/* where the row lives */
	MemoryContext recall_cxt;	/* for calls after the first, reset each */
	Bitmapset  *params;			/* PARAM_EXEC ids the arguments read */
	bool		params_known;
	bool		row_null;		/* the call returned null */
	TupleDesc	checked_desc;	/* a row type the columns were checked against */
	bool		taken;			/* the function handed the row over */
	bool		called;			/* the row answers the current parameters */
	bool		ever_called;
	int			pos;			/* before the row (0), on it (1), past it (2) */
} CallScanState;

static Plan *plan_call_scan(PlannerInfo *root, RelOptInfo *rel, CustomPath *best_path,
							List *tlist, List *clauses, List *custom_plans);
static Node *create_call_scan_state(CustomScan *cscan);
static void begin_call_scan(CustomScanState *node, EState *estate, int eflags);
static TupleTableSlot *exec_call_scan(CustomScanState *node);
static void end_call_scan(CustomScanState *node);
static void rescan_call_scan(CustomScanState *node);
static void explain_call_scan(CustomScanState *node, List *ancestors, ExplainState *es);

static const CustomPathMethods call_path_methods = {
	.CustomName = "IdempotencyCall",
	.PlanCustomPath = plan_call_scan,
};

static const CustomScanMethods call_scan_methods = {
	.CustomName = "IdempotencyCall",
	.CreateCustomScanState = create_call_scan_state,
};

static const CustomExecMethods call_exec_methods = {
	.CustomName = "IdempotencyCall",
	.BeginCustomScan = begin_call_scan,
	.ExecCustomScan = exec_call_scan,
	.EndCustomScan = end_call_scan,
	.ReScanCustomScan = rescan_call_scan,
	.ExplainCustomScan = explain_call_scan,
};

/*
 * Is fn one of the functions the node runs?  Of those returning a set,
 * only idem_serve, which returns exactly one row.
 */
static bool
runs_here(Oid fn, bool retset)
{
	FmgrInfo	flinfo;
	HeapTuple	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	bool		in_c;

	if (!HeapTupleIsValid(proc))
		return false;
	in_c = ((Form_pg_proc) GETSTRUCT(proc))->prolang == ClanguageId;
	ReleaseSysCache(proc);
	if (!in_c)
		return false;
	fmgr_info(fn, &flinfo);
	if (retset)
		return flinfo.fn_addr == idem_serve;
	return flinfo.fn_addr == idem_claim || flinfo.fn_addr == idem_transition;
}

/*
 * The call information of the functions the node runs, as fmgr_info
 * builds it, kept per backend: looking it up again (the pg_proc row, then
 * the library's symbol) is a good part of what starting a scan costs.
 * Only plain C functions of ours are kept (a security definer, a function
 * with settings or one an fmgr hook wraps is not one: runs_here), and a
 * change to any pg_proc row empties the list.  While an fmgr hook is
 * loaded, which may want to wrap any call, it is not used.
 */
static struct
{
	Oid			fn;
	FmgrInfo	flinfo;
}			known_fns[3];
static int	nknown_fns = 0;

/* A pg_proc row changed (util.c's catalog watch): look them up again. */
void
IdemCallScanForget(void)
{
	nknown_fns = 0;
}

static void
call_fmgr_info(Oid fn, FmgrInfo *flinfo)
{
	bool		hooked = needs_fmgr_hook != NULL;

	for (int i = 0; !hooked && i < nknown_fns; i++)
		if (known_fns[i].fn == fn)
		{
			*flinfo = known_fns[i].flinfo;
			flinfo->fn_mcxt = CurrentMemoryContext;
			return;
		}
	fmgr_info(fn, flinfo);
	if (hooked || nknown_fns == lengthof(known_fns) ||
		(flinfo->fn_addr != idem_claim && flinfo->fn_addr != idem_serve &&
		 flinfo->fn_addr != idem_transition))
		return;
	IdemWatchCatalogs();
	known_fns[nknown_fns].fn = fn;
	known_fns[nknown_fns].flinfo = *flinfo;
	nknown_fns++;
}

/* Does the query need the whole row, or a column the row type dropped? */
static bool
needs_whole_row(RelOptInfo *rel, TupleDesc desc)
{
	Bitmapset  *attrs = NULL;
	ListCell   *lc;

	pull_varattnos((Node *) rel->reltarget->exprs, rel->relid, &attrs);
	foreach(lc, rel->baserestrictinfo)
		pull_varattnos((Node *) lfirst_node(RestrictInfo, lc)->clause, rel->relid, &attrs);
	if (bms_is_member(InvalidAttrNumber - FirstLowInvalidHeapAttributeNumber, attrs))
		return true;
	for (int i = 0; i < desc->natts; i++)
		if (TupleDescAttr(desc, i)->attisdropped)
			return true;
	return false;
}

/*
 * set_rel_pathlist_hook: give a call of ours in FROM the custom path in
 * place of its function scan path.
 */
static void
call_scan_paths(PlannerInfo *root, RelOptInfo *rel, Index rti, RangeTblEntry *rte)
{
	RangeTblFunction *rtfunc;
	FuncExpr   *call;
	TupleDesc	desc;
	List	   *paths = NIL;
	ListCell   *lc;
	bool		usable;

	if (prev_set_rel_pathlist)
		prev_set_rel_pathlist(root, rel, rti, rte);
	if (!idem_call_scan || rte->rtekind != RTE_FUNCTION || rte->funcordinality ||
		list_length(rte->functions) != 1 || rel->reloptkind != RELOPT_BASEREL ||
		root->rowMarks != NIL ||
		(root->parse->commandType != CMD_SELECT && root->parse->commandType != CMD_INSERT))
		return;
	rtfunc = linitial_node(RangeTblFunction, rte->functions);
	if (!IsA(rtfunc->funcexpr, FuncExpr))
		return;
	call = (FuncExpr *) rtfunc->funcexpr;
	if (get_typtype(call->funcresulttype) != TYPTYPE_COMPOSITE ||
		contain_subplans((Node *) call->args) || !runs_here(call->funcid, call->funcretset))
		return;
	desc = lookup_rowtype_tupdesc(call->funcresulttype, -1);
	usable = desc->natts == rel->max_attr && !needs_whole_row(rel, desc);
	ReleaseTupleDesc(desc);
	if (!usable)
		return;

	foreach(lc, rel->pathlist)
	{
		Path	   *scan = lfirst(lc);
		CustomPath *path;

		if (!IsA(scan, Path) || scan->pathtype != T_FunctionScan)
			return;				/* someone else's: leave them all */
		if (scan->param_info != NULL)
		{
			Bitmapset  *joined = NULL;

			/* Join conditions checked at the scan must not need the whole row. */
			pull_varattnos((Node *) extract_actual_clauses(scan->param_info->ppi_clauses, false),
						   rel->relid, &joined);
			if (bms_is_member(InvalidAttrNumber - FirstLowInvalidHeapAttributeNumber, joined))
				return;
		}
		path = makeNode(CustomPath);
		path->path = *scan;		/* its rows, costs, target, parameters */
		path->path.type = T_CustomPath;
		path->path.pathtype = T_CustomScan;
		path->path.parallel_safe = false;	/* run where it is planned */
		path->flags = CUSTOMPATH_SUPPORT_PROJECTION | CUSTOMPATH_SUPPORT_BACKWARD_SCAN;
		path->methods = &call_path_methods;
		paths = lappend(paths, path);
	}
	rel->pathlist = paths;
}

/*
 * The CustomScan: the call in custom_exprs, and as the scan tuple the
 * result columns the query reads, in the order of the target list when it
 * is only such columns (then nothing needs projecting), custom_private
 * naming them.
 */
static Plan *
plan_call_scan(PlannerInfo *root, RelOptInfo *rel, CustomPath *best_path,
			   List *tlist, List *clauses, List *custom_plans)
{
	RangeTblEntry *rte = planner_rt_fetch(rel->relid, root);
	FuncExpr   *call = castNode(FuncExpr, linitial_node(RangeTblFunction, rte->functions)->funcexpr);
	CustomScan *cscan = makeNode(CustomScan);
	List	   *quals = extract_actual_clauses(clauses, false);
	TupleDesc	desc = lookup_rowtype_tupdesc(call->funcresulttype, -1);
	Bitmapset  *used = NULL;
	List	   *scan_tlist = NIL;
	List	   *attnos = NIL;
	ListCell   *lc;
	int			attno;

	/*
	 * What the path promises (tlist may be empty, when a projection above
	 * replaces it) and what the quals read.
	 */
	pull_varattnos((Node *) best_path->path.pathtarget->exprs, rel->relid, &used);
	pull_varattnos((Node *) tlist, rel->relid, &used);
	pull_varattnos((Node *) quals, rel->relid, &used);

	/* The target list's own columns first, in its order. */
	foreach(lc, tlist)
	{
		Var		   *var = (Var *) lfirst_node(TargetEntry, lc)->expr;

		if (!IsA(var, Var) || (Index) var->varno != rel->relid || var->varlevelsup != 0 ||
			var->varattno <= 0 || list_member_int(attnos, var->varattno))
			continue;
		attnos = lappend_int(attnos, var->varattno);
	}
	attno = -1;
	while ((attno = bms_next_member(used, attno)) >= 0)
	{
		AttrNumber	a = attno + FirstLowInvalidHeapAttributeNumber;

		if (a > 0 && !list_member_int(attnos, a))
			attnos = lappend_int(attnos, a);
	}
	foreach(lc, attnos)
	{
		Form_pg_attribute att = TupleDescAttr(desc, lfirst_int(lc) - 1);

		scan_tlist = lappend(scan_tlist,
							 makeTargetEntry((Expr *) makeVar(rel->relid, lfirst_int(lc), att->atttypid,
															  att->atttypmod, att->attcollation, 0),
											 list_length(scan_tlist) + 1, NULL, false));
	}
	ReleaseTupleDesc(desc);

	cscan->scan.plan.targetlist = tlist;
	cscan->scan.plan.qual = quals;
	cscan->scan.scanrelid = 0;	/* no relation to open: the columns are the scan tuple */
	cscan->flags = best_path->flags;
	cscan->custom_exprs = list_make1(call);	/* setrefs and nestloop params reach it */
	cscan->custom_private = attnos;
	cscan->custom_scan_tlist = scan_tlist;
	cscan->methods = &call_scan_methods;
	return &cscan->scan.plan;
}

static Node *
create_call_scan_state(CustomScan *cscan)
{
	CallScanState *st = palloc0(sizeof(CallScanState));

	NodeSetTag(st, T_CustomScanState);
	st->css.methods = &call_exec_methods;
	return (Node *) st;
}

/* Collect the PARAM_EXEC ids an expression reads. */
static bool
collect_params(Node *node, Bitmapset **params)
{
	if (node == NULL)
		return false;
	if (IsA(node, Param) && ((Param *) node)->paramkind == PARAM_EXEC)
		*params = bms_add_member(*params, ((Param *) node)->paramid);
	return expression_tree_walker(node, collect_params, params);
}

static void
changed_type(CallScanState *st);

/*
 * The columns the plan reads, in a row type as it is now (desc): each must
 * still be there with the type the plan was made for (the scan tuple's).
 * Checked whenever a row is taken, against the row's own descriptor, not a
 * type cache entry a cache reset could have emptied since.
 */
static void
check_columns(CallScanState *st, TupleDesc desc)
{
	TupleDesc	scandesc = st->css.ss.ss_ScanTupleSlot->tts_tupleDescriptor;

	if (desc->tdtypeid != st->call->funcresulttype)
		changed_type(st);
	for (int c = 0; c < st->ncols; c++)
	{
		Form_pg_attribute want = TupleDescAttr(scandesc, c);
		Form_pg_attribute have;

		if (st->attnos[c] > desc->natts)
			changed_type(st);
		have = TupleDescAttr(desc, st->attnos[c] - 1);
		if (have->attisdropped || have->atttypid != want->atttypid ||
			have->atttypmod != want->atttypmod)
			changed_type(st);
	}
}

/*
 * The same physical layout, column for column, as tupledesc_match asks of
 * a function scan's rows: a composite value built for one is read with the
 * other.
 */
static bool
same_layout(TupleDesc a, TupleDesc b)
{
	if (a->natts != b->natts)
		return false;
	for (int i = 0; i < a->natts; i++)
	{
		Form_pg_attribute x = TupleDescAttr(a, i);
		Form_pg_attribute y = TupleDescAttr(b, i);

		if (x->attisdropped != y->attisdropped || x->atttypid != y->atttypid ||
			x->attlen != y->attlen || x->attbyval != y->attbyval || x->attalign != y->attalign)
			return false;
	}
	return true;
}

static void
changed_type(CallScanState *st)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATATYPE_MISMATCH),
			 errmsg("the result type of %s changed after the statement was planned",
					get_func_name(st->call->funcid)),
			 errhint("Run the statement again.")));
}

static void
begin_call_scan(CustomScanState *node, EState *estate, int eflags)
{
	CallScanState *st = (CallScanState *) node;
	CustomScan *cscan = (CustomScan *) node->ss.ps.plan;
	FuncExpr   *call = linitial_node(FuncExpr, cscan->custom_exprs);
	TupleDesc	scandesc = node->ss.ss_ScanTupleSlot->tts_tupleDescriptor;
	AclResult	acl;
	int			nargs = list_length(call->args);
	int			i = 0;
	ListCell   *lc;

	st->call = call;

	/* As a function scan checks at its start. */
	acl = idem_proc_aclcheck(call->funcid, GetUserId(), ACL_EXECUTE);
	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_FUNCTION, get_func_name(call->funcid));
	InvokeFunctionExecuteHook(call->funcid);

	st->ncols = list_length(cscan->custom_private);
	if (st->ncols != scandesc->natts)
		changed_type(st);
	st->attnos = palloc(sizeof(AttrNumber) * Max(st->ncols, 1));
	foreach(lc, cscan->custom_private)
		st->attnos[foreach_current_index(lc)] = lfirst_int(lc);
	st->values = palloc(sizeof(Datum) * Max(st->ncols, 1));
	st->nulls = palloc(sizeof(bool) * Max(st->ncols, 1));
	st->call_cxt = CurrentMemoryContext;	/* the query's */

	call_fmgr_info(call->funcid, &st->flinfo);
	fmgr_info_set_expr((Node *) call, &st->flinfo);

	/*
	 * The columns the plan reads must still be the result type's.
	 * idem_claim and idem_serve check them against the type they fill
	 * before they do anything (IdemCallSinkCheck); the others return a
	 * row, checked here and against this layout when it comes.
	 */
	if (st->flinfo.fn_addr != idem_claim && st->flinfo.fn_addr != idem_serve)
	{
		st->begin_desc = lookup_rowtype_tupdesc_copy(call->funcresulttype, -1);
		check_columns(st, st->begin_desc);
	}
	st->fcinfo = palloc0(SizeForFunctionCallInfo(nargs));
	InitFunctionCallInfoData(*st->fcinfo, &st->flinfo, nargs, call->inputcollid,
							 NULL, (Node *) &st->rsinfo);
	st->args = palloc0(sizeof(ExprState *) * Max(nargs, 1));
	foreach(lc, call->args)
	{
		Expr	   *arg = lfirst(lc);

		if (IsA(arg, Const))
		{
			st->fcinfo->args[i].value = ((Const *) arg)->constvalue;
			st->fcinfo->args[i].isnull = ((Const *) arg)->constisnull;
		}
		else
			st->args[i] = ExecInitExpr(arg, &node->ss.ps);
		i++;
	}
}

/* The node making this call, which takes a row handed over, or NULL. */
static CallScanState *
sink_of(FunctionCallInfo fcinfo)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CallScanState *st;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) || !(rsinfo->allowedModes & CALL_SCAN_SINK))
		return NULL;
	st = (CallScanState *) ((char *) rsinfo - offsetof(CallScanState, rsinfo));
	return st->fcinfo == fcinfo ? st : NULL;
}

/* Is the call the node's (IdemCallSinkTake will take the row)? */
bool
IdemCallSinkOffered(FunctionCallInfo fcinfo)
{
	return sink_of(fcinfo) != NULL;
}

/*
 * Called by idem_claim and idem_serve with the row type they fill, before
 * they read or write anything: if the call comes from the node, the
 * columns its plan reads must still be of that type.  A plan made before
 * the type changed is refused before the call has any effect.
 */
void
IdemCallSinkCheck(FunctionCallInfo fcinfo, TupleDesc desc)
{
	CallScanState *st = sink_of(fcinfo);

	if (st == NULL)
		return;
	check_columns(st, desc);
	st->checked_desc = desc;
}

/*
 * Called by idem_claim and idem_serve with their result row: if the call
 * comes from the node, take the columns the scan reads (copied into the
 * node's memory, out of a toast table as a composite value would be) and
 * return true; the function then returns no value of its own.
 */
bool
IdemCallSinkTake(FunctionCallInfo fcinfo, TupleDesc desc, const Datum *values, const bool *nulls)
{
	CallScanState *st = sink_of(fcinfo);
	MemoryContext old;

	if (st == NULL)
		return false;
	if (desc != st->checked_desc)
		check_columns(st, desc);
	old = MemoryContextSwitchTo(st->call_cxt);
	for (int c = 0; c < st->ncols; c++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, st->attnos[c] - 1);
		Datum		v = values[st->attnos[c] - 1];

		st->nulls[c] = nulls[st->attnos[c] - 1];
		if (!st->nulls[c] && att->attlen == -1 && VARATT_IS_EXTERNAL(DatumGetPointer(v)))
			v = PointerGetDatum(detoast_external_attr((struct varlena *) DatumGetPointer(v)));
		else if (!st->nulls[c])
			v = datumCopy(v, att->attbyval, att->attlen);
		st->values[c] = v;
	}
	MemoryContextSwitchTo(old);
	st->taken = true;
	return true;
}

/*
 * Call the function and keep its row.  The first call runs in the query's
 * memory, so that the row lives as long as the scan; a call after a
 * parameter changed runs in memory of its own, reset at the next.
 */
static void
call_function(CallScanState *st, ExprContext *econtext)
{
	FunctionCallInfo fcinfo = st->fcinfo;
	MemoryContext old;
	bool		null_arg = false;
	Datum		result = (Datum) 0;
	bool		isnull = true;

	if (st->ever_called)
	{
		if (st->recall_cxt == NULL)
			st->recall_cxt = AllocSetContextCreate(st->call_cxt, "idempotency call",
												   ALLOCSET_DEFAULT_SIZES);
		MemoryContextReset(st->recall_cxt);
		st->call_cxt = st->recall_cxt;
	}
	old = MemoryContextSwitchTo(st->call_cxt);
	for (int i = 0; i < fcinfo->nargs; i++)
	{
		if (st->args[i] != NULL)
			fcinfo->args[i].value = ExecEvalExpr(st->args[i], econtext, &fcinfo->args[i].isnull);
		null_arg |= fcinfo->args[i].isnull;
	}

	/* A strict function with a null argument returns null: not called. */
	st->taken = false;
	if (!st->flinfo.fn_strict || !null_arg)
	{
		PgStat_FunctionCallUsage usage;

		memset(&st->rsinfo, 0, sizeof(st->rsinfo));
		st->rsinfo.type = T_ReturnSetInfo;
		st->rsinfo.econtext = econtext;
		/* Only a function returning record reads expectedDesc: none here. */
		st->rsinfo.expectedDesc = NULL;
		st->rsinfo.allowedModes = (int) (SFRM_ValuePerCall | SFRM_Materialize | CALL_SCAN_SINK);
		st->rsinfo.returnMode = SFRM_ValuePerCall;
		st->rsinfo.isDone = ExprSingleResult;
		fcinfo->isnull = false;
		pgstat_init_function_usage(fcinfo, &usage);
		result = FunctionCallInvoke(fcinfo);
		pgstat_end_function_usage(&usage, true);
		isnull = fcinfo->isnull;
		if (st->rsinfo.returnMode != SFRM_ValuePerCall || st->rsinfo.isDone != ExprSingleResult)
			elog(ERROR, "function %u returned a set in a call scan", st->call->funcid);
	}
	st->row_null = isnull && !st->taken;
	if (!isnull && !st->taken)
	{
		/* A composite value: take it apart, as its type is now. */
		HeapTupleHeader td = DatumGetHeapTupleHeader(result);
		TupleDesc	rowdesc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(td),
													 HeapTupleHeaderGetTypMod(td));
		HeapTupleData tuple;
		Datum	   *all = palloc(sizeof(Datum) * rowdesc->natts);
		bool	   *allnulls = palloc(sizeof(bool) * rowdesc->natts);

		check_columns(st, rowdesc);
		if (st->begin_desc != NULL && !same_layout(rowdesc, st->begin_desc))
			changed_type(st);
		tuple.t_len = HeapTupleHeaderGetDatumLength(td);
		ItemPointerSetInvalid(&tuple.t_self);
		tuple.t_tableOid = InvalidOid;
		tuple.t_data = td;
		heap_deform_tuple(&tuple, rowdesc, all, allnulls);
		for (int c = 0; c < st->ncols; c++)
		{
			st->values[c] = all[st->attnos[c] - 1];
			st->nulls[c] = allnulls[st->attnos[c] - 1];
		}
		ReleaseTupleDesc(rowdesc);
	}
	MemoryContextSwitchTo(old);
	st->called = true;
	st->ever_called = true;
}

/*
 * The one row, then nothing; qual and projection as any scan applies them.
 * Backward as a function scan's tuple store reads: from past the end back
 * onto the row, from the row back to before it (nothing).
 */
static TupleTableSlot *
exec_call_scan(CustomScanState *node)
{
	CallScanState *st = (CallScanState *) node;
	ExprContext *econtext = node->ss.ps.ps_ExprContext;
	TupleTableSlot *slot = node->ss.ss_ScanTupleSlot;
	ProjectionInfo *proj = node->ss.ps.ps_ProjInfo;
	ExprState  *qual = node->ss.ps.qual;
	bool		forward = ScanDirectionIsForward(node->ss.ps.state->es_direction);

	CHECK_FOR_INTERRUPTS();
	ResetExprContext(econtext);
	ExecClearTuple(slot);
	if (forward ? st->pos == 0 : st->pos == 2)
	{
		st->pos = 1;
		if (!st->called)
			call_function(st, econtext);
		for (int c = 0; c < st->ncols; c++)
		{
			slot->tts_values[c] = st->values[c];
			slot->tts_isnull[c] = st->row_null || st->nulls[c];
		}
		ExecStoreVirtualTuple(slot);
		econtext->ecxt_scantuple = slot;
		if (qual == NULL || ExecQual(qual, econtext))
			return proj != NULL ? ExecProject(proj) : slot;
		/* Filtered out: a scan reads on past it, to the end. */
		InstrCountFiltered1(node, 1);
		ExecClearTuple(slot);
	}
	st->pos = forward ? 2 : 0;
	return proj != NULL ? ExecClearTuple(proj->pi_state.resultslot) : slot;
}

static void
end_call_scan(CustomScanState *node)
{
	/* Everything is in the query's memory. */
}

/* A rescan returns the same row, unless the arguments' parameters changed. */
static void
rescan_call_scan(CustomScanState *node)
{
	CallScanState *st = (CallScanState *) node;

	st->pos = 0;
	if (node->ss.ps.chgParam == NULL)
		return;
	if (!st->params_known)
	{
		collect_params((Node *) st->call->args, &st->params);
		st->params_known = true;
	}
	if (bms_overlap(node->ss.ps.chgParam, st->params))
		st->called = false;
}

/* EXPLAIN names the call, as for a function scan. */
static void
explain_call_scan(CustomScanState *node, List *ancestors, ExplainState *es)
{
	CallScanState *st = (CallScanState *) node;

	if (es->verbose)
	{
		List	   *context = set_deparse_context_plan(es->deparse_cxt, node->ss.ps.plan, ancestors);

		ExplainPropertyText("Function Call",
							deparse_expression((Node *) st->call, context, true, false), es);
	}
	else
	{
		CustomScan *cscan = (CustomScan *) node->ss.ps.plan;
		RangeTblEntry *rte = rt_fetch(bms_singleton_member(cscan->custom_relids), es->rtable);
		char	   *name = get_func_name(st->call->funcid);

		/* Named as a function scan names it: the function, and an alias. */
		if (strcmp(rte->eref->aliasname, name) != 0)
			name = psprintf("%s %s", name, quote_identifier(rte->eref->aliasname));
		ExplainPropertyText("Function", name, es);
	}
}

void
IdemCallScanInit(void)
{
	RegisterCustomScanMethods(&call_scan_methods);
	prev_set_rel_pathlist = set_rel_pathlist_hook;
	set_rel_pathlist_hook = call_scan_paths;
}
