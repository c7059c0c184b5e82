/*-------------------------------------------------------------------------
 *
 * transition.c
 *	  idem_transition: the pessimistic transition executor.
 *
 * idem_transition(tbl, id, to_state, expected_version, lock) does what a
 * careful application does by hand, in one call: lock the row by primary
 * key with SELECT ... FOR UPDATE (waiting, NOWAIT or SKIP LOCKED), look at
 * its state and version, and move it to the new state if the table's guard
 * allows it.  Instead of raising, it reports what happened: applied,
 * unchanged (already in that state: a duplicate callback), illegal, stale
 * (another version than expected), locked (NOWAIT or SKIP LOCKED found the
 * row locked), not_found.
 *
 * Everything is judged on the locked row, so the outcome holds until the
 * transaction ends; the UPDATE then goes through the guard like any other
 * (which checks the same rules again and bumps the version).
 *
 * The statements are built once per table, key type and lock mode from
 * catalog names, every identifier quoted and every operator and type
 * schema-qualified, prepared with SPI and kept; no SQL text comes from the
 * caller.  They run with the caller's rights and row-level security.  A
 * relcache invalidation of the table (ALTER TABLE, a new guard, DROP) or a
 * renamed schema or operator marks its statements stale; stale ones are
 * freed and rebuilt at the next call that is not nested in another.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relation.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

#include "guard.h"
#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_transition);

typedef enum LockMode
{
	MODE_WAIT, MODE_NOWAIT, MODE_SKIP, NUM_MODES
} LockMode;

static const char *const mode_names[NUM_MODES] = {"wait", "nowait", "skip"};
static const char *const mode_clauses[NUM_MODES] = {"", " NOWAIT", " SKIP LOCKED"};

typedef enum Outcome
{
	OUT_APPLIED, OUT_UNCHANGED, OUT_ILLEGAL, OUT_STALE, OUT_LOCKED, OUT_NOT_FOUND,
	NUM_OUTCOMES
} Outcome;

static const char *const outcome_names[NUM_OUTCOMES] = {
	"applied", "unchanged", "illegal", "stale", "locked", "not_found"
};

/* The statements for one table, key type and lock mode. */
typedef struct TransitionKey
{
	Oid			relid;			/* the table */
	Oid			idtype;			/* type of the id argument */
	LockMode	mode;			/* lock mode */
} TransitionKey;

typedef struct TransitionPlans
{
	TransitionKey key;			/* hash key */
	bool		valid;			/* false once the table changed */
	SPIPlanPtr	lock;			/* SELECT state, version ... FOR UPDATE */
	SPIPlanPtr	update;			/* UPDATE ... SET state, version */
	SPIPlanPtr	exists;			/* SELECT 1 ..., for SKIP LOCKED */
	AttrNumber	pk_att;			/* the key column */
	Oid			pk_type;		/* its type */
	Oid			state_type;		/* the state column's */
	Oid			version_type;	/* the version column's, or InvalidOid */
} TransitionPlans;

static HTAB *plan_cache = NULL;

/*
 * idem_transition calls on the stack (a trigger may call it again).  A call
 * that fails leaves it too high, which only delays freeing; no call runs
 * once a transaction ends, so it is reset then.
 */
static int	calls_running = 0;

static void
transition_xact_callback(XactEvent event, void *arg)
{
	calls_running = 0;
}

static void
transition_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	TransitionPlans *p;

	if (plan_cache == NULL)
		return;
	hash_seq_init(&status, plan_cache);
	while ((p = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || p->key.relid == relid)
			p->valid = false;
}

/* A schema or operator renamed: the statements may name it. */
static void
transition_syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	transition_relcache_callback(arg, InvalidOid);
}

/*
 * Free a set of statements, unless a call on the stack may be using them
 * (a trigger calling idem_transition from inside it): then they are left
 * to the memory of the backend, which is rare enough not to matter.
 */
static void
drop_plans(TransitionPlans *p)
{
	if (calls_running == 0)
	{
		if (p->lock)
			SPI_freeplan(p->lock);
		if (p->update)
			SPI_freeplan(p->update);
		if (p->exists)
			SPI_freeplan(p->exists);
	}
	p->lock = p->update = p->exists = NULL;
}

static SPIPlanPtr
prepare(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/* OPERATOR(schema.name) for an operator. */
static char *
qualified_operator(Oid opno)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
	Form_pg_operator op;
	char	   *s;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opno);
	op = (Form_pg_operator) GETSTRUCT(tup);
	s = psprintf("OPERATOR(%s.%s)", quote_identifier(get_namespace_name(op->oprnamespace)),
				 NameStr(op->oprname));
	ReleaseSysCache(tup);
	return s;
}

static const char *
column_name(Relation rel, AttrNumber att)
{
	return quote_identifier(NameStr(TupleDescAttr(RelationGetDescr(rel), att - 1)->attname));
}

/*
 * Build the statements for a table: its primary key must be one column.
 */
static void
build_plans(TransitionPlans *p, Relation rel, GuardEntry *g)
{
	Oid			pk_index = idem_primary_key_index(rel);
	Relation	index;
	AttrNumber	pk_att;
	Oid			eq;
	const char *table;
	const char *pk;
	const char *eq_op;
	const char *state = column_name(rel, g->state_att);
	const char *version = g->version_att ? column_name(rel, g->version_att) : NULL;
	StringInfoData sql;
	Oid			types[3];

	if (!OidIsValid(pk_index))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key", RelationGetRelationName(rel)),
				 errhint("idem_transition finds rows by a single-column primary key; add one.")));
	index = index_open(pk_index, AccessShareLock);
	if (index->rd_index->indnkeyatts != 1)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("primary key of table \"%s\" has %d columns", RelationGetRelationName(rel),
						index->rd_index->indnkeyatts),
				 errhint("idem_transition finds rows by a single-column primary key; use UPDATE with the guard for this table.")));
	pk_att = index->rd_index->indkey.values[0];
	eq = get_opfamily_member(index->rd_opfamily[0], index->rd_opcintype[0],
							 index->rd_opcintype[0], BTEqualStrategyNumber);
	index_close(index, AccessShareLock);
	if (!OidIsValid(eq))
		elog(ERROR, "no equality operator for the primary key of \"%s\"", RelationGetRelationName(rel));

	/* ONLY: an inheritance child has a guard of its own, or none. */
	table = psprintf("%s%s", rel->rd_rel->relkind == RELKIND_RELATION ? "ONLY " : "",
					 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												RelationGetRelationName(rel)));
	pk = column_name(rel, pk_att);
	eq_op = qualified_operator(eq);
	p->pk_att = pk_att;
	p->pk_type = TupleDescAttr(RelationGetDescr(rel), pk_att - 1)->atttypid;
	p->state_type = g->state_type;
	p->version_type = g->version_att ? g->version_type : InvalidOid;
	types[0] = p->pk_type;
	types[1] = p->state_type;
	types[2] = p->version_type;

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s::pg_catalog.text, %s%s FROM %s WHERE %s %s $1 FOR UPDATE%s",
					 state, version ? version : "NULL", "::pg_catalog.int8", table, pk, eq_op,
					 mode_clauses[p->key.mode]);
	p->lock = prepare(sql.data, 1, types);

	resetStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE %s SET %s = $2", table, state);
	if (version)
		appendStringInfo(&sql, ", %s = $3", version);
	appendStringInfo(&sql, " WHERE %s %s $1 RETURNING %s::pg_catalog.int8", pk, eq_op,
					 version ? version : "NULL");
	p->update = prepare(sql.data, version ? 3 : 2, types);

	if (p->key.mode == MODE_SKIP)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "SELECT 1 FROM %s WHERE %s %s $1", table, pk, eq_op);
		p->exists = prepare(sql.data, 1, types);
	}
	p->valid = true;
}

static TransitionPlans *
get_plans(Relation rel, Oid idtype, LockMode mode, GuardEntry *g)
{
	TransitionKey key;
	TransitionPlans *p;
	bool		found;

	if (plan_cache == NULL)
	{
		HASHCTL		ctl;

		/* First, as it may fail: plan_cache set means all is registered. */
		IdemOnRelcacheChange(transition_relcache_callback);
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(TransitionKey);
		ctl.entrysize = sizeof(TransitionPlans);
		plan_cache = hash_create("idempotency transitions", 16, &ctl, HASH_ELEM | HASH_BLOBS);
		CacheRegisterSyscacheCallback(NAMESPACEOID, transition_syscache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(OPEROID, transition_syscache_callback, (Datum) 0);
		RegisterXactCallback(transition_xact_callback, NULL);
	}
	memset(&key, 0, sizeof(key));
	key.relid = RelationGetRelid(rel);
	key.idtype = idtype;
	key.mode = mode;
	/*
	 * With no call running, free what changed tables left behind (dropped
	 * tables' statements included); otherwise they wait for a later call.
	 */
	if (calls_running == 0)
	{
		HASH_SEQ_STATUS status;
		TransitionPlans *old;

		hash_seq_init(&status, plan_cache);
		while ((old = hash_seq_search(&status)) != NULL)
			if (!old->valid)
			{
				drop_plans(old);
				hash_search(plan_cache, &old->key, HASH_REMOVE, NULL);
			}
	}
	p = hash_search(plan_cache, &key, HASH_ENTER, &found);
	if (!found)
	{
		memset(p, 0, sizeof(*p));
		p->key = key;
	}
	/* The guard's columns may have changed without this table's plans. */
	if (p->valid && (p->state_type != g->state_type ||
					 p->version_type != (g->version_att ? g->version_type : InvalidOid)))
		p->valid = false;
	if (!p->valid)
	{
		drop_plans(p);
		build_plans(p, rel, g);
	}
	return p;
}

/* A value of one type as another, through text. */
static Datum
convert(Datum value, Oid from, Oid to)
{
	Oid			out;
	Oid			in;
	Oid			ioparam;
	bool		varlena;

	if (from == to)
		return value;
	getTypeOutputInfo(from, &out, &varlena);
	getTypeInputInfo(to, &in, &ioparam);
	return OidInputFunctionCall(in, OidOutputFunctionCall(out, value), ioparam, -1);
}

/*
 * The id argument as a value of the key's type.  A value that does not
 * read as one is reported with a hint rather than the input function's
 * bare message.
 */
static Datum
id_arg(Datum value, Oid from, Oid to)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile Datum result = (Datum) 0;

	PG_TRY();
	{
		result = convert(value, from, to);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(edata->sqlerrcode),
				 errmsg("id does not read as a value of the primary key's type %s",
						format_type_be(to)),
				 errdetail("%s", edata->message),
				 errhint("Pass the key of the row, such as 42 or '42'.")));
	}
	PG_END_TRY();
	return result;
}

/* The result row. */
static Datum
result(FunctionCallInfo fcinfo, Outcome outcome, const char *state, bool has_version, int64 version)
{
	static const Oid types[] = {InvalidOid, TEXTOID, INT8OID};
	IdemResultCache *rc = IdemGetResultCache(fcinfo, outcome_names, NUM_OUTCOMES,
											 types, lengthof(types), lengthof(types));
	Datum		values[3];
	bool		nulls[3] = {false, state == NULL, !has_version};

	values[0] = rc->outcomes[outcome];
	values[1] = state ? CStringGetTextDatum(state) : (Datum) 0;
	values[2] = Int64GetDatum(version);
	return HeapTupleGetDatum(heap_form_tuple(rc->tupdesc, values, nulls));
}

/* The locking SELECT, for IdemInSubtransaction. */
typedef struct LockCall
{
	TransitionPlans *plans;
	Datum	   *args;
	uint64		rows;
} LockCall;

static bool
run_lock(void *arg)
{
	LockCall   *call = arg;

	if (SPI_execute_plan(call->plans->lock, call->args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not lock the row");
	call->rows = SPI_processed;
	return true;
}

static LockMode
lock_mode_arg(FunctionCallInfo fcinfo, int n)
{
	char	   *s;

	IdemRequireArg(fcinfo, n, "lock");
	s = text_to_cstring(PG_GETARG_TEXT_PP(n));
	for (int m = 0; m < NUM_MODES; m++)
		if (strcmp(s, mode_names[m]) == 0)
			return (LockMode) m;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid lock mode \"%s\"", s),
			 errhint("Pass 'wait' (FOR UPDATE), 'nowait' (FOR UPDATE NOWAIT) or 'skip' (FOR UPDATE SKIP LOCKED).")));
	return MODE_WAIT;			/* keep the compiler quiet */
}

/*
 * Open the table for an update by the caller: it must exist, be a table,
 * and the caller must be allowed to update it, before it is locked.
 */
static Relation
open_table(Oid relid, bool *table_update)
{
	Relation	rel;
	char		relkind;

	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid),
				 errhint("Pass the guarded table, such as 'orders'::regclass.")));
	*table_update = pg_class_aclcheck(relid, GetUserId(), ACL_UPDATE) == ACLCHECK_OK;
	if (!*table_update &&
		pg_attribute_aclcheck_all(relid, GetUserId(), ACL_UPDATE, ACLMASK_ANY) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(relid)),
				 errhint("idem_transition needs UPDATE on the table, and SELECT on its key, state and version columns.")));
	rel = table_open(relid, RowExclusiveLock);
	relkind = rel->rd_rel->relkind;
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
				 errhint("Pass the guarded table itself, not a view or an index.")));
	return rel;
}

/*
 * The caller must be able to read the key, state and version columns and
 * update the state and version: checked before any row is locked.
 */
static void
require_column(Relation rel, AttrNumber att, AclMode mode)
{
	Oid			relid = RelationGetRelid(rel);

	if (att == 0 || pg_class_aclcheck(relid, GetUserId(), mode) == ACLCHECK_OK ||
		pg_attribute_aclcheck(relid, att, GetUserId(), mode) == ACLCHECK_OK)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for column %s of table %s",
					NameStr(TupleDescAttr(RelationGetDescr(rel), att - 1)->attname),
					RelationGetRelationName(rel)),
			 errhint("idem_transition needs SELECT on the key, state and version columns and UPDATE on the state and version columns.")));
}

/*
 * The argument of idem_transition whose rows a call may change: tbl (an id
 * has many spellings: 1, '1', '01', 1::bigint; memo.c).
 */
static const int transition_identity[] = {0};

/*
 * idem_transition(tbl, id, to_state, expected_version, lock)
 *	  → idem_transition_result
 */
Datum
idem_transition(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Oid			idtype = get_fn_expr_argtype(fcinfo->flinfo, 1);
	char	   *to_state;
	bool		check_version = !PG_ARGISNULL(3);
	int64		expected = check_version ? PG_GETARG_INT64(3) : 0;
	LockMode	mode;
	Relation	rel;
	bool		table_update;
	Trigger    *tg;
	GuardEntry *g;
	TransitionPlans *p;
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	uint64		rows = 0;
	bool		locked = false;
	char	   *state = NULL;
	bool		has_version = false;
	int64		version = 0;
	Outcome		outcome;
	Datum		res;

	IdemRequireArg(fcinfo, 0, "tbl");
	IdemRequireArg(fcinfo, 1, "id");
	IdemRequireArg(fcinfo, 2, "to_state");
	relid = PG_GETARG_OID(0);
	to_state = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (to_state[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("to_state must not be empty"),
				 errhint("Name a state of the table's machine.")));
	mode = lock_mode_arg(fcinfo, 4);

	rel = open_table(relid, &table_update);
	tg = GuardFindTrigger(rel);
	if (tg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no guard", RelationGetRelationName(rel)),
				 errhint("Guard it with idem_guard() first: idem_transition follows the guard's machine.")));
	g = GuardGet(tg, rel);
	if (check_version && g->version_att == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("table \"%s\" has no version column", RelationGetRelationName(rel)),
				 errhint("Pass expected_version => NULL, or guard the table with a version column.")));
	if (GuardStateByName(g, to_state) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a state of machine \"%s\"", GuardClipName(to_state), g->machine->name),
				 errdetail("Its states are %s.", GuardStateNames(g->machine)),
				 errhint("Pass one of them as to_state, or add the state to the machine with idem_machine().")));

	/* The same call spread over a row's columns answers once (memo.c). */
	if (IdemMemoFind(fcinfo, &res))
	{
		table_close(rel, NoLock);
		PG_RETURN_DATUM(res);
	}

	/*
	 * g points into the guard cache, and the statements below run user
	 * code (row-level security policies, the key type's operators,
	 * triggers) that may change machines or tables and build other guards.
	 * Pinned, g stays as it is until the end of the call, or of the
	 * (sub)transaction if the call fails.
	 */
	GuardPin(g);
	IdemConnectSPI();
	p = get_plans(rel, idtype, mode, g);
	/* (pg_class_aclcheck is satisfied by any one of the privileges asked) */
	if (!table_update || pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
	{
		require_column(rel, p->pk_att, ACL_SELECT);
		require_column(rel, g->state_att, ACL_SELECT);
		require_column(rel, g->state_att, ACL_UPDATE);
		require_column(rel, g->version_att, ACL_SELECT);
		require_column(rel, g->version_att, ACL_UPDATE);
	}
	calls_running++;
	{
		args[0] = id_arg(PG_GETARG_DATUM(1), idtype, p->pk_type);

		if (mode == MODE_NOWAIT)
		{
			/* A row locked by another transaction is an outcome, not an error. */
			LockCall	call = {p, args, 0};

			IdemInSubtransaction(run_lock, &call, ERRCODE_LOCK_NOT_AVAILABLE, &locked);
			rows = call.rows;
		}
		else
		{
			if (SPI_execute_plan(p->lock, args, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not lock the row");
			rows = SPI_processed;
			if (rows == 0 && mode == MODE_SKIP)
			{
				/* Skipped, or not there?  Look with a fresh snapshot. */
				if (SPI_execute_plan(p->exists, args, NULL, false, 1) != SPI_OK_SELECT)
					elog(ERROR, "could not look for the row");
				locked = SPI_processed > 0;
			}
		}

		if (locked)
			outcome = OUT_LOCKED;
		else if (rows == 0)
			outcome = OUT_NOT_FOUND;
		else
		{
			GuardRow	r;
			bool		isnull;
			HeapTuple	row = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;

			state = SPI_getvalue(row, desc, 1);
			version = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
			has_version = !isnull;

			memset(&r, 0, sizeof(r));
			r.from_null = state == NULL;
			r.from = state ? GuardStateByName(g, state) : -1;
			r.from_label = state;
			r.to = GuardStateByName(g, to_state);
			r.to_label = to_state;
			r.old_version = version;
			r.version_set = true;	/* the UPDATE below sets it */
			r.expected = version;

			if (GuardIsRepeat(&r))
				outcome = OUT_UNCHANGED;
			else if (check_version && expected != (has_version ? version : 0))
			{
				outcome = OUT_STALE;
				IdemCount(IDEM_STALE_VERSIONS);
			}
			else if (GuardJudge(g, &r) != GUARD_PASS)
			{
				outcome = OUT_ILLEGAL;
				IdemCount(IDEM_GUARD_REJECTIONS);
			}
			else
			{
				if (g->state_is_enum && !OidIsValid(g->state_enum[r.to]))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("state \"%s\" of machine \"%s\" is not a label of type %s",
									to_state, g->machine->name, format_type_be(g->state_type)),
							 errhint("Add the label with ALTER TYPE ... ADD VALUE, or, if it was renamed with ALTER TYPE ... RENAME VALUE, rename the state in the machine too (idem_machine()).")));
				args[1] = convert(CStringGetTextDatum(to_state), TEXTOID, p->state_type);
				if (g->version_att)
				{
					/*
					 * The version the row has: the guard checks it and bumps
					 * it.  If the guard is switched off, bump it here.
					 */
					int64		next = GuardFires(g) ? version :
						GuardNextVersion(g, has_version ? version : 0);

					nulls[2] = (has_version || !GuardFires(g)) ? ' ' : 'n';
					args[2] = p->version_type == INT4OID ?
						Int32GetDatum((int32) next) : Int64GetDatum(next);
				}
				if (SPI_execute_plan(p->update, args, nulls, false, 0) != SPI_OK_UPDATE_RETURNING)
					elog(ERROR, "could not update the locked row of \"%s\"", RelationGetRelationName(rel));
				if (SPI_processed != 1)
					ereport(ERROR,
							(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
							 errmsg("a trigger on \"%s\" skipped the update of the locked row",
									RelationGetRelationName(rel)),
							 errhint("A BEFORE UPDATE trigger returned NULL; idem_transition cannot report the outcome of a row a trigger refused to change.")));
				version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
													  1, &isnull));
				has_version = !isnull;
				state = to_state;
				outcome = OUT_APPLIED;
			}
		}
	}
	calls_running--;
	GuardUnpin(g);

	/* Build the result before SPI_finish frees what it points to. */
	res = result(fcinfo, outcome, state, has_version, version);
	res = SPI_datumTransfer(res, false, -1);
	SPI_finish();
	table_close(rel, NoLock);
	return IdemMemoKeep(fcinfo, res, transition_identity, lengthof(transition_identity));
}
