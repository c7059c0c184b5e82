/*-------------------------------------------------------------------------
 *
 * claims_table.c
 *	  The table idempotency.claims as the claim functions use it: found
 *	  once per backend with its columns checked, and new claims inserted
 *	  into it directly.
 *
 * Finding the table.  The table's OID, the sequence of fencing tokens, the
 * position of each column and the labels of the state type are looked up
 * by name once and kept until an invalidation may have changed them: a
 * relcache invalidation of the table or of the sequence, or any change of
 * a schema (a renamed schema must stop being found under its old name).
 * Each open locks the kept OID, which takes in pending invalidations, and
 * looks again by name if they made the kept values stale.  A column that is
 * missing or of another type than the extension gave it is refused before
 * anything is read through it.
 *
 * Inserting.  A claim of a key without a row used to run INSERT ... ON
 * CONFLICT DO NOTHING through SPI; its executor start, the arbiter
 * pre-check (a second descent of the primary key, after the read that
 * had just found no row) and the table's CHECK constraints, parsed again
 * at every execution, were most of what a new claim cost beyond the
 * hand-written insert it replaces.  IdemClaimsInsert makes the same
 * speculative insertion the executor makes, without the pre-check: the
 * tuple goes in with a speculative token, its index entries with the
 * primary key as arbiter, and the tuple is then confirmed or, when another
 * transaction holds the key, killed.  A conflict goes back to the caller,
 * whose next try runs the SQL statement, and its pre-check waits for the
 * other transaction as before.  The CHECK constraints are read once per
 * version of the table, and planned (as the executor plans them at each
 * start) and evaluated at each insert.
 *
 * Finishing.  An owner's idem_complete or idem_fail ran an UPDATE through
 * SPI: an executor start for a ModifyTable, an index scan that descended
 * the primary key again after the owner's read had just found the row,
 * and the table's CHECK constraints parsed anew at every execution.  Over
 * HTTP, where every first-time request ends with it, that was an eighth of
 * the server's time.  IdemClaimsUpdate writes the new version of the row
 * the read found, by its tuple id, as the executor's update would:
 * table_tuple_update, then the index entries when the update is not HOT.
 * If the row changed since it was read (another transaction updated it, or
 * is updating it), nothing is written and the caller runs the SQL
 * statement, which sees the change as before.
 *
 * The direct insert and update are made only while the table is, in
 * everything an insert or an update meets, as the extension created it:
 * a plain table without triggers (so without foreign keys), rules,
 * row-level security, generated or identity columns, with no column but
 * its own, no default or NOT NULL added to a column the insert leaves
 * empty, and an immediate, valid primary key as its only unique index.
 * And only while the row passes the CHECK constraints (and, updated, puts
 * no null in a column made NOT NULL), the transaction may write and the
 * owner may insert (or update) and read (the insert returns what it
 * inserted; the update's WHERE reads the row).  Otherwise the SQL
 * statement runs, and PostgreSQL applies, or reports, whatever was added.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "idempotency.h"

/* The columns, in the order of IdemClaimsColumn, and their types. */
static const struct
{
	const char *name;
	Oid			type;			/* InvalidOid: an enum (the state) */
	bool		always_set;		/* every insert gives it a value */
	bool		since_1_1;		/* a 1.0.0 table lacks it */
}			columns[CLAIMS_NUM_COLUMNS] = {
	[CLAIMS_SCOPE] = {"scope", TEXTOID, true},
	[CLAIMS_KEY] = {"key", TEXTOID, true},
	[CLAIMS_FINGERPRINT] = {"fingerprint", BYTEAOID, false},
	[CLAIMS_STATE] = {"state", InvalidOid, true},
	[CLAIMS_TOKEN] = {"token", INT8OID, true},
	[CLAIMS_ATTEMPTS] = {"attempts", INT4OID, true},
	[CLAIMS_LEASE_UNTIL] = {"lease_until", TIMESTAMPTZOID, true},
	[CLAIMS_RECOVERY_POINT] = {"recovery_point", TEXTOID, false},
	[CLAIMS_RESPONSE] = {"response", JSONBOID, false},
	[CLAIMS_STATUS] = {"status", INT4OID, false},
	[CLAIMS_CREATED_AT] = {"created_at", TIMESTAMPTZOID, true},
	[CLAIMS_EXPIRES_AT] = {"expires_at", TIMESTAMPTZOID, true},
	[CLAIMS_BODY] = {"body", BYTEAOID, false, true},
	[CLAIMS_CONTENT_TYPE] = {"content_type", TEXTOID, false, true},
	[CLAIMS_HEADERS] = {"headers", JSONBOID, false, true},
};

static const char *const state_labels[CLAIMS_NUM_STATES] = {
	[CLAIMS_IN_PROGRESS] = "in_progress",
	[CLAIMS_COMPLETED] = "completed",
	[CLAIMS_FAILED] = "failed",
};

/* What is kept; valid until an invalidation clears it. */
static bool valid = false;
static Oid	claims_relid = InvalidOid;
static Oid	tokens_relid = InvalidOid;
static IdemClaimsLayout layout;

/* For the direct insert (filled on its first use after each look-up). */
static bool insert_checked = false;
static bool insert_direct = false;	/* the table allows it */
static bool fingerprint_not_null = false;
static List *check_exprs = NIL;		/* CHECK expressions, as read, unplanned */
static MemoryContext checks_cxt = NULL;
static bool callbacks = false;

static void
relcache_changed(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == claims_relid || relid == tokens_relid)
		valid = false;
}

static void
schema_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	valid = false;
}

/*
 * Look the table up by name, check its columns, and keep what was found.
 * Errors leave nothing kept.
 */
static Oid
look_up(void)
{
	Oid			nsp = get_namespace_oid("idempotency", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("claims", nsp) : InvalidOid;

	if (!callbacks)
	{
		IdemOnRelcacheChange(relcache_changed);
		CacheRegisterSyscacheCallback(NAMESPACEOID, schema_changed, (Datum) 0);
		callbacks = true;
	}
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table \"idempotency.claims\" does not exist"),
				 errhint(IDEM_HINT_MISSING_TABLE)));
	valid = true;
	claims_relid = relid;
	tokens_relid = get_relname_relid("claim_tokens", nsp);
	layout.attnums_known = false;
	insert_checked = false;
	return relid;
}

/*
 * Is the extension past 1.0.0 (then the columns 1.1.0 added must be
 * there)?  Asked only when they are missing, which is rare.
 */
static bool
updated_past_1_0(void)
{
	char	   *version = IdemExtensionVersion();

	return version != NULL && strcmp(version, "1.0.0") != 0;
}

/* The table's column of that name, or NULL. */
static Form_pg_attribute
find_column(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);

		if (!a->attisdropped && strcmp(NameStr(a->attname), name) == 0)
			return a;
	}
	return NULL;
}

/* Has the table any of the columns 1.1.0 added? */
static bool
has_any_1_1_column(TupleDesc desc)
{
	for (int c = 0; c < CLAIMS_NUM_COLUMNS; c++)
		if (columns[c].since_1_1 && find_column(desc, columns[c].name) != NULL)
			return true;
	return false;
}

/*
 * Find each column and check its type; then the labels of the state type.
 * The columns 1.1.0 added may all be missing (a 1.0.0 table under the
 * newer library), but not some of them.
 */
static void
check_columns(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int c = 0; c < CLAIMS_NUM_COLUMNS; c++)
	{
		Form_pg_attribute found = find_column(desc, columns[c].name);

		if (found == NULL && columns[c].since_1_1 && !has_any_1_1_column(desc) &&
			!updated_past_1_0())
		{
			/*
			 * The library was updated and the extension not yet (ALTER
			 * EXTENSION idempotency UPDATE): claims are made and finished
			 * as 1.0.0 did, without stored bodies.
			 */
			layout.attnums[c] = InvalidAttrNumber;
			continue;
		}
		if (found == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of table \"idempotency.claims\" does not exist",
							columns[c].name),
					 errhint("Restore the column as the extension created it (README, \"Repairing an installation\").")));
		if (OidIsValid(columns[c].type) ? found->atttypid != columns[c].type
			: get_typtype(found->atttypid) != TYPTYPE_ENUM)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of table \"idempotency.claims\" has type %s, not %s",
							columns[c].name, format_type_be(found->atttypid),
							OidIsValid(columns[c].type) ? format_type_be(columns[c].type)
							: "idempotency.idem_claim_state"),
					 errhint("Change the column back to its type (README, \"Repairing an installation\").")));
		layout.attnums[c] = found->attnum;
		if (c == CLAIMS_STATE)
			layout.state_type = found->atttypid;
	}
	layout.ncolumns = 0;
	for (int c = 0; c < CLAIMS_NUM_COLUMNS; c++)
		if (layout.attnums[c] != InvalidAttrNumber)
			layout.ncolumns++;
	layout.has_body = layout.ncolumns == CLAIMS_NUM_COLUMNS;
	for (int s = 0; s < CLAIMS_NUM_STATES; s++)
		layout.states[s] = DirectFunctionCall2(enum_in, CStringGetDatum(state_labels[s]),
											   ObjectIdGetDatum(layout.state_type));
	layout.attnums_known = true;
}

/*
 * Open idempotency.claims with the given lock, kept to the end of the
 * transaction, and return it with its layout.
 */
Relation
IdemClaimsOpen(LOCKMODE mode, const IdemClaimsLayout **layoutp)
{
	Relation	rel;

	for (int tries = 0;; tries++)
	{
		Oid			relid = valid && tries == 0 ? claims_relid : look_up();

		LockRelationOid(relid, mode);
		/* Locking took in invalidations: is what was kept still true? */
		if (valid && claims_relid == relid)
		{
			rel = table_open(relid, NoLock);
			break;
		}
		UnlockRelationOid(relid, mode);
		if (tries >= 100)
			elog(ERROR, "idempotency.claims keeps changing");
	}
	if (!layout.attnums_known)
		check_columns(rel);
	*layoutp = &layout;
	return rel;
}

/*
 * Does the table allow a direct insert?  Checked once per look-up; the
 * CHECK constraints are read then too.
 */
static bool
direct_insert_allowed(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TupleConstr *constr = desc->constr;
	Oid			pk = idem_primary_key_index(rel);
	int			ours = 0;
	MemoryContext old;

	if (insert_checked)
		return insert_direct;

	if (checks_cxt != NULL)
	{
		/* The old expressions may be in use further up: free them at commit. */
		MemoryContextSetParent(checks_cxt, TopTransactionContext);
		checks_cxt = NULL;
	}
	check_exprs = NIL;
	insert_direct = false;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition ||
		rel->rd_rel->relhasrules || rel->trigdesc != NULL ||
		!OidIsValid(tokens_relid) || !OidIsValid(pk))
		goto done;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);
		int			c = 0;

		if (a->attisdropped)
			continue;
		while (c < CLAIMS_NUM_COLUMNS && layout.attnums[c] != a->attnum)
			c++;
		if (c == CLAIMS_NUM_COLUMNS || a->attgenerated != '\0' || a->attidentity != '\0')
			goto done;
		if (!columns[c].always_set && c != CLAIMS_FINGERPRINT && (a->attnotnull || a->atthasdef))
			goto done;
		if (c == CLAIMS_FINGERPRINT)
			fingerprint_not_null = a->attnotnull;
		ours++;
	}
	if (ours != layout.ncolumns)
		goto done;
	{
		/*
		 * The primary key must be immediate and valid, and the only unique
		 * index: ON CONFLICT (scope, key) would take another one on those
		 * columns as an arbiter too, and an insert must wait on any other.
		 */
		List	   *indexes = RelationGetIndexList(rel);
		ListCell   *lc;
		bool		usable = true;

		foreach(lc, indexes)
		{
			Relation	irel = index_open(lfirst_oid(lc), AccessShareLock);

			Form_pg_index ind = irel->rd_index;

			if (lfirst_oid(lc) == pk)
			{
				/* Exactly (scope, key), in either order, as ON CONFLICT infers. */
				if (!ind->indimmediate || !ind->indisvalid || ind->indnkeyatts != 2 ||
					!heap_attisnull(irel->rd_indextuple, Anum_pg_index_indexprs, NULL) ||
					!heap_attisnull(irel->rd_indextuple, Anum_pg_index_indpred, NULL) ||
					!((ind->indkey.values[0] == layout.attnums[CLAIMS_SCOPE] &&
					   ind->indkey.values[1] == layout.attnums[CLAIMS_KEY]) ||
					  (ind->indkey.values[0] == layout.attnums[CLAIMS_KEY] &&
					   ind->indkey.values[1] == layout.attnums[CLAIMS_SCOPE])))
					usable = false;
			}
			else if (ind->indisunique || ind->indisexclusion)
				usable = false;
			index_close(irel, AccessShareLock);
		}
		list_free(indexes);
		if (!usable)
			goto done;
	}

	checks_cxt = AllocSetContextCreate(CacheMemoryContext, "idempotency claims checks",
									   ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(checks_cxt);
	for (int i = 0; constr != NULL && i < constr->num_check; i++)
	{
#if PG_VERSION_NUM >= 180000
		if (!constr->check[i].ccenforced)
			continue;
#endif
		check_exprs = lappend(check_exprs, stringToNode(constr->check[i].ccbin));
	}
	MemoryContextSwitchTo(old);
	insert_direct = constr == NULL || constr->num_check == rel->rd_rel->relchecks;

done:
	insert_checked = true;
	return insert_direct;
}

/*
 * May a write (ACL_INSERT or ACL_UPDATE) go in directly?  Whatever the SQL
 * statement would refuse, it refuses itself: a read-only transaction, an
 * owner without the right to write or to read (the insert returns what
 * it inserted; the update's WHERE reads the row).  Takes the writer's
 * lock, whose invalidations may change what was kept.
 */
static bool
direct_write_allowed(Relation rel, AclMode write)
{
	if (XactReadOnly ||
		pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), write) != ACLCHECK_OK ||
		pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		return false;
	LockRelationOid(RelationGetRelid(rel), RowExclusiveLock);
	return valid && layout.attnums_known && direct_insert_allowed(rel) &&
		valid;					/* opening the indexes took in invalidations */
}

/* Do the row's values pass the table's CHECK constraints? */
static bool
checks_pass(EState *estate, TupleTableSlot *slot)
{
	ExprContext *econtext = GetPerTupleExprContext(estate);
	ListCell   *lc;

	econtext->ecxt_scantuple = slot;
	foreach(lc, check_exprs)
	{
		/*
		 * Planned at each call, as the executor plans them at each start:
		 * planning inlines SQL functions and folds immutable calls, whose
		 * definitions may have changed since the expression was read.
		 */
		MemoryContext old = MemoryContextSwitchTo(estate->es_query_cxt);
		ExprState  *state = ExecPrepareExpr(copyObject((Expr *) lfirst(lc)), estate);

		MemoryContextSwitchTo(old);
		if (!ExecCheck(state, econtext))
			return false;
	}
	return true;
}

/*
 * Insert a new claim of a key: state in_progress, a new fencing token,
 * attempts 1, the lease and expiry counted from the clock now.  The caller
 * has the table open (IdemClaimsOpen) and has found no row for the key.
 * Returns CLAIMS_INSERTED with the token and expiry set, CLAIMS_TAKEN if
 * another transaction holds the key (nothing is left behind), or
 * CLAIMS_USE_SQL if the insert must go through the SQL statement.
 */
IdemClaimsInsertResult
IdemClaimsInsert(Relation rel, const IdemNewClaim *claim, int64 *token,
				 TimestampTz *expires_at)
{
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	Datum	   *values;
	bool	   *nulls;
	TimestampTz now;
	TransactionId xid;
	uint32		spec_token;
	bool		conflict = false;
	List	   *recheck;

	if (!direct_write_allowed(rel, ACL_INSERT) ||
		(claim->fingerprint == NULL && fingerprint_not_null))
		return CLAIMS_USE_SQL;

	estate = CreateExecutorState();
	estate->es_output_cid = GetCurrentCommandId(true);
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 0, NULL, 0);
	ExecOpenIndices(rri, true);
	slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel), table_slot_callbacks(rel));

	ExecClearTuple(slot);
	slot->tts_tableOid = RelationGetRelid(rel);	/* for a CHECK reading tableoid */
	values = slot->tts_values;
	nulls = slot->tts_isnull;
	memset(nulls, true, RelationGetDescr(rel)->natts * sizeof(bool));
#define SET(c, d) (values[layout.attnums[c] - 1] = (d), nulls[layout.attnums[c] - 1] = false)
	now = GetCurrentTimestamp();
	*token = DatumGetInt64(DirectFunctionCall1(nextval_oid, ObjectIdGetDatum(tokens_relid)));
	*expires_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														  TimestampTzGetDatum(now),
														  IntervalPGetDatum(claim->ttl)));
	SET(CLAIMS_SCOPE, PointerGetDatum(claim->scope));
	SET(CLAIMS_KEY, PointerGetDatum(claim->key));
	if (claim->fingerprint != NULL)
		SET(CLAIMS_FINGERPRINT, PointerGetDatum(claim->fingerprint));
	SET(CLAIMS_STATE, layout.states[CLAIMS_IN_PROGRESS]);
	SET(CLAIMS_TOKEN, Int64GetDatum(*token));
	SET(CLAIMS_ATTEMPTS, Int32GetDatum(1));
	SET(CLAIMS_LEASE_UNTIL, DirectFunctionCall2(timestamptz_pl_interval,
												TimestampTzGetDatum(now),
												IntervalPGetDatum(claim->lease)));
	SET(CLAIMS_CREATED_AT, TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()));
	SET(CLAIMS_EXPIRES_AT, TimestampTzGetDatum(*expires_at));
#undef SET
	ExecStoreVirtualTuple(slot);

	if (!checks_pass(estate, slot))
	{
		/* Let the SQL statement report the violated constraint. */
		ExecCloseIndices(rri);
		ExecResetTupleTable(estate->es_tupleTable, false);
		FreeExecutorState(estate);
		return CLAIMS_USE_SQL;
	}

	/* As the executor inserts with ON CONFLICT, the pre-check aside. */
	xid = GetCurrentTransactionId();
	spec_token = SpeculativeInsertionLockAcquire(xid);
	table_tuple_insert_speculative(rel, slot, estate->es_output_cid, 0, NULL, spec_token);
	recheck = idem_insert_index_tuples(rri, slot, estate, true, &conflict,
									   list_make1_oid(idem_primary_key_index(rel)));
	table_tuple_complete_speculative(rel, slot, spec_token, !conflict);
	SpeculativeInsertionLockRelease(xid);
	list_free(recheck);

	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	return conflict ? CLAIMS_TAKEN : CLAIMS_INSERTED;
}

/*
 * Write a new version of the row version at tid, with the given columns
 * set and the others as they are.  The caller has the table open
 * (IdemClaimsOpen), has read that version with a snapshot of this
 * statement (so it cannot have been pruned since), and has checked that it
 * is the owner's live claim.  Returns CLAIMS_UPDATED, or
 * CLAIMS_UPDATE_USE_SQL with nothing written: the table or the caller's
 * rights need the SQL statement, the new row fails a CHECK constraint or
 * puts a null in a column made NOT NULL (the statement reports either), or
 * the version is no longer the key's latest.
 */
IdemClaimsWriteResult
IdemClaimsUpdate(Relation rel, ItemPointer tid, const IdemClaimsSet *sets, int nsets,
				 int64 token)
{
	TupleDesc	desc = RelationGetDescr(rel);
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *old;
	TupleTableSlot *slot;
	TM_Result	result;
	TM_FailureData tmfd;
	LockTupleMode lockmode;
	IdemClaimsWriteResult done = CLAIMS_UPDATE_USE_SQL;
#if PG_VERSION_NUM >= 160000
	TU_UpdateIndexes update_indexes;
#else
	bool		update_indexes;
#endif

	if (!direct_write_allowed(rel, ACL_UPDATE) || rel->rd_rel->relrowsecurity)
		return CLAIMS_UPDATE_USE_SQL;
	/* A publication of updates needs a replica identity, as for the UPDATE. */
	CheckCmdReplicaIdentity(rel, CMD_UPDATE);

	estate = CreateExecutorState();
	estate->es_output_cid = GetCurrentCommandId(true);
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 0, NULL, 0);
	ExecOpenIndices(rri, false);
	old = ExecInitExtraTupleSlot(estate, desc, table_slot_callbacks(rel));
	slot = ExecInitExtraTupleSlot(estate, desc, &TTSOpsVirtual);

	/*
	 * The version as it is on its page: still the key's claim with the
	 * caller's token (a check the caller's read makes redundant, kept so
	 * that a wrong tid can only fall back).
	 */
	if (!table_tuple_fetch_row_version(rel, tid, SnapshotAny, old))
		goto out;
	slot_getallattrs(old);
	if (old->tts_isnull[layout.attnums[CLAIMS_TOKEN] - 1] ||
		DatumGetInt64(old->tts_values[layout.attnums[CLAIMS_TOKEN] - 1]) != token)
		goto out;

	ExecClearTuple(slot);
	memcpy(slot->tts_values, old->tts_values, desc->natts * sizeof(Datum));
	memcpy(slot->tts_isnull, old->tts_isnull, desc->natts * sizeof(bool));
	for (int i = 0; i < nsets; i++)
	{
		AttrNumber	att = layout.attnums[sets[i].column];

		/* A NOT NULL a DBA added: the statement reports it. */
		if (sets[i].isnull && TupleDescAttr(desc, att - 1)->attnotnull)
			goto out;
		slot->tts_values[att - 1] = sets[i].isnull ? (Datum) 0 : sets[i].value;
		slot->tts_isnull[att - 1] = sets[i].isnull;
	}
	slot->tts_tableOid = RelationGetRelid(rel);
	ExecStoreVirtualTuple(slot);
	if (!checks_pass(estate, slot))
		goto out;

	result = table_tuple_update(rel, tid, slot, estate->es_output_cid,
								InvalidSnapshot, InvalidSnapshot, true,
								&tmfd, &lockmode, &update_indexes);
	if (result != TM_Ok)
		goto out;				/* changed since it was read: nothing written */
#if PG_VERSION_NUM >= 160000
	if (update_indexes != TU_None)
		list_free(ExecInsertIndexTuples(rri, slot, estate, true, false, NULL, NIL,
										update_indexes == TU_Summarizing));
#else
	if (update_indexes)
		list_free(ExecInsertIndexTuples(rri, slot, estate, true, false, NULL, NIL));
#endif
	done = CLAIMS_UPDATED;

out:
	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	return done;
}
