/*-------------------------------------------------------------------------
 *
 * claim.c
 *	  Idempotency-key claims: idem_claim, the calls its owner makes
 *	  afterwards (idem_complete, idem_fail, idem_checkpoint, idem_extend,
 *	  idem_release) and idem_lookup.
 *
 * Concurrency.  There is no lock of our own: the rows are the locks, so a
 * transaction may claim any number of keys.  A call reads the key's row
 * with a fresh snapshot, decides, and writes with a WHERE clause that
 * restates what it saw (the token, the state, the lease or expiry).  A
 * caller racing an uncommitted claim therefore waits in PostgreSQL's own
 * row or unique-index wait for that transaction to end, finds its WHERE
 * no longer true (or the key taken) if it committed, and reads again to
 * report what it left; if it rolled back, the caller's write goes through.
 * With wait => false, a look at the primary key index with a dirty
 * snapshot first tells whether another transaction is writing the key at
 * that moment, and the call reports in_progress instead of waiting.  In
 * REPEATABLE READ and SERIALIZABLE, losing such a race raises PostgreSQL's
 * serialization failure (40001), to be retried as usual.
 *
 * Claim, business write and completion in one transaction are exactly
 * once: the claim is a row write, and a rollback removes it.
 *
 * Time is the database's clock, clock_timestamp(): leases and expiry are
 * judged when the call runs, not when its transaction began.
 *
 * A write that may lose such a race (a takeover, a renewal) runs in a
 * subtransaction rolled back when it changes nothing, so that a caller who
 * only reports someone else's claim keeps no lock on its row.
 *
 * Rights.  Every call first checks that the caller may use the scope
 * (IdemCheckScope), before it reads anything; then it reads and writes
 * idempotency.claims with the extension owner's rights (IdemAsOwner), the
 * caller having none on the table.  Reading the key's row, every call's
 * first step after that, goes straight through the primary key; writes
 * run through SPI plans prepared once per backend and kept.  Every name in
 * them is schema-qualified, types and operators included, so that the
 * caller's search_path cannot redirect them (a kept plan is analysed
 * again under the search_path of the call that revalidates it); no SQL
 * text is built per call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/skey.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_claim);
PG_FUNCTION_INFO_V1(idem_complete);
PG_FUNCTION_INFO_V1(idem_fail);
PG_FUNCTION_INFO_V1(idem_checkpoint);
PG_FUNCTION_INFO_V1(idem_extend);
PG_FUNCTION_INFO_V1(idem_release);
PG_FUNCTION_INFO_V1(idem_lookup);

/* Hard limits; per-scope policies (policy.c) lower them. */
#define CLAIM_MAX_KEY_BYTES		255
#define CLAIM_MAX_SCOPE_BYTES	255
#define FINGERPRINT_BYTES		32

/* Fragments of the SQL below. */
#define EQ			" OPERATOR(pg_catalog.=) "
#define PLUS		" OPERATOR(pg_catalog.+) "
#define CLOCK		"pg_catalog.clock_timestamp()"
#define NEXT_TOKEN	"pg_catalog.nextval('idempotency.claim_tokens'::pg_catalog.regclass)"
#define KEY_IS		" WHERE scope" EQ "$1 AND key" EQ "$2"
#define TOKEN_IS(n) " AND token" EQ "$" #n
/* What an owner's call requires of the row, restated in its WHERE. */
#define OWNED(n)	TOKEN_IS(n) " AND state OPERATOR(pg_catalog.=) 'in_progress'" \
					" AND expires_at OPERATOR(pg_catalog.>) " CLOCK

/* An expired claim made anew; also_cleared: the columns of 1.1.0 or "". */
#define RENEW(also_cleared) \
	"UPDATE idempotency.claims SET fingerprint = $3, state = 'in_progress'," \
	" token = " NEXT_TOKEN ", attempts = 1, lease_until = " CLOCK PLUS "$4," \
	" recovery_point = NULL, response = NULL, status = NULL," also_cleared \
	" created_at = pg_catalog.now(), expires_at = " CLOCK PLUS "$5" \
	KEY_IS TOKEN_IS(6) " AND expires_at OPERATOR(pg_catalog.<=) " CLOCK \
	" RETURNING token, expires_at"

/* An owner's attempt ended; also_set: the columns of 1.1.0 or "". */
#define FINISH(also_set) \
	"UPDATE idempotency.claims SET state = CASE WHEN $6 THEN 'failed'" \
	" ELSE 'completed' END::idempotency.idem_claim_state," \
	" response = $4, status = $5," also_set " lease_until = NULL" \
	KEY_IS OWNED(3)

typedef enum ClaimPlan
{
	PLAN_INSERT,
	PLAN_RENEW,
	PLAN_RENEW_1_0,
	PLAN_TAKEOVER,
	PLAN_FINISH,
	PLAN_FINISH_1_0,
	PLAN_CHECKPOINT,
	PLAN_EXTEND,
	PLAN_RELEASE,
	PLAN_LOOKUP,
	NUM_PLANS
} ClaimPlan;

static const IdemPlanDef plan_defs[NUM_PLANS] = {
	[PLAN_INSERT] = {
		"INSERT INTO idempotency.claims (scope, key, fingerprint, state, token,"
		" attempts, lease_until, created_at, expires_at)"
		" VALUES ($1, $2, $3, 'in_progress', " NEXT_TOKEN ", 1, " CLOCK PLUS "$4,"
		" pg_catalog.now(), " CLOCK PLUS "$5)"
		" ON CONFLICT (scope, key) DO NOTHING RETURNING token, expires_at",
		5, {TEXTOID, TEXTOID, BYTEAOID, INTERVALOID, INTERVALOID}
	},
	[PLAN_RENEW] = {
		RENEW(" body = NULL, content_type = NULL, headers = NULL,"),
		6, {TEXTOID, TEXTOID, BYTEAOID, INTERVALOID, INTERVALOID, INT8OID}
	},
	/* The same, on a table of 1.0.0 (the library updated, the extension not yet). */
	[PLAN_RENEW_1_0] = {
		RENEW(""),
		6, {TEXTOID, TEXTOID, BYTEAOID, INTERVALOID, INTERVALOID, INT8OID}
	},
	[PLAN_TAKEOVER] = {
		"UPDATE idempotency.claims SET state = 'in_progress', token = " NEXT_TOKEN ","
		" attempts = attempts" PLUS "1, lease_until = " CLOCK PLUS "$4,"
		" expires_at = GREATEST(expires_at, " CLOCK PLUS "$4),"
		" fingerprint = COALESCE(fingerprint, $3)"
		KEY_IS TOKEN_IS(5) " AND expires_at OPERATOR(pg_catalog.>) " CLOCK
		" AND (state OPERATOR(pg_catalog.=) 'failed' OR (state OPERATOR(pg_catalog.=) 'in_progress'"
		" AND lease_until OPERATOR(pg_catalog.<=) " CLOCK "))"
		" RETURNING token, attempts, recovery_point, expires_at",
		5, {TEXTOID, TEXTOID, BYTEAOID, INTERVALOID, INT8OID}
	},
	[PLAN_FINISH] = {
		FINISH(" body = $7, content_type = $8, headers = $9,"),
		9, {TEXTOID, TEXTOID, INT8OID, JSONBOID, INT4OID, BOOLOID, BYTEAOID, TEXTOID, JSONBOID}
	},
	[PLAN_FINISH_1_0] = {
		FINISH(""),
		6, {TEXTOID, TEXTOID, INT8OID, JSONBOID, INT4OID, BOOLOID}
	},
	[PLAN_CHECKPOINT] = {
		"UPDATE idempotency.claims SET recovery_point = $4" KEY_IS OWNED(3),
		4, {TEXTOID, TEXTOID, INT8OID, TEXTOID}
	},
	[PLAN_EXTEND] = {
		"UPDATE idempotency.claims SET lease_until = " CLOCK PLUS "$4,"
		" expires_at = GREATEST(expires_at, " CLOCK PLUS "$4)"
		KEY_IS OWNED(3) " RETURNING lease_until",
		4, {TEXTOID, TEXTOID, INT8OID, INTERVALOID}
	},
	[PLAN_RELEASE] = {
		"DELETE FROM idempotency.claims" KEY_IS OWNED(3),
		3, {TEXTOID, TEXTOID, INT8OID}
	},
	[PLAN_LOOKUP] = {
		"SELECT c FROM idempotency.claims c"
		" WHERE c.scope" EQ "$1 AND c.key" EQ "$2"
		" AND c.expires_at OPERATOR(pg_catalog.>) " CLOCK,
		2, {TEXTOID, TEXTOID}
	},
};

static SPIPlanPtr plans[NUM_PLANS];

/* The columns of idempotency.claims that decisions read. */
enum
{
	COL_STATE, COL_FINGERPRINT, COL_TOKEN, COL_ATTEMPTS, COL_LEASE_UNTIL,
	COL_RECOVERY_POINT, COL_RESPONSE, COL_STATUS, COL_EXPIRES_AT,
	COL_BODY, COL_CONTENT_TYPE, COL_HEADERS, NUM_READ_COLS
};

static const IdemClaimsColumn read_cols[NUM_READ_COLS] = {
	CLAIMS_STATE, CLAIMS_FINGERPRINT, CLAIMS_TOKEN, CLAIMS_ATTEMPTS, CLAIMS_LEASE_UNTIL,
	CLAIMS_RECOVERY_POINT, CLAIMS_RESPONSE, CLAIMS_STATUS, CLAIMS_EXPIRES_AT,
	CLAIMS_BODY, CLAIMS_CONTENT_TYPE, CLAIMS_HEADERS
};

/* The labels of idem_claim_state, in the order of CLAIMS_IN_PROGRESS... */
static const char *const state_names[CLAIMS_NUM_STATES] = {"in_progress", "completed", "failed"};

/* A call's key and scope, validated. */
typedef struct ClaimKey
{
	text	   *key;			/* the key */
	text	   *scope;			/* its scope */
} ClaimKey;

static void concurrent_change(const ClaimKey *k);

/* A claim row as read; datums live until SPI_finish, or without SPI as
 * long as the caller's memory context. */
typedef struct ClaimRow
{
	bool		found;			/* a row exists (possibly expired) */
	Datum		values[NUM_READ_COLS];	/* the columns (COL_*) */
	bool		nulls[NUM_READ_COLS];	/* and their nulls */
	const char *state;			/* "in_progress", "completed", "failed" */
	int64		token;			/* current owner's token */
	bool		expired;		/* past expires_at: counts as absent */
	bool		lease_over;		/* the owner's lease has run out */
	bool		has_body;		/* the table has the columns of 1.1.0 */
	bool		mine;			/* written by this transaction */
	ItemPointerData tid;		/* the version read */
} ClaimRow;

/* The outcomes, in the order of idem_outcome. */
typedef enum Outcome
{
	OUTCOME_CLAIMED, OUTCOME_COMPLETED, OUTCOME_IN_PROGRESS, OUTCOME_MISMATCH,
	OUTCOME_RECLAIMED, NUM_OUTCOMES
} Outcome;

/* The counter of each outcome in idempotency.stats. */
static const IdemCounter outcome_counters[NUM_OUTCOMES] = {
	IDEM_CLAIMS_CLAIMED, IDEM_CLAIMS_REPLAYED, IDEM_CLAIMS_IN_PROGRESS,
	IDEM_CLAIMS_MISMATCHED, IDEM_CLAIMS_RECLAIMED
};

static const char *const outcome_names[NUM_OUTCOMES] = {
	"claimed", "completed", "in_progress", "mismatch", "reclaimed"
};

/* The fields of idem_claim_result, in order. */
enum
{
	RES_OUTCOME, RES_TOKEN, RES_RESPONSE, RES_STATUS, RES_RECOVERY_POINT,
	RES_ATTEMPTS, RES_EXPIRES_AT,
	RES_BODY, RES_CONTENT_TYPE, RES_HEADERS,	/* since 1.1.0 */
	NUM_RES_COLS
};

/* The fields of 1.0.0's idem_claim_result, still filled before an update. */
#define NUM_RES_COLS_1_0	RES_BODY

/* And their types, the outcome enum aside (util.c checks the row). */
static const Oid result_types[NUM_RES_COLS] = {
	InvalidOid, INT8OID, JSONBOID, INT4OID, TEXTOID, INT4OID, TIMESTAMPTZOID,
	BYTEAOID, TEXTOID, JSONBOID
};

/*
 * idem_claim's row, returned through flinfo (idem_serve's call): the
 * descriptor to read it with, pinned or not (ReleaseTupleDesc it).
 * Called directly, the function kept in the call site's fn_extra the
 * descriptor the row was built with.  Called through a wrapper of fmgr's
 * (idem_claim made SECURITY DEFINER or given a SET clause: fn_extra is the
 * wrapper's), the row's type as it is now, checked as idem_claim checks it.
 */
static const IdemResultCache *
kept_result(FmgrInfo *flinfo)
{
	return flinfo->fn_addr == idem_claim ? flinfo->fn_extra : NULL;
}

TupleDesc
IdemClaimResultDesc(FmgrInfo *flinfo, HeapTupleHeader row)
{
	const IdemResultCache *cache = kept_result(flinfo);
	TupleDesc	desc;

	if (cache != NULL)
		return cache->tupdesc;
	desc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(row), HeapTupleHeaderGetTypMod(row));
	IdemCheckResultRow(flinfo->fn_oid, desc, result_types, NUM_RES_COLS_1_0,
					   lengthof(result_types));
	return desc;
}

/*
 * Does outcome, read from idem_claim's row with desc, make the caller the
 * owner (claimed or reclaimed)?  By the outcome values the call chose
 * from, or, through fmgr's wrapper, by their labels.
 */
bool
IdemClaimOwns(FmgrInfo *flinfo, TupleDesc desc, Datum outcome)
{
	const IdemResultCache *cache = kept_result(flinfo);
	Oid			type = TupleDescAttr(desc, 0)->atttypid;

	if (cache != NULL)
		return outcome == cache->outcomes[OUTCOME_CLAIMED] ||
			outcome == cache->outcomes[OUTCOME_RECLAIMED];
	return outcome == DirectFunctionCall2(enum_in, CStringGetDatum(outcome_names[OUTCOME_CLAIMED]),
										  ObjectIdGetDatum(type)) ||
		outcome == DirectFunctionCall2(enum_in, CStringGetDatum(outcome_names[OUTCOME_RECLAIMED]),
									   ObjectIdGetDatum(type));
}

static uint64
run_plan(ClaimPlan which, Datum *args, const char *nulls, bool read_only)
{
	return IdemRunPlan(&plan_defs[which], &plans[which], args, nulls, read_only);
}

/*
 * A write that may lose a race (util.c), its lock waits given up at
 * deadline if there is one (wait_for): then it reports no change.
 */
static bool
run_contested(ClaimPlan which, Datum *args, const char *nulls, TimestampTz deadline)
{
	return IdemRunContestedUntil(&plan_defs[which], &plans[which], args, nulls, deadline);
}

/*
 * How often a call may find its write beaten by another transaction before
 * it gives up.  In READ COMMITTED every lost race means another transaction
 * committed a change to the key, so the call makes progress and the bound
 * is only a backstop; in the snapshot levels a second try sees the same
 * snapshot and cannot do better.
 */
#define MAX_TRIES_READ_COMMITTED	1000
#define MAX_TRIES_SNAPSHOT			2

static void
check_tries(const ClaimKey *k, int tries)
{
	CHECK_FOR_INTERRUPTS();
	if (tries >= (IsolationUsesXactSnapshot() ? MAX_TRIES_SNAPSHOT : MAX_TRIES_READ_COMMITTED))
		concurrent_change(k);
}

/*
 * A write kept finding the row changed: in REPEATABLE READ or SERIALIZABLE
 * the transaction's snapshot does not show what another transaction
 * committed.
 */
static void
concurrent_change(const ClaimKey *k)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access to idempotency key \"%s\" in scope \"%s\"",
					text_to_cstring(k->key), text_to_cstring(k->scope)),
			 errdetail("Its claim was changed by another transaction."),
			 errhint("Retry the transaction; in REPEATABLE READ or SERIALIZABLE, claim keys before reading other data.")));
}

/*
 * Read the key (argument key_arg) and scope (scope_arg) of a call.
 */
static void
claim_key_args(FunctionCallInfo fcinfo, int key_arg, int scope_arg, ClaimKey *k)
{
	k->key = IdemNameArg(fcinfo, key_arg, "key", CLAIM_MAX_KEY_BYTES,
					  "Use a unique request identifier, such as the client's Idempotency-Key header.");
	k->scope = IdemNameArg(fcinfo, scope_arg, "scope", CLAIM_MAX_SCOPE_BYTES,
						"Name the kind of request, such as 'payments', or leave scope out for 'default'.");
}

/*
 * Open idempotency.claims (claims_table.c); the lock is kept to the end of
 * the transaction.  The caller has checked the scope and switched to the
 * owner's rights.  Row-level security on the table could filter nothing
 * here (the read goes through the primary key, and the owner's statements
 * bypass it), so rather than seem to, it is refused.
 */
static Relation
open_claims(const IdemClaimsLayout **layout)
{
	Relation	rel = IdemClaimsOpen(AccessShareLock, layout);

	if (rel->rd_rel->relrowsecurity)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("row-level security on idempotency.claims is not supported"),
				 errdetail("Claims are read and written with the extension owner's rights, which row-level security policies would not filter."),
				 errhint("Separate tenants by scope, with allowed_roles in idempotency.policies, and disable row-level security on the table.")));
	return rel;
}

/*
 * Is this version of a row past its expiry?  An expired version that
 * another transaction is deleting does not make its key busy: that is a
 * purge, or a release (or a manual DELETE) that crossed the expiry, and
 * either leaves the key free, so the caller goes on and waits for it like
 * any writer of an expired row.  A takeover updating an expired version
 * always changes expires_at, so it shows up as the new version it inserts.
 */
static bool
version_expired(const IdemClaimsLayout *layout, TupleTableSlot *slot)
{
	bool		isnull;
	Datum		d;

	d = slot_getattr(slot, layout->attnums[CLAIMS_EXPIRES_AT], &isnull);
	return !isnull && DatumGetTimestampTz(d) <= GetCurrentTimestamp();
}

/*
 * Find the key's row through the primary key under the given snapshot and
 * return a copy, or NULL.  With busy (and a dirty snapshot), set *busy if
 * another transaction is inserting, updating or deleting the row (but not
 * deleting an expired one), instead of returning it.
 */
/* A transaction writing a key's row: the one to wait for. */
typedef struct ClaimWriter
{
	TransactionId xid;
	uint32		speculative_token;	/* an insertion not yet confirmed */
} ClaimWriter;

static HeapTuple
fetch_claim(Relation rel, const IdemClaimsLayout *layout, const ClaimKey *k,
			Snapshot snapshot, bool *busy, ClaimWriter *writer)
{
	Relation	irel = index_open(idem_primary_key_index(rel), AccessShareLock);
	ScanKeyData skey[2];
	IndexScanDesc scan;
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	HeapTuple	tuple = NULL;

	ScanKeyEntryInitialize(&skey[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   irel->rd_indcollation[0], F_TEXTEQ, PointerGetDatum(k->scope));
	ScanKeyEntryInitialize(&skey[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   irel->rd_indcollation[1], F_TEXTEQ, PointerGetDatum(k->key));
	scan = idem_index_beginscan(rel, irel, snapshot, 2);
	index_rescan(scan, skey, 2, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		if (busy == NULL)
		{
			tuple = ExecCopySlotHeapTuple(slot);
			break;
		}
		if (TransactionIdIsValid(snapshot->xmin) ||
			(TransactionIdIsValid(snapshot->xmax) && !version_expired(layout, slot)))
		{
			*busy = true;
			if (writer)
			{
				writer->xid = TransactionIdIsValid(snapshot->xmin) ? snapshot->xmin : snapshot->xmax;
				writer->speculative_token = snapshot->speculativeToken;
			}
			break;
		}
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(irel, NoLock);	/* locked to the end of the transaction */
	return tuple;
}

/*
 * Read the key's row straight from the primary key: this is every call's
 * first step.  With latest, under a fresh snapshot (in READ COMMITTED; the
 * transaction's own in the other levels) that sees this transaction's own
 * writes, as an SPI query would.  Without, under the statement's snapshot,
 * as a SELECT in the same statement would read it (see idem_claim).
 */
static void
read_row(const ClaimKey *k, ClaimRow *row, bool latest)
{
	const IdemClaimsLayout *layout;
	Relation	rel = open_claims(&layout);
	Snapshot	snapshot;
	HeapTuple	tuple;
	TimestampTz now;

	memset(row, 0, sizeof(*row));
	row->has_body = layout->has_body;
	if (!latest && ActiveSnapshotSet())
		tuple = fetch_claim(rel, layout, k, GetActiveSnapshot(), NULL, NULL);
	else
	{
		CommandCounterIncrement();	/* see this transaction's own writes */
		snapshot = RegisterSnapshot(GetTransactionSnapshot());
		tuple = fetch_claim(rel, layout, k, snapshot, NULL, NULL);
		UnregisterSnapshot(snapshot);
	}

	if (tuple != NULL)
	{
		TupleDesc	desc = RelationGetDescr(rel);
		Datum		few_values[16];
		bool		few_nulls[16];
		Datum	   *values = desc->natts <= 16 ? few_values : palloc(desc->natts * sizeof(Datum));
		bool	   *nulls = desc->natts <= 16 ? few_nulls : palloc(desc->natts * sizeof(bool));

		heap_deform_tuple(tuple, desc, values, nulls);
		for (int i = 0; i < NUM_READ_COLS; i++)
		{
			AttrNumber	att = layout->attnums[read_cols[i]];

			row->values[i] = att == InvalidAttrNumber ? (Datum) 0 : values[att - 1];
			row->nulls[i] = att == InvalidAttrNumber || nulls[att - 1];
		}
		row->found = true;
		row->tid = tuple->t_self;
		row->mine = TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmin(tuple->t_data));
		row->state = "unknown";
		for (int j = 0; j < CLAIMS_NUM_STATES; j++)
			if (row->values[COL_STATE] == layout->states[j])
				row->state = state_names[j];
		row->token = DatumGetInt64(row->values[COL_TOKEN]);
		now = GetCurrentTimestamp();
		row->expired = DatumGetTimestampTz(row->values[COL_EXPIRES_AT]) <= now;
		row->lease_over = !row->nulls[COL_LEASE_UNTIL] &&
			DatumGetTimestampTz(row->values[COL_LEASE_UNTIL]) <= now;
	}
	table_close(rel, NoLock);
}

/*
 * Is another transaction inserting, updating or deleting this key's row
 * right now?  A dirty snapshot sees uncommitted versions and names the
 * transactions writing them.  (Row locks taken by SELECT FOR UPDATE do not
 * count: they change nothing.)
 */
static bool
key_busy_elsewhere(const ClaimKey *k, ClaimWriter *writer)
{
	const IdemClaimsLayout *layout;
	Relation	rel = open_claims(&layout);
	SnapshotData dirty;
	bool		busy = false;

	InitDirtySnapshot(dirty);
	(void) fetch_claim(rel, layout, k, &dirty, &busy, writer);
	table_close(rel, NoLock);
	return busy;
}

/*
 * Does the stored fingerprint differ from the caller's?  Only when both
 * are known.
 */
static bool
fingerprint_differs(const ClaimRow *row, bytea *fingerprint)
{
	bytea	   *stored;

	if (fingerprint == NULL || row->nulls[COL_FINGERPRINT])
		return false;
	stored = DatumGetByteaPP(row->values[COL_FINGERPRINT]);
	return VARSIZE_ANY_EXHDR(stored) != VARSIZE_ANY_EXHDR(fingerprint) ||
		memcmp(VARDATA_ANY(stored), VARDATA_ANY(fingerprint),
			   VARSIZE_ANY_EXHDR(fingerprint)) != 0;
}

/* Connect SPI before the first write of a call. */
static void
connect_once(bool *connected)
{
	if (!*connected)
	{
		IdemConnectSPI();
		*connected = true;
	}
}

/*
 * Wait, until deadline, while another caller holds the key: its claim not yet
 * committed, or committed and in progress under a live lease
 * (claim_wait.c wakes us when it ends).  Then the caller goes on as usual
 * and finds what it left: a response to replay, a failure or a lease run
 * out to take over, a key to claim, or, the bound passed, a claim still in
 * progress.  A claim of this transaction's own is not waited for.
 */
/* For IdemInSubtransactionUntil: wait for the writer's transaction. */
static bool
wait_for_writer(void *arg)
{
	ClaimWriter *w = arg;

	if (w->speculative_token != 0)
		SpeculativeInsertionWait(w->xid, w->speculative_token);
	else
		XactLockTableWait(w->xid, NULL, NULL, XLTW_None);
	return false;
}

static void
wait_for_owner(const ClaimKey *k, bytea *fingerprint, TimestampTz deadline)
{
	int			slot = IdemClaimWaitSlot(k->scope, k->key);
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "idem_claim wait",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);

	for (;;)
	{
		TimestampTz until = deadline;
		TimestampTz now;
		ClaimRow	row;
		ClaimWriter writer;

		MemoryContextReset(cxt);
		IdemClaimWaitPrepare(slot);	/* before reading: no wake-up is missed */
		if (key_busy_elsewhere(k, &writer))
		{
			/*
			 * A transaction is writing the key: wait for it as a row wait
			 * would, on its lock, which the deadlock detector sees and a
			 * rollback to a savepoint releases.
			 */
			IdemClaimWaitDone();
			if (GetCurrentTimestamp() >= deadline)
				break;
			IdemInSubtransactionUntil(wait_for_writer, &writer, deadline);
			continue;
		}
		read_row(k, &row, true);
		if (!row.found || row.expired || row.mine || row.lease_over ||
			strcmp(row.state, "in_progress") != 0 ||
			fingerprint_differs(&row, fingerprint))
			break;
		/* Nobody announces a lease running out: read again then. */
		if (!row.nulls[COL_LEASE_UNTIL])
			until = Min(deadline, DatumGetTimestampTz(row.values[COL_LEASE_UNTIL]) + 1000);
		now = GetCurrentTimestamp();
		if (now >= deadline)
			break;
		IdemClaimWaitSleep(slot, (long) ((Max(until, now) - now + 999) / 1000));
	}
	IdemClaimWaitDone();
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}

/* The arguments of idem_claim that name the claim: key and scope (memo.c). */
static const int claim_identity[] = {0, 3};

/*
 * idem_claim(key, ttl, fingerprint, scope, lease, wait) → idem_claim_result
 */
Datum
idem_claim(PG_FUNCTION_ARGS)
{
	ClaimKey	k;
	Interval   *ttl;
	const Interval *lease;
	IdemPolicy	policy;
	bytea	   *fingerprint = NULL;
	bool		wait;
	const Interval *wait_for = NULL;
	TimestampTz deadline = 0;
	ClaimRow	row;
	TupleDesc	tupdesc;
	Datum		values[NUM_RES_COLS];
	bool		nulls[NUM_RES_COLS];
	Outcome		outcome;
	IdemResultCache *cache;
	Datum		args[6];
	char		argnulls[6];
	Datum		result;
	IdemUserSave save;
	Datum		memo;
	bool		spi = false;

	claim_key_args(fcinfo, 0, 3, &k);
	IdemCheckScope(k.scope, &policy);
	if ((int) VARSIZE_ANY_EXHDR(k.key) > policy.max_key_length)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key is too long for scope \"%s\"", text_to_cstring(k.scope)),
				 errdetail("It is %d bytes; the scope's max_key_length is %d.",
						   (int) VARSIZE_ANY_EXHDR(k.key), policy.max_key_length),
				 errhint("Use a shorter key or a digest of it, or have an idempotency_admin "
						 "raise max_key_length for the scope in idempotency.policies.")));
	ttl = PG_ARGISNULL(1) ? &policy.default_ttl
		: IdemPolicyTtlArg(fcinfo, 1, "ttl", &policy, k.scope);
	if (!PG_ARGISNULL(2))
	{
		fingerprint = PG_GETARG_BYTEA_PP(2);
		if (VARSIZE_ANY_EXHDR(fingerprint) != FINGERPRINT_BYTES)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("fingerprint must be %d bytes", FINGERPRINT_BYTES),
					 errdetail("It is %d bytes.", (int) VARSIZE_ANY_EXHDR(fingerprint)),
					 errhint("Compute it with idem_fingerprint(payload), a SHA-256 digest.")));
	}
	else if (policy.require_fingerprint)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("scope \"%s\" requires a fingerprint", text_to_cstring(k.scope)),
				 errdetail("Its policy in idempotency.policies sets require_fingerprint."),
				 errhint("Pass fingerprint => idem_fingerprint(payload), so that a reused key with another payload is caught.")));
	if (PG_ARGISNULL(4))
	{
		/* The scope's lease, but never longer than the claim lives. */
		lease = IdemShorter(ttl, &policy.lease);
	}
	else
		lease = IdemDurationArg(fcinfo, 4, "lease", ttl, "the ttl", NULL);
	IdemRequireArg(fcinfo, 5, "wait");
	wait = PG_GETARG_BOOL(5);
	/* wait_for: since 1.1.0 (a declaration of 1.0.0 has six arguments). */
	if (PG_NARGS() > 6 && !PG_ARGISNULL(6))
	{
		Interval	hour = {.time = USECS_PER_HOUR};

		wait_for = IdemDurationArg(fcinfo, 6, "wait_for", &hour, "an hour",
								   "Pass how long a duplicate may wait for the first request's answer, such as '5 seconds'.");
		if (RecoveryInProgress())
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("wait_for is not supported during recovery"),
					 errdetail("A standby cannot wait for a transaction of the primary's."),
					 errhint("Claim on the primary.")));
		if (IsolationUsesXactSnapshot())
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("wait_for requires the READ COMMITTED isolation level"),
					 errdetail("A transaction that keeps one snapshot would not see the answer it waited for."),
					 errhint("Claim in a READ COMMITTED transaction, or leave wait_for out.")));
	}

	/* The same call spread over a row's columns answers once (memo.c). */
	if (IdemMemoFind(fcinfo, &memo))
		PG_RETURN_DATUM(memo);

	cache = IdemGetResultCache(fcinfo, outcome_names, NUM_OUTCOMES,
							   result_types, NUM_RES_COLS_1_0, lengthof(result_types));
	tupdesc = cache->tupdesc;
	IdemCallSinkCheck(fcinfo, tupdesc);
	memset(nulls, true, sizeof(nulls));

	IdemAsOwner(&save);
	if (wait_for != NULL)
	{
		deadline = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														   TimestampTzGetDatum(GetCurrentTimestamp()),
														   IntervalPGetDatum(wait_for)));
		wait = false;			/* no wait for a row lock: the bound rules */
	}

	/*
	 * SPI is connected only for a write: a replay, a mismatch or a claim in
	 * progress is answered from the direct read alone.
	 */
	memset(argnulls, ' ', sizeof(argnulls));
	args[0] = PointerGetDatum(k.scope);
	args[1] = PointerGetDatum(k.key);
	args[2] = PointerGetDatum(fingerprint);
	argnulls[2] = fingerprint ? ' ' : 'n';
	args[3] = IntervalPGetDatum(lease);

	for (int tries = 0;; tries++)
	{
		/*
		 * With wait_for, every try (the first, and one after a race lost to
		 * another waiter that took the key over) waits first for whoever
		 * holds the key, as long as the bound allows.
		 */
		bool		writes;
		bool		latest = tries > 0 || wait_for != NULL || IsolationUsesXactSnapshot() ||
			XactReadOnly || TransactionIdIsValid(GetTopTransactionIdIfAny());

		if (wait_for != NULL)
			wait_for_owner(&k, fingerprint, deadline);

		/*
		 * The first read, in a READ COMMITTED transaction that has written
		 * nothing yet, uses the statement's snapshot rather than taking a
		 * new one: a replay then costs what a SELECT of the stored response
		 * costs.  That read settles only a completed claim not past its
		 * expiry (a replay, or a mismatch), which nothing but its expiry or
		 * a DBA's DELETE ends, as a SELECT in the same statement would;
		 * and a key with no row, which the insert below takes, unless a
		 * transaction has taken it since: the insert meets that row and the
		 * next try reads the latest.  Anything else is read again with the
		 * latest snapshot before it is acted on.  A transaction that has
		 * written (it may have claimed, completed or deleted this key
		 * itself) or may not write always reads the latest.
		 */
		read_row(&k, &row, latest);
		if (!latest && row.found && (row.expired || strcmp(row.state, "completed") != 0))
			read_row(&k, &row, true);

		/*
		 * Whether this try writes: a new or expired claim is taken, a failed
		 * one or one whose lease ran out taken over.  A replay, a mismatch or
		 * a live claim of someone else's is answered from the read alone.
		 */
		writes = !row.found || row.expired ||
			(!fingerprint_differs(&row, fingerprint) &&
			 strcmp(row.state, "completed") != 0 &&
			 (strcmp(row.state, "in_progress") != 0 || row.lease_over));

		/*
		 * With wait => false, a write must not wait for another transaction
		 * claiming, finishing or deleting the key right now: report it.
		 */
		if (writes && !wait && key_busy_elsewhere(&k, NULL))
		{
			if (wait_for != NULL && GetCurrentTimestamp() < deadline)
				continue;		/* the bound has not passed: wait again */
			outcome = OUTCOME_IN_PROGRESS;
			break;
		}

		if (!row.found || row.expired)
		{
			/* First time, or the old claim has expired: the caller owns it. */
			IdemClaimsInsertResult direct = CLAIMS_USE_SQL;

			if (!row.found && tries == 0)
			{
				/*
				 * A new key, at the first try: inserted directly.  A later
				 * try runs the SQL, whose pre-check waits for the
				 * transaction that took the key.
				 */
				IdemNewClaim claim = {k.scope, k.key, fingerprint, lease, ttl};
				const IdemClaimsLayout *layout;
				Relation	rel = open_claims(&layout);
				int64		token;
				TimestampTz expires_at;

				direct = IdemClaimsInsert(rel, &claim, &token, &expires_at);
				table_close(rel, NoLock);
				if (direct == CLAIMS_INSERTED)
				{
					outcome = OUTCOME_CLAIMED;
					values[RES_TOKEN] = Int64GetDatum(token);
					nulls[RES_TOKEN] = false;
					values[RES_EXPIRES_AT] = TimestampTzGetDatum(expires_at);
					nulls[RES_EXPIRES_AT] = false;
					values[RES_ATTEMPTS] = Int32GetDatum(1);
					nulls[RES_ATTEMPTS] = false;
					break;
				}
			}
			if (direct == CLAIMS_USE_SQL)
			{
				args[4] = IntervalPGetDatum(ttl);
				args[5] = Int64GetDatum(row.token);
				connect_once(&spi);
				if (row.found ? run_contested(row.has_body ? PLAN_RENEW : PLAN_RENEW_1_0, args, argnulls, deadline)
					: deadline != 0 ? run_contested(PLAN_INSERT, args, argnulls, deadline)
					: run_plan(PLAN_INSERT, args, argnulls, false) == 1)
				{
					outcome = OUTCOME_CLAIMED;
					values[RES_TOKEN] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &nulls[RES_TOKEN]);
					values[RES_EXPIRES_AT] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &nulls[RES_EXPIRES_AT]);
					values[RES_ATTEMPTS] = Int32GetDatum(1);
					nulls[RES_ATTEMPTS] = false;
					break;
				}
			}
		}
		else if (fingerprint_differs(&row, fingerprint))
		{
			outcome = OUTCOME_MISMATCH;	/* and nothing else about the claim */
			break;
		}
		else if (strcmp(row.state, "completed") == 0)
		{
			/* Done before: replay. */
			outcome = OUTCOME_COMPLETED;
			values[RES_RESPONSE] = row.values[COL_RESPONSE];
			nulls[RES_RESPONSE] = row.nulls[COL_RESPONSE];
			values[RES_STATUS] = row.values[COL_STATUS];
			nulls[RES_STATUS] = row.nulls[COL_STATUS];
			values[RES_ATTEMPTS] = row.values[COL_ATTEMPTS];
			nulls[RES_ATTEMPTS] = false;
			values[RES_EXPIRES_AT] = row.values[COL_EXPIRES_AT];
			nulls[RES_EXPIRES_AT] = false;
			values[RES_BODY] = row.values[COL_BODY];
			nulls[RES_BODY] = row.nulls[COL_BODY];
			values[RES_CONTENT_TYPE] = row.values[COL_CONTENT_TYPE];
			nulls[RES_CONTENT_TYPE] = row.nulls[COL_CONTENT_TYPE];
			values[RES_HEADERS] = row.values[COL_HEADERS];
			nulls[RES_HEADERS] = row.nulls[COL_HEADERS];
			break;
		}
		else if (strcmp(row.state, "in_progress") == 0 && !row.lease_over)
		{
			/* Someone else owns it, under a live lease. */
			if (wait_for != NULL && !row.mine && GetCurrentTimestamp() < deadline)
				continue;		/* taken over by another waiter meanwhile */
			outcome = OUTCOME_IN_PROGRESS;
			values[RES_ATTEMPTS] = row.values[COL_ATTEMPTS];
			nulls[RES_ATTEMPTS] = false;
			values[RES_EXPIRES_AT] = row.values[COL_EXPIRES_AT];
			nulls[RES_EXPIRES_AT] = false;
			break;
		}
		else
		{
			/* A retryable failure, or a lease that ran out: take over. */
			args[4] = Int64GetDatum(row.token);
			connect_once(&spi);
			if (run_contested(PLAN_TAKEOVER, args, argnulls, deadline))
			{
				HeapTuple	tup = SPI_tuptable->vals[0];
				TupleDesc	td = SPI_tuptable->tupdesc;

				outcome = OUTCOME_RECLAIMED;
				values[RES_TOKEN] = SPI_getbinval(tup, td, 1, &nulls[RES_TOKEN]);
				values[RES_ATTEMPTS] = SPI_getbinval(tup, td, 2, &nulls[RES_ATTEMPTS]);
				values[RES_RECOVERY_POINT] = SPI_getbinval(tup, td, 3, &nulls[RES_RECOVERY_POINT]);
				values[RES_EXPIRES_AT] = SPI_getbinval(tup, td, 4, &nulls[RES_EXPIRES_AT]);
				break;
			}
		}

		/*
		 * The write found the row changed: another transaction claimed,
		 * took over or finished the key and committed while we waited for
		 * it.  Read again and report what it left.
		 */
		/*
		 * With wait_for, a write can also have given up a lock wait at the
		 * bound (a row locked, or being deleted, by a transaction that did
		 * not look busy): the bound has passed, so stop trying.
		 */
		if (wait_for != NULL && GetCurrentTimestamp() >= deadline)
		{
			outcome = OUTCOME_IN_PROGRESS;
			break;
		}
		check_tries(&k, tries);
	}

	/* Whoever waits for this key learns of the claim when we end. */
	if (outcome == OUTCOME_CLAIMED || outcome == OUTCOME_RECLAIMED)
		IdemClaimWaitNote(k.scope, k.key);

	/*
	 * A replay, or a mismatch, answers from a commit that may not have
	 * reached the synchronous standbys yet; see sync_wait.c.
	 */
	if (outcome == OUTCOME_COMPLETED || outcome == OUTCOME_MISMATCH)
		IdemAwaitSyncStandbys(outcome == OUTCOME_COMPLETED ?
							  "the stored response" : "the key's fingerprint");

	values[RES_OUTCOME] = cache->outcomes[outcome];
	nulls[RES_OUTCOME] = false;
	IdemCount(outcome_counters[outcome]);
	if (IdemCallSinkTake(fcinfo, tupdesc, values, nulls))
	{
		/* A call in FROM took the columns (call_scan.c). */
		result = (Datum) 0;
		if (spi)
			SPI_finish();
	}
	else if (spi)
	{
		/* Copied out of SPI's memory, which the values may point into. */
		result = PointerGetDatum(SPI_returntuple(heap_form_tuple(tupdesc, values, nulls), tupdesc));
		SPI_finish();
	}
	else
	{
		/* A stored response may be toasted: the row carries it inline. */
		result = HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
	}
	IdemRestoreUser(&save);
	return IdemMemoKeep(fcinfo, result, claim_identity, lengthof(claim_identity));
}

static void
not_in_progress(const ClaimKey *k, const char *state)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("claim of idempotency key \"%s\" is not in progress", text_to_cstring(k->key)),
			 errdetail("It is %s.", state),
			 errhint("Call idem_claim again: a failed claim is taken over, a completed one replayed.")));
}

/* How an owner's call ended. */
typedef enum OwnerResult
{
	OWNER_CHANGED,				/* the write went through */
	OWNER_ALREADY_DONE,			/* the same call had already been made */
	OWNER_NO_CLAIM				/* no live claim (only with missing_ok) */
} OwnerResult;

/*
 * PLAN_FINISH without SQL (claims_table.c): the row just read, the owner's
 * live claim, gets its new version straight from its tuple id.  False if
 * the SQL statement must run instead.
 */
static bool
finish_directly(const ClaimRow *row, const Datum *args, const char *argnulls)
{
	const IdemClaimsLayout *layout;
	Relation	rel = IdemClaimsOpen(AccessShareLock, &layout);
	bool		failed = DatumGetBool(args[5]);
	IdemClaimsSet sets[] = {
		{CLAIMS_STATE, layout->states[failed ? CLAIMS_FAILED : CLAIMS_COMPLETED], false},
		{CLAIMS_RESPONSE, args[3], argnulls[3] == 'n'},
		{CLAIMS_STATUS, args[4], argnulls[4] == 'n'},
		{CLAIMS_BODY, args[6], argnulls[6] == 'n'},
		{CLAIMS_CONTENT_TYPE, args[7], argnulls[7] == 'n'},
		{CLAIMS_HEADERS, args[8], argnulls[8] == 'n'},
		{CLAIMS_LEASE_UNTIL, (Datum) 0, true},
	};
	bool		done;

	done = layout->has_body &&
		IdemClaimsUpdate(rel, unconstify(ItemPointerData *, &row->tid), sets, lengthof(sets),
						 row->token) == CLAIMS_UPDATED;
	table_close(rel, NoLock);
	return done;
}

/*
 * The owner's calls: check that the token is the current owner's and the
 * claim in progress, then run the write, whose WHERE restates both.  If a
 * takeover committed while the write waited for it, reading again turns
 * the failed write into the right refusal (a stale token).  With
 * done_state, finding the claim already in that state with this token
 * means the call was made before: nothing changes.
 */
static OwnerResult
owner_write(const ClaimKey *k, int64 token, ClaimPlan plan, Datum *args,
			const char *argnulls, const char *done_state, bool missing_ok,
			ClaimRow *rowp)
{
	ClaimRow	row;

	/* What idem_claim answered in this expression no longer holds. */
	IdemMemoForget();
	for (int tries = 0;; tries++)
	{
		read_row(k, &row, true);
		if (rowp)
			*rowp = row;
		if (!row.found || row.expired)
		{
			if (missing_ok)
				return OWNER_NO_CLAIM;
			ereport(ERROR,
					(errcode(ERRCODE_NO_DATA_FOUND),
					 errmsg("idempotency key \"%s\" in scope \"%s\" has no live claim",
							text_to_cstring(k->key), text_to_cstring(k->scope)),
					 errdetail("The claim expired, was released, or was never made."),
					 errhint("Call idem_claim again.")));
		}
		/* Neither refusal shows the current token: it is the owner's. */
		if (token < row.token)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("fencing token %lld of idempotency key \"%s\" is stale",
							(long long) token, text_to_cstring(k->key)),
					 errdetail("The key was taken over after the lease ran out."),
					 errhint("Stop working on this key; call idem_claim again to learn its outcome.")));
		if (token > row.token)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("fencing token %lld was not issued for idempotency key \"%s\"",
							(long long) token, text_to_cstring(k->key)),
					 errhint("Pass the token that idem_claim returned.")));
		if (done_state && strcmp(row.state, done_state) == 0)
			return OWNER_ALREADY_DONE;
		if (strcmp(row.state, "in_progress") != 0)
			not_in_progress(k, row.state);

		if (plan == PLAN_FINISH && !row.has_body)
		{
			/* A table of 1.0.0, under the newer library. */
			if (argnulls[6] != 'n' || argnulls[7] != 'n' || argnulls[8] != 'n')
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_COLUMN),
						 errmsg("column \"body\" of table \"idempotency.claims\" does not exist"),
						 errhint("Update the extension: ALTER EXTENSION idempotency UPDATE.")));
			plan = PLAN_FINISH_1_0;
		}
		if ((plan == PLAN_FINISH && finish_directly(&row, args, argnulls)) ||
			run_plan(plan, args, argnulls, false) == 1)
		{
			IdemClaimWaitNote(k->scope, k->key);
			return OWNER_CHANGED;
		}
		check_tries(k, tries);
	}
}

/*
 * Read the key, scope and token arguments of an owner's call, check that
 * the caller may use the scope (its policy into *policy), and fill the
 * first three statement arguments.
 */
static int64
owner_args(FunctionCallInfo fcinfo, int scope_arg, ClaimKey *k, Datum *args,
		   IdemPolicy *policy)
{
	int64		token;

	claim_key_args(fcinfo, 0, scope_arg, k);
	IdemRequireArg(fcinfo, 1, "token");
	token = PG_GETARG_INT64(1);
	IdemCheckScope(k->scope, policy);
	args[0] = PointerGetDatum(k->scope);
	args[1] = PointerGetDatum(k->key);
	args[2] = Int64GetDatum(token);
	return token;
}

/* With the arguments checked: the owner's rights, and SPI. */
static void
owner_begin(IdemUserSave *save)
{
	IdemAsOwner(save);
	IdemConnectSPI();
}

static void
owner_end(const IdemUserSave *save)
{
	SPI_finish();
	IdemRestoreUser(save);
}

/* Are two stored values, each perhaps null, the same (by the type's equality)? */
static bool
same_value(bool null_a, Datum a, bool null_b, Datum b, PGFunction eq)
{
	if (null_a || null_b)
		return null_a == null_b;
	return DatumGetBool(DirectFunctionCall2Coll(eq, C_COLLATION_OID, a, b));
}

/* A header name: an HTTP token (RFC 9110, 5.6.2). */
static bool
header_name_ok(const char *name, int len)
{
	if (len == 0)
		return false;
	for (int i = 0; i < len; i++)
		if (!(isalnum((unsigned char) name[i]) || strchr("!#$%&'*+-.^_`|~", name[i]) != NULL) ||
			name[i] == '\0')
			return false;
	return true;
}

/*
 * A header value: visible ASCII, spaces and tabs only.  No line break,
 * which would end the header and let the value add another; no other
 * control character, and nothing beyond ASCII, which HTTP libraries
 * refuse to send (a replay would then fail every time).
 */
static bool
header_value_ok(const char *value, int len)
{
	for (int i = 0; i < len; i++)
		if (!(value[i] == '\t' || (value[i] >= 0x20 && value[i] <= 0x7e)))
			return false;
	return true;
}

/*
 * Headers that describe the message or the connection rather than the
 * answer: the server that replays the body sets them itself, and a stored
 * one would contradict it.
 */
static bool
header_name_kept(const char *name, int len)
{
	static const char *const framing[] = {
		"content-length", "transfer-encoding", "connection", "keep-alive",
		"upgrade", "te", "trailer", "proxy-connection"
	};

	for (int i = 0; i < (int) lengthof(framing); i++)
		if ((int) strlen(framing[i]) == len && pg_strncasecmp(name, framing[i], len) == 0)
			return false;
	return true;
}

/*
 * The headers to keep with a response: a JSON object, each name an HTTP
 * token and each value a string or an array of strings (a header sent
 * several times) without line breaks, as a client will send them back.
 */
static void
check_headers(Jsonb *headers)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			depth = 0;
	bool		ok = JB_ROOT_IS_OBJECT(headers);

	it = JsonbIteratorInit(&headers->root);
	while (ok && (tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY)
			ok = ++depth <= (tok == WJB_BEGIN_ARRAY ? 2 : 1);
		else if (tok == WJB_END_OBJECT || tok == WJB_END_ARRAY)
			depth--;
		else if (tok == WJB_KEY)
			ok = header_name_ok(v.val.string.val, v.val.string.len) &&
				header_name_kept(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE || tok == WJB_ELEM)
			ok = v.type == jbvString && header_value_ok(v.val.string.val, v.val.string.len);
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object of header names and values"),
				 errdetail("Each name must be an HTTP token other than a framing header (Content-Length, Transfer-Encoding, Connection and the like), and each value a string, or an array of strings, of visible ASCII, spaces and tabs."),
				 errhint("Pass the response headers to replay, such as '{\"location\": \"/orders/7\"}'.")));
}

/*
 * Shared by idem_complete and idem_fail: store the outcome of the current
 * owner's attempt.  Repeating the call with the same token changes nothing
 * and returns false.  The body, its content type and the headers to keep
 * follow the scope argument; a declaration of 1.0.0 has none of them.
 */
static bool
finish(FunctionCallInfo fcinfo, int scope_arg, bool failed, int response_arg, int status_arg)
{
	ClaimKey	k;
	int64		token;
	Datum		args[9];
	char		argnulls[9];
	OwnerResult result;
	ClaimRow	row;
	IdemUserSave save;

	token = owner_args(fcinfo, scope_arg, &k, args, NULL);
	memset(argnulls, ' ', sizeof(argnulls));
	args[3] = PG_ARGISNULL(response_arg) ? (Datum) 0 : PG_GETARG_DATUM(response_arg);
	argnulls[3] = PG_ARGISNULL(response_arg) ? 'n' : ' ';
	args[4] = PG_ARGISNULL(status_arg) ? (Datum) 0 : PG_GETARG_DATUM(status_arg);
	argnulls[4] = PG_ARGISNULL(status_arg) ? 'n' : ' ';
	args[5] = BoolGetDatum(failed);
	for (int i = 0; i < 3; i++)
	{
		int			n = scope_arg + 1 + i;
		bool		null = n >= PG_NARGS() || PG_ARGISNULL(n);

		args[6 + i] = null ? (Datum) 0 : PG_GETARG_DATUM(n);
		argnulls[6 + i] = null ? 'n' : ' ';
	}
	if (argnulls[7] != 'n')
	{
		text	   *ct = DatumGetTextPP(args[7]);

		if (VARSIZE_ANY_EXHDR(ct) == 0 || !header_value_ok(VARDATA_ANY(ct), VARSIZE_ANY_EXHDR(ct)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("content_type must be a header value"),
					 errdetail("It must not be empty, and be visible ASCII, spaces and tabs."),
					 errhint("Pass the Content-Type of the body, such as 'application/json'.")));
	}
	if (argnulls[8] != 'n')
		check_headers(DatumGetJsonbP(args[8]));

	owner_begin(&save);
	result = owner_write(&k, token, PLAN_FINISH, args, argnulls,
						 failed ? "failed" : "completed", false, &row);

	/*
	 * The claim had already ended so.  The same call repeated (a retry after
	 * a lost reply) changes nothing; an ending with another response would
	 * silently lose it, so it is refused.
	 */
	if (result == OWNER_ALREADY_DONE && !failed &&
		!(same_value(row.nulls[COL_RESPONSE], row.values[COL_RESPONSE], argnulls[3] == 'n', args[3], jsonb_eq) &&
		  same_value(row.nulls[COL_STATUS], row.values[COL_STATUS], argnulls[4] == 'n', args[4], int4eq) &&
		  same_value(row.nulls[COL_BODY], row.values[COL_BODY], argnulls[6] == 'n', args[6], byteaeq) &&
		  same_value(row.nulls[COL_CONTENT_TYPE], row.values[COL_CONTENT_TYPE], argnulls[7] == 'n', args[7], texteq) &&
		  same_value(row.nulls[COL_HEADERS], row.values[COL_HEADERS], argnulls[8] == 'n', args[8], jsonb_eq)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("claim of idempotency key \"%s\" has already ended with another response",
						text_to_cstring(k.key)),
				 errdetail("Its stored response and status are kept."),
				 errhint("Call idem_claim to read the stored response.")));
	owner_end(&save);
	return result == OWNER_CHANGED;
}

/*
 * idem_complete(key, token, response, status, scope, body, content_type,
 *				 headers) → boolean
 */
Datum
idem_complete(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(finish(fcinfo, 4, false, 2, 3));
}

/*
 * idem_fail(key, token, retryable, response, status, scope, body,
 *			 content_type, headers) → boolean
 *
 * A retryable failure frees the key: the next caller takes over as
 * reclaimed.  A final one is stored like a completion, so that its
 * response (an error, say) is what later callers replay.
 */
Datum
idem_fail(PG_FUNCTION_ARGS)
{
	IdemRequireArg(fcinfo, 2, "retryable");
	PG_RETURN_BOOL(finish(fcinfo, 5, PG_GETARG_BOOL(2), 3, 4));
}

/*
 * idem_checkpoint(key, token, recovery_point, scope) → boolean
 */
Datum
idem_checkpoint(PG_FUNCTION_ARGS)
{
	ClaimKey	k;
	int64		token;
	Datum		args[4];
	IdemUserSave save;

	IdemRequireArg(fcinfo, 2, "recovery_point");
	token = owner_args(fcinfo, 3, &k, args, NULL);
	args[3] = PG_GETARG_DATUM(2);
	owner_begin(&save);
	owner_write(&k, token, PLAN_CHECKPOINT, args, NULL, NULL, false, NULL);
	owner_end(&save);
	PG_RETURN_BOOL(true);
}

/*
 * idem_extend(key, token, lease, scope) → timestamptz
 *
 * A lease that ran out can still be extended while nobody has taken over.
 * The claim's expiry moves out with the lease if it has to.
 */
Datum
idem_extend(PG_FUNCTION_ARGS)
{
	ClaimKey	k;
	int64		token;
	Datum		args[4];
	Datum		until;
	bool		isnull;
	IdemPolicy	policy;
	IdemUserSave save;

	token = owner_args(fcinfo, 3, &k, args, &policy);
	args[3] = IntervalPGetDatum(IdemPolicyTtlArg(fcinfo, 2, "lease", &policy, k.scope));
	owner_begin(&save);
	owner_write(&k, token, PLAN_EXTEND, args, NULL, NULL, false, NULL);
	/* A timestamptz is passed by value: it outlives SPI_finish. */
	until = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	owner_end(&save);
	PG_RETURN_DATUM(until);
}

/*
 * idem_release(key, token, scope) → boolean
 *
 * The owner gives up without a result: the row goes, and the next caller
 * claims the key afresh.  False if there was no live claim.
 */
Datum
idem_release(PG_FUNCTION_ARGS)
{
	ClaimKey	k;
	int64		token;
	Datum		args[3];
	OwnerResult result;
	IdemUserSave save;

	token = owner_args(fcinfo, 2, &k, args, NULL);
	owner_begin(&save);
	result = owner_write(&k, token, PLAN_RELEASE, args, NULL, NULL, true, NULL);
	owner_end(&save);
	PG_RETURN_BOOL(result == OWNER_CHANGED);
}

/*
 * idem_lookup(key, scope) → claims: the live claim, or NULL.  Takes no
 * lock and changes nothing.
 */
Datum
idem_lookup(PG_FUNCTION_ARGS)
{
	ClaimKey	k;
	Datum		args[2];
	Datum		result = (Datum) 0;
	bool		isnull = true;
	IdemUserSave save;

	claim_key_args(fcinfo, 0, 1, &k);
	IdemCheckScope(k.scope, NULL);
	IdemAsOwner(&save);
	IdemConnectSPI();
	args[0] = PointerGetDatum(k.scope);
	args[1] = PointerGetDatum(k.key);
	if (run_plan(PLAN_LOOKUP, args, NULL, true) == 1)
	{
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			result = SPI_datumTransfer(result, false, -1);
	}
	SPI_finish();
	IdemRestoreUser(&save);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}
