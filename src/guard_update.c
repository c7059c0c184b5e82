/*-------------------------------------------------------------------------
 *
 * guard_update.c
 *	  Guarded UPDATEs checked by the statement itself, without the row
 *	  trigger.
 *
 * Any BEFORE UPDATE row trigger makes PostgreSQL lock each row, with a WAL
 * record, before calling it (GetTupleForTrigger): on a bulk UPDATE that
 * costs more than everything the guard does.  So when an UPDATE of a
 * guarded table is planned, the planner hook plans a copy of it in which
 * the statement checks itself:
 *
 *	  UPDATE t SET state = <new>, ... WHERE <quals>
 *
 * is planned as
 *
 *	  UPDATE t SET state = idem_guard_check(t, guard, t.ctid, t.state, <new>,
 *											 <version set?>, t.version, <set version>),
 *				   version = idem_guard_bump(t, guard, t.version, ...), ...
 *	  WHERE <quals> AND idem_guard_differs(t, guard, t.ctid, t.state, <new>,
 *										   t.col, <new col>, ...)
 *
 * idem_guard_differs() is false for a repeat (same state, nothing else
 * changed), which is then skipped; it is moved to the end of the scan's
 * quals so that only rows the statement targets reach it.
 * idem_guard_check() applies the same rules as the trigger (GuardJudge)
 * and returns the new state; idem_guard_bump() returns the next version.
 * When the plan has that shape (the checks read the target table's own
 * columns in its scan), the executor-start hook takes the guard's UPDATE
 * event out of that execution's private copy of the trigger list, and no
 * row is locked before its update.  Anything else (a join, a view with
 * subqueries, MERGE, ON CONFLICT, volatile SET expressions, another BEFORE
 * UPDATE trigger, a backend that had not loaded the library when it
 * planned) is planned as written and the trigger checks it.
 *
 * Who may call the checks.  They are installed for PUBLIC, since whoever
 * updates a guarded table runs them, and they lock rows.  So they act only
 * for the expression nodes the planner hook put into the running
 * statement's plan, recorded at executor start and compared with the
 * node the call comes from (flinfo->fn_expr); the same functions written
 * anywhere else (a WHERE clause, a subquery, RETURNING, a trigger or a
 * foreign key cascade the UPDATE fires, a function it calls) are refused
 * before any row is looked at.  A statement that names them itself is
 * not rewritten at all.  Behind that, a row address is checked to be a
 * row of the table's page before it is locked.
 *
 * Concurrency.  The trigger judges the latest version of a row, locked;
 * the statement's checks see the row its snapshot saw.  They agree because
 * a check about to refuse, or to skip a repeat, first locks the row it was
 * given (row_is_current): if that row is the latest, the verdict stands; if
 * another transaction has updated it, the check lets the update go on,
 * PostgreSQL finds the newer version and re-evaluates the statement on it
 * (READ COMMITTED) or raises a serialization failure (REPEATABLE READ),
 * just as with the trigger.  Allowed updates lock nothing beyond what the
 * UPDATE itself does.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/sysattr.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "optimizer/planner.h"
#include "parser/parse_func.h"
#include "parser/parse_relation.h"
#include "parser/parsetree.h"
#include "rewrite/rewriteManip.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "guard.h"
#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_guard_check);
PG_FUNCTION_INFO_V1(idem_guard_bump);
PG_FUNCTION_INFO_V1(idem_guard_differs);

/* idempotency.guard_rewrite */
bool		idem_guard_rewrite = true;

static planner_hook_type prev_planner = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;

/*
 * The three calls a self-checking UPDATE's plan makes: the expression
 * nodes the planner hook put into it, found again in the finished plan.
 */
typedef struct GuardPlanCalls
{
	Oid			tgoid;			/* the guard they name */
	FuncExpr   *check;			/* the state column's new value */
	FuncExpr   *bump;			/* the version column's, or NULL */
	FuncExpr   *differs;		/* the scan's last qual */
} GuardPlanCalls;

/*
 * The self-checking UPDATEs running now, innermost first.  A check
 * function acts only when the expression node it is called from
 * (flinfo->fn_expr) is one of the calls recorded here for a running
 * UPDATE: the executor sets fn_expr to the plan's own node, so a call
 * written anywhere else (by hand, in a WHERE clause or subquery, in
 * RETURNING, in a trigger or another function run by the statement) is
 * a different node and is refused before any row is looked at.  The
 * check then locks rows with that UPDATE's command id and lock mode.  An
 * entry goes at ExecutorEnd, or when its (sub)transaction aborts.
 */
typedef struct GuardedStatement
{
	QueryDesc  *query;			/* the running UPDATE */
	Oid			relid;			/* its guarded table */
	GuardPlanCalls calls;		/* the guard and its plan's calls */
	CommandId	cid;			/* the UPDATE's command id */
	LockTupleMode lockmode;		/* the row lock its updates take */
	SubTransactionId subid;		/* where it runs */
	struct GuardedStatement *next;	/* the statement it runs within */
} GuardedStatement;

static GuardedStatement *running = NULL;
static bool xact_callbacks = false;

/* Argument positions shared by the three functions. */
#define ARG_RELID		0
#define ARG_TGOID		1
#define ARG_CTID		2		/* check and differs */
#define ARG_OLD_STATE	3
#define ARG_NEW_STATE	4
#define ARG_VERSION_SET 5		/* check */
#define ARG_OLD_VERSION 6
#define ARG_NEW_VERSION 7
#define ARG_FIRST_PAIR	5		/* differs: old/new pairs of other columns */
#define ARG_BUMP_OLD	2		/* bump */
#define ARG_BUMP_SET	3
#define ARG_BUMP_NEW	4

/*
 * The functions' OIDs, looked up when first needed and forgotten when
 * pg_proc changes (the extension dropped and created again, say).
 */
typedef struct GuardFuncs
{
	bool		valid;
	Oid			check;
	Oid			bump4;
	Oid			bump8;
	Oid			differs;
	Oid			trigger;
} GuardFuncs;

static GuardFuncs funcs;
static bool funcs_callback = false;

static void
funcs_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	funcs.valid = false;
}

static Oid
guard_func(const char *name, int nargs, Oid *argtypes)
{
	return LookupFuncName(list_make2(makeString("idempotency"), makeString(pstrdup(name))),
						  nargs, argtypes, true);
}

/* The functions, or NULL when the extension is not installed here. */
static GuardFuncs *
guard_funcs(void)
{
	if (!funcs_callback)
	{
		CacheRegisterSyscacheCallback(PROCOID, funcs_invalidate, (Datum) 0);
		funcs_callback = true;
	}
	if (!funcs.valid)
	{
		Oid			check_args[] = {OIDOID, OIDOID, TIDOID, ANYELEMENTOID, ANYELEMENTOID,
		BOOLOID, ANYOID, ANYOID};
		Oid			bump4_args[] = {OIDOID, OIDOID, INT4OID, BOOLOID, INT4OID};
		Oid			bump8_args[] = {OIDOID, OIDOID, INT8OID, BOOLOID, INT8OID};
		Oid			differs_args[] = {OIDOID, OIDOID, TIDOID, ANYELEMENTOID, ANYELEMENTOID,
		ANYOID};

		if (get_namespace_oid("idempotency", true) == InvalidOid)
			return NULL;
		funcs.check = guard_func("idem_guard_check", lengthof(check_args), check_args);
		funcs.bump4 = guard_func("idem_guard_bump", lengthof(bump4_args), bump4_args);
		funcs.bump8 = guard_func("idem_guard_bump", lengthof(bump8_args), bump8_args);
		funcs.differs = guard_func("idem_guard_differs", lengthof(differs_args), differs_args);
		funcs.trigger = guard_func("idem_guard_trigger", 0, NULL);
		if (!OidIsValid(funcs.check) || !OidIsValid(funcs.bump4) || !OidIsValid(funcs.bump8) ||
			!OidIsValid(funcs.differs) || !OidIsValid(funcs.trigger))
			return NULL;
		funcs.valid = true;
	}
	return &funcs;
}

/* The OID of idempotency.idem_guard_trigger(), or InvalidOid. */
Oid
GuardTriggerFunction(void)
{
	GuardFuncs *f = guard_funcs();

	return f ? f->trigger : InvalidOid;
}

/*
 * The guard trigger of a table whose UPDATEs the statement can check: the
 * only BEFORE UPDATE row trigger, enabled, with no WHEN clause and no
 * column list.  NULL if
 * there is none or anything else is in the way.
 */
static Trigger *
guard_trigger(TriggerDesc *td, GuardFuncs *f, Oid tgoid)
{
	Trigger    *found = NULL;

	if (td == NULL)
		return NULL;
	for (int i = 0; i < td->numtriggers; i++)
	{
		Trigger    *tg = &td->triggers[i];

		if (!TRIGGER_TYPE_MATCHES(tg->tgtype, TRIGGER_TYPE_ROW, TRIGGER_TYPE_BEFORE,
								  TRIGGER_TYPE_UPDATE))
			continue;
		if (found != NULL || tg->tgfoid != f->trigger || tg->tgnargs != 4 ||
			tg->tgqual != NULL || tg->tgnattr != 0 || tg->tgenabled == TRIGGER_DISABLED ||
			(OidIsValid(tgoid) && tg->tgoid != tgoid))
			return NULL;
		found = tg;
	}
	return found;
}

/* The column numbers a guard trigger names, or false. */
static bool
guard_columns(Relation rel, Trigger *tg, AttrNumber *state_att, AttrNumber *version_att)
{
	TupleDesc	desc = RelationGetDescr(rel);

	*state_att = attnameAttNum(rel, tg->tgargs[1], false);
	*version_att = 0;
	if (*state_att <= 0)
		return false;
	if (tg->tgargs[2][0] != '\0')
	{
		Oid			type;

		*version_att = attnameAttNum(rel, tg->tgargs[2], false);
		if (*version_att <= 0)
			return false;
		type = TupleDescAttr(desc, *version_att - 1)->atttypid;
		if (type != INT4OID && type != INT8OID)
			return false;
	}
	return true;
}

static Var *
column_var(Relation rel, Index rti, AttrNumber att)
{
	Form_pg_attribute a = TupleDescAttr(RelationGetDescr(rel), att - 1);

	return makeVar(rti, att, a->atttypid, a->atttypmod, a->attcollation, 0);
}

static TargetEntry *
find_tle(List *tlist, AttrNumber att)
{
	ListCell   *lc;

	foreach(lc, tlist)
	{
		TargetEntry *tle = lfirst_node(TargetEntry, lc);

		if (!tle->resjunk && tle->resno == att)
			return tle;
	}
	return NULL;
}

static int
tle_resno_cmp(const ListCell *a, const ListCell *b)
{
	return lfirst_node(TargetEntry, a)->resno - lfirst_node(TargetEntry, b)->resno;
}

/* Set column att to expr in a target list (kept in column order). */
static List *
set_column(List *tlist, Relation rel, AttrNumber att, Expr *expr)
{
	TargetEntry *tle = find_tle(tlist, att);

	if (tle != NULL)
		tle->expr = expr;
	else
	{
		tlist = lappend(tlist, makeTargetEntry(expr, att,
											   pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel), att - 1)->attname)),
											   false));
		list_sort(tlist, tle_resno_cmp);
	}
	return tlist;
}

/* Does a query tree call one of the three check functions anywhere? */
static bool
calls_guard_walker(Node *node, GuardFuncs *f)
{
	if (node == NULL)
		return false;
	if (IsA(node, FuncExpr))
	{
		Oid			fn = ((FuncExpr *) node)->funcid;

		if (fn == f->check || fn == f->bump4 || fn == f->bump8 || fn == f->differs)
			return true;
	}
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, calls_guard_walker, f, 0);
	return expression_tree_walker(node, calls_guard_walker, f);
}

/*
 * A copy of an UPDATE of a guarded table that checks itself, or NULL if
 * the statement is not one we rewrite.  A statement that names the check
 * functions itself is left as written: the calls the plan records must be
 * the ones put there here.
 */
static Query *
rewrite_update(Query *parse)
{
	GuardFuncs *f;
	RangeTblEntry *rte;
	Relation	rel;
	Trigger    *tg;
	AttrNumber	state_att;
	AttrNumber	version_att;
	Index		rti = parse->resultRelation;
	Query	   *q = NULL;

	if (!idem_guard_rewrite || parse->commandType != CMD_UPDATE || rti == 0 ||
		parse->cteList != NIL || parse->hasTargetSRFs ||
		list_length(parse->jointree->fromlist) != 1)
		return NULL;
	rte = rt_fetch(rti, parse->rtable);
	if (rte->rtekind != RTE_RELATION || rte->relkind != RELKIND_RELATION)
		return NULL;
	/* SET expressions are evaluated twice (in the check and the WHERE). */
	if (checkExprHasSubLink((Node *) parse->targetList) ||
		contain_volatile_functions((Node *) parse->targetList))
		return NULL;
	if ((f = guard_funcs()) == NULL || calls_guard_walker((Node *) parse, f))
		return NULL;
	if (rte->inh && has_subclass(rte->relid))
		return NULL;

	rel = table_open(rte->relid, NoLock);	/* locked by the parser */
	tg = guard_trigger(rel->trigdesc, f, InvalidOid);
	if (tg != NULL && rel->rd_rel->relam == HEAP_TABLE_AM_OID && guard_columns(rel, tg, &state_att, &version_att) &&
		!(version_att && strcmp(tg->tgargs[3], "strict") == 0 &&
		  find_tle(parse->targetList, version_att) == NULL))
	{
		TargetEntry *state_tle;
		TargetEntry *version_tle;
		Const	   *relid = makeConst(OIDOID, -1, InvalidOid, sizeof(Oid),
									  ObjectIdGetDatum(rte->relid), false, true);
		Const	   *tgoid = makeConst(OIDOID, -1, InvalidOid, sizeof(Oid),
									  ObjectIdGetDatum(tg->tgoid), false, true);
		Var		   *ctid = makeVar(rti, SelfItemPointerAttributeNumber, TIDOID, -1, InvalidOid, 0);
		Var		   *old_state = column_var(rel, rti, state_att);
		Expr	   *new_state;
		Expr	   *old_version;
		Expr	   *new_version;
		Const	   *version_set;
		List	   *differs;
		List	   *check;
		ListCell   *lc;

		q = copyObject(parse);
		state_tle = find_tle(q->targetList, state_att);
		version_tle = version_att ? find_tle(q->targetList, version_att) : NULL;
		new_state = state_tle ? state_tle->expr : (Expr *) copyObject(old_state);
		version_set = (Const *) makeBoolConst(version_tle != NULL, false);
		if (version_att)
		{
			Oid			vtype = TupleDescAttr(RelationGetDescr(rel), version_att - 1)->atttypid;

			old_version = (Expr *) column_var(rel, rti, version_att);
			new_version = version_tle ? version_tle->expr :
				(Expr *) makeNullConst(vtype, -1, InvalidOid);
		}
		else
		{
			old_version = (Expr *) makeNullConst(INT8OID, -1, InvalidOid);
			new_version = (Expr *) makeNullConst(INT8OID, -1, InvalidOid);
		}

		/* WHERE ... AND idem_guard_differs(...), before the tlist changes */
		differs = list_make5(copyObject(relid), copyObject(tgoid), copyObject(ctid),
							 copyObject(old_state), copyObject(new_state));
		foreach(lc, q->targetList)
		{
			TargetEntry *tle = lfirst_node(TargetEntry, lc);

			if (tle->resjunk || tle->resno == state_att || tle->resno == version_att)
				continue;
			differs = lappend(differs, column_var(rel, rti, tle->resno));
			differs = lappend(differs, copyObject(tle->expr));
		}
		if (list_length(differs) > FUNC_MAX_ARGS)
		{
			/* Too many columns to compare in one call: use the trigger. */
			table_close(rel, NoLock);
			return NULL;
		}
		if (list_length(differs) == ARG_FIRST_PAIR)	/* VARIADIC wants one */
		{
			differs = lappend(differs, makeNullConst(BOOLOID, -1, InvalidOid));
			differs = lappend(differs, makeNullConst(BOOLOID, -1, InvalidOid));
		}
		q->jointree->quals = make_and_qual(q->jointree->quals,
										   (Node *) makeFuncExpr(f->differs, BOOLOID, differs,
																 InvalidOid, InvalidOid,
																 COERCE_EXPLICIT_CALL));

		/* SET state = idem_guard_check(...), version = idem_guard_bump(...) */
		check = list_make4(copyObject(relid), copyObject(tgoid), copyObject(ctid),
						   copyObject(old_state));
		check = lappend(check, new_state);
		check = lappend(check, copyObject(version_set));
		check = lappend(check, copyObject(old_version));
		check = lappend(check, copyObject(new_version));
		q->targetList = set_column(q->targetList, rel, state_att, (Expr *)
								   makeFuncExpr(f->check, old_state->vartype, check,
												old_state->varcollid, old_state->varcollid,
												COERCE_EXPLICIT_CALL));
		if (version_att)
		{
			Oid			vtype = exprType((Node *) old_version);

			q->targetList = set_column(q->targetList, rel, version_att, (Expr *)
									   makeFuncExpr(vtype == INT4OID ? f->bump4 : f->bump8, vtype,
													list_make5(relid, tgoid, old_version,
															   version_set, new_version),
													InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL));
		}
	}
	table_close(rel, NoLock);
	return q;
}

/* Is a call, after planning, our function with this guard's constants? */
static FuncExpr *
guard_call_expr(Expr *e, Oid funcid, Oid relid, Oid tgoid)
{
	FuncExpr   *fe;
	Const	   *c0;
	Const	   *c1;

	if (e == NULL || !IsA(e, FuncExpr))
		return NULL;
	fe = (FuncExpr *) e;
	if (fe->funcid != funcid || list_length(fe->args) < 3)
		return NULL;
	c0 = linitial(fe->args);
	c1 = lsecond(fe->args);
	if (!IsA(c0, Const) || c0->constisnull || DatumGetObjectId(c0->constvalue) != relid ||
		!IsA(c1, Const) || c1->constisnull ||
		(OidIsValid(tgoid) && DatumGetObjectId(c1->constvalue) != tgoid))
		return NULL;
	return fe;
}

static bool
is_column(Node *n, Index scanrelid, AttrNumber att)
{
	return n != NULL && IsA(n, Var) && ((Var *) n)->varno == (int) scanrelid &&
		((Var *) n)->varattno == att && ((Var *) n)->varlevelsup == 0;
}

/*
 * The expression a ModifyTable subplan output comes from: followed through
 * Result nodes that only pass it up, to the node that computes it.
 */
static Expr *
output_source(Plan **plan, int position)
{
	TargetEntry *tle = list_nth_node(TargetEntry, (*plan)->targetlist, position);
	Expr	   *e = tle->expr;

	while (IsA(*plan, Result) && outerPlan(*plan) != NULL && IsA(e, Var) &&
		   ((Var *) e)->varno == OUTER_VAR)
	{
		*plan = outerPlan(*plan);
		tle = list_nth_node(TargetEntry, (*plan)->targetlist, ((Var *) e)->varattno - 1);
		e = tle->expr;
	}
	return e;
}

/*
 * Does a planned UPDATE check itself for the guard on its target?  If so,
 * fills calls with the guard's trigger OID and the plan's three call nodes
 * and returns true.  The state column's new value must be
 * idem_guard_check() over the target's own columns, computed in the scan
 * of the target; the version column's, idem_guard_bump() of its own
 * version; idem_guard_differs(), over the target's own row address and
 * state, must be the only such qual of that scan, which planning
 * (arrange) moves last and execution expects last.  Other calls of the
 * three elsewhere in the plan (an inlined function's, say) are not
 * recorded, so they refuse when they run.
 */
static bool
guarded_plan(PlannedStmt *stmt, Relation rel, TriggerDesc *td, GuardFuncs *f, bool arrange,
			 GuardPlanCalls *calls)
{
	ModifyTable *mt = (ModifyTable *) stmt->planTree;
	Oid			relid = RelationGetRelid(rel);
	List	   *colnos;
	Index		rti;
	Plan	   *scan = NULL;
	Trigger    *tg;
	AttrNumber	state_att;
	AttrNumber	version_att;
	FuncExpr   *check = NULL;
	FuncExpr   *bump = NULL;
	FuncExpr   *differs = NULL;
	Oid			tgoid = InvalidOid;

	if (mt == NULL || !IsA(mt, ModifyTable) || mt->operation != CMD_UPDATE ||
		list_length(mt->resultRelations) != 1 || outerPlan(mt) == NULL)
		return false;
	rti = linitial_int(mt->resultRelations);
	colnos = linitial(mt->updateColnosLists);

	/* Find the check; it names the guard. */
	for (int i = 0; i < list_length(colnos) && check == NULL; i++)
	{
		Plan	   *p = outerPlan(mt);
		Expr	   *e = output_source(&p, i);

		if ((check = guard_call_expr(e, f->check, relid, InvalidOid)) != NULL)
		{
			tgoid = DatumGetObjectId(castNode(Const, lsecond(check->args))->constvalue);
			scan = p;
		}
	}
	if (check == NULL || (tg = guard_trigger(td, f, tgoid)) == NULL ||
		!guard_columns(rel, tg, &state_att, &version_att))
		return false;

	/* The check's output must be the guard's state column. */
	{
		bool		ok = false;

		for (int i = 0; i < list_length(colnos); i++)
		{
			Plan	   *p = outerPlan(mt);
			Expr	   *e = output_source(&p, i);
			AttrNumber	att = list_nth_int(colnos, i);

			if (att == state_att)
				ok = (e == (Expr *) check && p == scan);
			else if (version_att && att == version_att)
			{
				bump = guard_call_expr(e, f->bump4, relid, tgoid);
				if (bump == NULL)
					bump = guard_call_expr(e, f->bump8, relid, tgoid);
				if (bump == NULL || p != scan)
					return false;
			}
		}
		if (!ok || (version_att && bump == NULL))
			return false;
	}

	/* In the scan of the target, reading the target's own columns. */
	switch (nodeTag(scan))
	{
		case T_SeqScan:
		case T_IndexScan:
		case T_BitmapHeapScan:
		case T_TidScan:
		case T_TidRangeScan:
			break;
		default:
			return false;
	}
	if (((Scan *) scan)->scanrelid != rti ||
		list_length(check->args) != 8 ||
		!is_column(list_nth(check->args, ARG_CTID), rti, SelfItemPointerAttributeNumber) ||
		!is_column(list_nth(check->args, ARG_OLD_STATE), rti, state_att) ||
		(version_att && !is_column(list_nth(check->args, ARG_OLD_VERSION), rti, version_att)) ||
		(version_att && !is_column(list_nth(bump->args, ARG_BUMP_OLD), rti, version_att)))
		return false;

	/*
	 * Repeats must be skipped: idem_guard_differs, over the target's row
	 * address and state, is the scan's last qual, and the only one.
	 */
	{
		ListCell   *lc;

		foreach(lc, scan->qual)
		{
			FuncExpr   *fe = guard_call_expr(lfirst(lc), f->differs, relid, tgoid);

			if (fe == NULL)
				continue;
			if (differs != NULL)
				return false;
			differs = fe;
		}
		if (differs == NULL || list_length(differs->args) < ARG_FIRST_PAIR ||
			!is_column(list_nth(differs->args, ARG_CTID), rti, SelfItemPointerAttributeNumber) ||
			!is_column(list_nth(differs->args, ARG_OLD_STATE), rti, state_att))
			return false;
		if (arrange)
			scan->qual = lappend(list_delete_ptr(scan->qual, differs), differs);
		else if (llast(scan->qual) != differs)
			return false;
	}

	calls->tgoid = tgoid;
	calls->check = check;
	calls->bump = bump;
	calls->differs = differs;
	return true;
}

static PlannedStmt *
plan_statement(Query *parse, const char *query_string, int cursorOptions,
			   ParamListInfo boundParams)
{
	if (prev_planner)
		return prev_planner(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

/*
 * Planner hook: an UPDATE of a guarded table is planned in its
 * self-checking form if that plan has the expected shape, as written
 * otherwise.
 */
static PlannedStmt *
guard_planner(Query *parse, const char *query_string, int cursorOptions,
			  ParamListInfo boundParams)
{
	Query	   *rewritten = parse->commandType == CMD_UPDATE ? rewrite_update(parse) : NULL;

	if (rewritten != NULL)
	{
		PlannedStmt *stmt = plan_statement(rewritten, query_string, cursorOptions, boundParams);
		RangeTblEntry *rte = rt_fetch(rewritten->resultRelation, rewritten->rtable);
		Relation	rel = table_open(rte->relid, NoLock);
		GuardFuncs *f = guard_funcs();	/* looked up again if pg_proc changed */
		GuardPlanCalls calls;
		bool		guarded = f && guarded_plan(stmt, rel, rel->trigdesc, f, true, &calls);

		table_close(rel, NoLock);
		if (guarded)
			return stmt;
	}
	return plan_statement(parse, query_string, cursorOptions, boundParams);
}

/*
 * Executor-start hook: an UPDATE planned in its self-checking form does
 * without the guard's BEFORE UPDATE trigger.  The trigger list changed is
 * the result relation's own copy for this execution.
 */
static void
guard_executor_start(QueryDesc *queryDesc, int eflags)
{
	ModifyTableState *mts;
	ResultRelInfo *rri;
	TriggerDesc *td;
	GuardFuncs *f;
	GuardPlanCalls calls;
	GuardedStatement *entry;

	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);

	if (queryDesc->operation != CMD_UPDATE || queryDesc->planstate == NULL ||
		!IsA(queryDesc->planstate, ModifyTableState))
		return;
	mts = (ModifyTableState *) queryDesc->planstate;
	if (mts->operation != CMD_UPDATE || mts->mt_nrels != 1)
		return;
	rri = mts->resultRelInfo;
	td = rri->ri_TrigDesc;
	if (td == NULL || !td->trig_update_before_row || (f = guard_funcs()) == NULL)
		return;
	if (!guarded_plan(queryDesc->plannedstmt, rri->ri_RelationDesc, td, f, false, &calls))
		return;
	for (int i = 0; i < td->numtriggers; i++)
		if (td->triggers[i].tgoid == calls.tgoid)
			td->triggers[i].tgtype &= ~TRIGGER_TYPE_UPDATE;
	/* guarded_plan() made sure it was the only BEFORE UPDATE row trigger */
	td->trig_update_before_row = false;

	entry = MemoryContextAlloc(TopTransactionContext, sizeof(GuardedStatement));
	entry->query = queryDesc;
	entry->relid = RelationGetRelid(rri->ri_RelationDesc);
	entry->calls = calls;
	entry->cid = queryDesc->estate->es_output_cid;
	entry->lockmode = ExecUpdateLockMode(queryDesc->estate, rri);
	entry->subid = GetCurrentSubTransactionId();
	entry->next = running;
	running = entry;
}

static void
guard_executor_end(QueryDesc *queryDesc)
{
	if (running != NULL && running->query == queryDesc)
		running = running->next;
	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

/* Statements of an aborted (sub)transaction end without ExecutorEnd. */
static void
guard_xact_callback(XactEvent event, void *arg)
{
	running = NULL;
}

static void
guard_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		while (running != NULL && running->subid == mySubid)
			running = running->next;
}

void
GuardUpdateHooksInit(void)
{
	prev_planner = planner_hook;
	planner_hook = guard_planner;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = guard_executor_start;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = guard_executor_end;
	if (!xact_callbacks)
	{
		RegisterXactCallback(guard_xact_callback, NULL);
		RegisterSubXactCallback(guard_subxact_callback, NULL);
		xact_callbacks = true;
	}
}

/*
 * A second wall behind calling_statement(): the row address must point at
 * a row of the table (a block it has, a line pointer the page has, in use
 * for a tuple) before anything is locked there.  Only heap tables are
 * checked by the statement (rewrite_update), so the page is a heap page.
 */
static void
check_row_address(Relation rel, ItemPointer tid)
{
	BlockNumber blkno = ItemPointerGetBlockNumberNoCheck(tid);
	OffsetNumber off = ItemPointerGetOffsetNumberNoCheck(tid);
	bool		ok = false;

	if (rel->rd_rel->relam == HEAP_TABLE_AM_OID && ItemPointerIsValid(tid) &&
		blkno < RelationGetNumberOfBlocks(rel))
	{
		Buffer		buf = ReadBuffer(rel, blkno);
		Page		page;

		LockBuffer(buf, BUFFER_LOCK_SHARE);
		page = BufferGetPage(buf);
		ok = !PageIsNew(page) && off >= FirstOffsetNumber &&
			off <= PageGetMaxOffsetNumber(page) && ItemIdIsNormal(PageGetItemId(page, off));
		UnlockReleaseBuffer(buf);
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotency guard check was given a row address that is not a row of \"%s\"",
						RelationGetRelationName(rel)),
				 errhint("Do not call idem_guard_check(), idem_guard_bump() or idem_guard_differs() yourself; UPDATE the table.")));
}

/*
 * Is the row at tid the latest version of its row?  Locks it as the UPDATE
 * would, waiting for a transaction updating it, as the trigger's row lock
 * would.  False if another transaction updated or deleted it since the
 * statement's snapshot (or this one did, in a later command): the UPDATE
 * then finds the newer version itself.
 */
static bool
row_is_current(GuardedStatement *stmt, ItemPointer tid)
{
	Relation	rel = table_open(stmt->relid, NoLock);	/* the UPDATE's */
	TupleTableSlot *slot;
	TM_FailureData tmfd;
	TM_Result	res;

	check_row_address(rel, tid);
	slot = table_slot_create(rel, NULL);
	res = table_tuple_lock(rel, tid, GetActiveSnapshot(), slot, stmt->cid,
						   stmt->lockmode, LockWaitBlock, 0, &tmfd);
	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, NoLock);
	switch (res)
	{
		case TM_Ok:
			return true;
		case TM_Updated:
		case TM_Deleted:
		case TM_SelfModified:
			return false;
		default:
			elog(ERROR, "unexpected result %d locking a guarded row", (int) res);
	}
	return false;
}

/* Per call site: the guard, and the types of the compared arguments. */
typedef struct GuardCall
{
	uint64		generation;
	GuardEntry *guard;
	int16	   *typlen;
	bool	   *typbyval;
	Oid		   *types;
} GuardCall;

static void
not_in_update(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("idempotency guard checks run only inside UPDATEs of guarded tables"),
			 errhint("Do not call idem_guard_check(), idem_guard_bump() or idem_guard_differs() yourself; UPDATE the table.")));
}

/*
 * The running self-checking UPDATE whose plan made this call: the one,
 * innermost first, that recorded the call's expression node.  NULL for a
 * call from anywhere else.
 */
static GuardedStatement *
calling_statement(FunctionCallInfo fcinfo)
{
	Node	   *expr = fcinfo->flinfo->fn_expr;

	if (expr == NULL)
		return NULL;
	for (GuardedStatement *stmt = running; stmt != NULL; stmt = stmt->next)
		if (expr == (Node *) stmt->calls.check || expr == (Node *) stmt->calls.differs ||
			expr == (Node *) stmt->calls.bump)
			return stmt;
	return NULL;
}

/*
 * The guard of a call, and the running UPDATE it belongs to.  The call
 * must be one of the nodes that UPDATE's plan recorded (whose row address
 * and old values guarded_plan() checked are the target's own columns),
 * with arguments of the guard's column types.
 */
static GuardEntry *
call_guard(FunctionCallInfo fcinfo, GuardCall **callp, GuardedStatement **stmtp)
{
	GuardCall  *c = fcinfo->flinfo->fn_extra;
	GuardedStatement *stmt = calling_statement(fcinfo);
	GuardEntry *g;
	GuardFuncs *f = NULL;
	int			n = PG_NARGS();

	if (stmt == NULL || PG_ARGISNULL(ARG_RELID) || PG_ARGISNULL(ARG_TGOID) ||
		stmt->relid != PG_GETARG_OID(ARG_RELID) ||
		stmt->calls.tgoid != PG_GETARG_OID(ARG_TGOID))
		not_in_update();
	if ((f = guard_funcs()) == NULL)
		not_in_update();
	if (c == NULL)
	{
		c = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(GuardCall));
		c->typlen = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(int16) * n);
		c->typbyval = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(bool) * n);
		c->types = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(Oid) * n);
		for (int i = 0; i < n; i++)
		{
			c->types[i] = get_fn_expr_argtype(fcinfo->flinfo, i);
			if (!OidIsValid(c->types[i]))
				not_in_update();
			get_typlenbyval(c->types[i], &c->typlen[i], &c->typbyval[i]);
		}
		fcinfo->flinfo->fn_extra = c;
	}
	if (c->guard == NULL || c->generation != GuardGeneration() ||
		c->guard->tgoid != PG_GETARG_OID(ARG_TGOID))
	{
		g = GuardGetByOid(PG_GETARG_OID(ARG_RELID), PG_GETARG_OID(ARG_TGOID));
		/* The values compared must be of the guard's column types. */
		if (fcinfo->flinfo->fn_oid == f->check ||
			fcinfo->flinfo->fn_oid == f->differs)
		{
			if (c->types[ARG_OLD_STATE] != g->state_type || c->types[ARG_NEW_STATE] != g->state_type)
				not_in_update();
			if (fcinfo->flinfo->fn_oid == f->check && g->version_att &&
				(c->types[ARG_OLD_VERSION] != g->version_type ||
				 c->types[ARG_NEW_VERSION] != g->version_type))
				not_in_update();
			for (int i = ARG_FIRST_PAIR; fcinfo->flinfo->fn_oid == f->differs &&
				 i + 1 < n; i += 2)
				if (c->types[i] != c->types[i + 1])
					not_in_update();
		}
		else if (g->version_att == 0 || c->types[ARG_BUMP_OLD] != g->version_type ||
				 c->types[ARG_BUMP_NEW] != g->version_type)
			not_in_update();
		c->guard = g;
		c->generation = GuardGeneration();
	}
	if (callp)
		*callp = c;
	if (stmtp)
		*stmtp = stmt;
	return c->guard;
}

static int64
version_arg(GuardEntry *g, FunctionCallInfo fcinfo, int n)
{
	if (PG_ARGISNULL(n))
		return 0;
	return g->version_type == INT8OID ? PG_GETARG_INT64(n) : PG_GETARG_INT32(n);
}

/*
 * idem_guard_check(table, trigger, ctid, old state, new state, version set,
 * old version, new version): the new state, if the guard allows the update.
 */
Datum
idem_guard_check(PG_FUNCTION_ARGS)
{
	GuardedStatement *stmt;
	GuardEntry *g = call_guard(fcinfo, NULL, &stmt);
	GuardRow	r;
	GuardVerdict v;

	if (GuardFires(g))
	{
		memset(&r, 0, sizeof(r));
		r.from_null = PG_ARGISNULL(ARG_OLD_STATE);
		r.from = GuardState(g, PG_GETARG_DATUM(ARG_OLD_STATE), r.from_null, &r.from_label);
		r.to_null = PG_ARGISNULL(ARG_NEW_STATE);
		r.to = GuardState(g, PG_GETARG_DATUM(ARG_NEW_STATE), r.to_null, &r.to_label);
		if (g->version_att)
		{
			r.old_version = version_arg(g, fcinfo, ARG_OLD_VERSION);
			r.version_set = PG_GETARG_BOOL(ARG_VERSION_SET);
			r.expected = version_arg(g, fcinfo, ARG_NEW_VERSION);
		}
		v = GuardJudge(g, &r);
		if (v != GUARD_PASS && !PG_ARGISNULL(ARG_CTID) &&
			row_is_current(stmt, (ItemPointer) PG_GETARG_POINTER(ARG_CTID)))
		{
			/* The statement set the state, unless its new state is the old column. */
			FuncExpr   *fe = (FuncExpr *) fcinfo->flinfo->fn_expr;

			r.state_set = !equal(list_nth(fe->args, ARG_OLD_STATE),
								 list_nth(fe->args, ARG_NEW_STATE));
			GuardRefuse(g, &r, v);
		}
		/* After the rules, as in the trigger; idem_guard_bump never raises. */
		if (v == GUARD_PASS && g->version_att)
			(void) GuardNextVersion(g, r.old_version);
	}
	if (PG_ARGISNULL(ARG_NEW_STATE))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(PG_GETARG_DATUM(ARG_NEW_STATE));
}

/*
 * idem_guard_bump(table, trigger, old version, version set, new version):
 * the version the updated row gets.
 */
Datum
idem_guard_bump(PG_FUNCTION_ARGS)
{
	GuardEntry *g = call_guard(fcinfo, NULL, NULL);
	int64		next;

	if (!GuardFires(g))
	{
		/* As if there were no guard: the statement's value, or the row's. */
		int			n = PG_GETARG_BOOL(ARG_BUMP_SET) ? ARG_BUMP_NEW : ARG_BUMP_OLD;

		if (PG_ARGISNULL(n))
			PG_RETURN_NULL();
		PG_RETURN_DATUM(PG_GETARG_DATUM(n));
	}
	/* A version at the end of its range is refused by idem_guard_check. */
	next = version_arg(g, fcinfo, ARG_BUMP_OLD);
	if (next < (g->version_type == INT8OID ? PG_INT64_MAX : PG_INT32_MAX))
		next++;
	if (g->version_type == INT8OID)
		PG_RETURN_INT64(next);
	PG_RETURN_INT32((int32) next);
}

/*
 * idem_guard_differs(table, trigger, ctid, old state, new state,
 * [old value, new value]...): false for a repeat (the state the row is in,
 * nothing else changed) of the current row, which the UPDATE then skips.
 */
Datum
idem_guard_differs(PG_FUNCTION_ARGS)
{
	GuardCall  *c;
	GuardedStatement *stmt;
	GuardEntry *g = call_guard(fcinfo, &c, &stmt);
	char	   *from_label;
	char	   *to_label;
	int			from;
	int			to;

	if (!GuardFires(g) || PG_ARGISNULL(ARG_OLD_STATE) || PG_ARGISNULL(ARG_NEW_STATE))
		PG_RETURN_BOOL(true);
	from = GuardState(g, PG_GETARG_DATUM(ARG_OLD_STATE), false, &from_label);
	to = GuardState(g, PG_GETARG_DATUM(ARG_NEW_STATE), false, &to_label);
	if (!GuardSameState(from, from_label, to, to_label))
		PG_RETURN_BOOL(true);
	for (int i = ARG_FIRST_PAIR; i + 1 < PG_NARGS(); i += 2)
	{
		if (PG_ARGISNULL(i) != PG_ARGISNULL(i + 1))
			PG_RETURN_BOOL(true);
		if (!PG_ARGISNULL(i) &&
			!GuardSameValue(PG_GETARG_DATUM(i), PG_GETARG_DATUM(i + 1),
							  c->typlen[i], c->typbyval[i]))
			PG_RETURN_BOOL(true);
	}
	if (PG_ARGISNULL(ARG_CTID))
		PG_RETURN_BOOL(true);
	PG_RETURN_BOOL(!row_is_current(stmt, (ItemPointer) PG_GETARG_POINTER(ARG_CTID)));
}
