/*-------------------------------------------------------------------------
 *
 * idempotency.h
 *	  Declarations shared between the files of the idempotency extension.
 *
 * The extension keeps one block of shared memory, IdemShared, created by
 * the postmaster when the library is in shared_preload_libraries.  Code
 * that needs it calls IdemRequireShared(), which raises a clear error when
 * the library was loaded too late to have it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEMPOTENCY_H
#define IDEMPOTENCY_H

#include "executor/spi.h"
#include "fmgr.h"
#include "access/tupdesc.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "storage/lockdefs.h"
#include "storage/spin.h"
#include "utils/inval.h"
#include "utils/relcache.h"

#include "compat.h"
#include "datatype/timestamp.h"

/*
 * Snowflake layout: 1 sign bit (always 0) | 41 bits of milliseconds since
 * idempotency.epoch | 10 bits of node id | 12 bits of sequence.
 *
 * The generator works on a "tick": milliseconds and sequence packed as
 * (ms << SNOWFLAKE_SEQ_BITS) | seq.  Adding one to a tick moves to the next
 * sequence number and, after 4095, carries into the next millisecond, which
 * is exactly how the generator runs ahead of the clock in a burst.
 */
#define SNOWFLAKE_SEQ_BITS		12
#define SNOWFLAKE_NODE_BITS		10
#define SNOWFLAKE_TIME_BITS		41
#define SNOWFLAKE_MAX_SEQ		((INT64CONST(1) << SNOWFLAKE_SEQ_BITS) - 1)
#define SNOWFLAKE_MAX_NODE		((1 << SNOWFLAKE_NODE_BITS) - 1)
#define SNOWFLAKE_MAX_MS		((INT64CONST(1) << SNOWFLAKE_TIME_BITS) - 1)
#define SNOWFLAKE_MS_SHIFT		(SNOWFLAKE_SEQ_BITS + SNOWFLAKE_NODE_BITS)

/* Milliseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch). */
#define IDEM_UNIX_TO_PG_MS		INT64CONST(946684800000)

/* The shared generator state; the fields are described in snowflake.c. */
typedef struct SnowflakeShared
{
	pg_atomic_uint64 last_tick;		/* last tick handed out */
	char		pad1[PG_CACHE_LINE_SIZE - sizeof(pg_atomic_uint64)];	/* keep the
																		 * hot field
																		 * alone */
	pg_atomic_uint64 reserved_ms;	/* durable bound: every tick issued is
									 * below reserved_ms << 12 */
	pg_atomic_uint32 adopted;	/* 0 until the first call after a start
								 * has taken over the loaded mark */
	pg_atomic_uint64 floor_base;	/* clock floor after a step back, or
									 * SNOWFLAKE_FLOOR_OFF */
	pg_atomic_uint64 ref_base;	/* the reference clock's floor, or
								 * SNOWFLAKE_FLOOR_OFF */
	pg_atomic_uint64 regressions;	/* clock steps back detected */
	LWLock	   *persist_lock;	/* serialises new reservations; protects
								 * the two fields below */
	int64		mark_ref_ms;	/* reference clock of the loaded mark */
	int			mark_source;	/* where the loaded mark came from */
} SnowflakeShared;

/*
 * A high-water mark of the generator, in milliseconds since
 * idempotency.epoch: no ID has a millisecond at or after bound_ms, and
 * ref_ms is what the generator's reference clock read when it was set.
 */
typedef struct SnowflakeMark
{
	int64		bound_ms;
	int64		ref_ms;
} SnowflakeMark;

/* The custom WAL resource manager of snowflake_state.c. */
#define IDEM_RMGR_ID			186
#define IDEM_RMGR_NAME			"idempotency"

/* The counters of idempotency.stats (stats.c), in the view's order. */
typedef enum IdemCounter
{
	IDEM_CLAIMS_CLAIMED,		/* idem_claim outcomes */
	IDEM_CLAIMS_REPLAYED,
	IDEM_CLAIMS_IN_PROGRESS,
	IDEM_CLAIMS_MISMATCHED,
	IDEM_CLAIMS_RECLAIMED,
	IDEM_PURGED_ROWS,			/* expired rows purged */
	IDEM_IDS_GENERATED,			/* snowflake IDs */
	IDEM_GUARD_REJECTIONS,		/* refused transitions and rows */
	IDEM_STALE_VERSIONS,		/* stale versions refused or reported */
	NUM_IDEM_COUNTERS
} IdemCounter;

typedef struct IdemStatsShared
{
	pg_atomic_uint64 baseline[NUM_IDEM_COUNTERS];	/* sums at the last reset */
	pg_atomic_uint64 regressions_baseline;	/* clock regressions then */
	TimestampTz reset_at;		/* when; under reset_lock */
	slock_t		reset_lock;		/* guards reset_at */
	void	   *slots;			/* per-backend counters (stats.c) */
} IdemStatsShared;

/* claim_wait.c: what waiters for a claim in progress sleep on */
#define IDEM_CLAIM_WAIT_SLOTS 1024
typedef struct IdemClaimWaitShared
{
	ConditionVariable cv[IDEM_CLAIM_WAIT_SLOTS];	/* by a hash of the key */
} IdemClaimWaitShared;

typedef struct IdemShared
{
	SnowflakeShared snowflake;	/* the ID generator */
	IdemStatsShared stats;		/* the counters */
	IdemClaimWaitShared claim_wait; /* waking claim waiters */
} IdemShared;

/* idempotency.c */
extern IdemShared *idem_shared;
extern int	idem_node_id;
extern char *idem_epoch_string;
extern int64 idem_epoch_unix_ms;
extern int	idem_max_lead_ms;
extern int	idem_test_clock_shift_ms;
extern bool idem_require_policy;

extern IdemShared *IdemRequireShared(const char *what);

/* policy.c: a scope's limits (a row of idempotency.policies) */
typedef struct IdemPolicy
{
	Interval	default_ttl;	/* ttl of a claim that gives none */
	Interval	max_ttl;		/* longest ttl (and lease) a call may ask for */
	Interval	lease;			/* lease of a claim that gives none */
	int			max_key_length; /* in bytes */
	bool		require_fingerprint;	/* claims must carry one */
} IdemPolicy;

extern bool IdemCheckScope(text *scope, IdemPolicy *p);
extern Interval *IdemPolicyTtlArg(FunctionCallInfo fcinfo, int n, const char *what,
								  const IdemPolicy *p, text *scope);

/* purge.c */
extern char *idem_purge_database;
extern int	idem_purge_interval_s;
extern int	idem_purge_batch_size;
extern int	idem_purge_delay_ms;
extern void IdemPurgeWorkerRegister(void);

/* call_scan.c */
extern bool idem_call_scan;
extern void IdemCallScanInit(void);
extern bool IdemCallSinkOffered(FunctionCallInfo fcinfo);
extern void IdemCallSinkCheck(FunctionCallInfo fcinfo, TupleDesc desc);
extern void IdemCallScanForget(void);
extern bool IdemCallSinkTake(FunctionCallInfo fcinfo, TupleDesc desc,
							 const Datum *values, const bool *nulls);

/*
 * What a process waits for, as pg_stat_activity.wait_event shows it
 * (PostgreSQL 17 and later; "Extension" before).
 */
typedef enum IdemWait
{
	IDEM_WAIT_SYNC_STANDBY,		/* a replay waits for synchronous standbys */
	IDEM_WAIT_CLOCK,			/* a snowflake burst waits for the clock */
	IDEM_WAIT_PURGE_NAP,		/* the purge worker between rounds */
	IDEM_WAIT_CLAIM,			/* a claim waits for another one to end */
	IDEM_WAIT_COUNT
} IdemWait;

/* idempotency.c */
extern void IdemWaitEventsInit(void);
extern uint32 IdemWaitEvent(IdemWait which);

/* stats.c */
extern Size IdemStatsShmemSize(void);
extern void IdemStatsShmemInit(IdemStatsShared *stats, bool found);
extern void IdemCountN(IdemCounter c, uint64 n);
#define IdemCount(c) IdemCountN((c), 1)

/* memo.c */
extern bool IdemMemoFind(FunctionCallInfo fcinfo, Datum *result);
extern Datum IdemMemoKeep(FunctionCallInfo fcinfo, Datum result,
						  const int *identity, int nidentity);
extern void IdemMemoForget(void);

/* util.c */
typedef struct IdemPlanDef
{
	const char *sql;			/* the statement */
	int			nargs;			/* how many $n */
	Oid			argtypes[9];	/* their types */
} IdemPlanDef;

extern void IdemRequireArg(FunctionCallInfo fcinfo, int n, const char *name);
extern text *IdemNameArg(FunctionCallInfo fcinfo, int n, const char *what,
						 int max_bytes, const char *empty_hint);
extern char *IdemIntervalText(Interval *iv);
extern double IdemIntervalDays(const Interval *iv);
extern const Interval *IdemShorter(const Interval *a, const Interval *b);
extern Interval *IdemDurationArg(FunctionCallInfo fcinfo, int n, const char *what,
								 Interval *max, const char *max_name,
								 const char *hint);
typedef struct IdemResultCache
{
	TupleDesc	tupdesc;		/* the result row's type, blessed */
	Datum		outcomes[FLEXIBLE_ARRAY_MEMBER];	/* enum value per outcome */
} IdemResultCache;

extern void IdemWatchCatalogs(void);
extern void IdemOnRelcacheChange(RelcacheCallbackFunction fn);
extern IdemResultCache *IdemGetResultCache(FunctionCallInfo fcinfo,
										   const char *const *outcome_names,
										   int noutcomes, const Oid *types,
										   int nrequired, int ntypes);
extern void IdemCheckResultRow(Oid fn, TupleDesc tupdesc, const Oid *types,
							   int nrequired, int ntypes);
extern TupleDesc IdemClaimResultDesc(FmgrInfo *flinfo, HeapTupleHeader row);
extern bool IdemClaimOwns(FmgrInfo *flinfo, TupleDesc desc, Datum outcome);
extern void IdemConnectSPI(void);
extern uint64 IdemRunPlan(const IdemPlanDef *def, SPIPlanPtr *plan, Datum *args,
						  const char *nulls, bool read_only);
extern uint64 IdemReadLatest(const IdemPlanDef *def, SPIPlanPtr *plan, Datum *args,
							 Snapshot snapshot);
extern bool IdemInSubtransaction(bool (*fn) (void *arg), void *arg, int swallow,
								 bool *swallowed);
extern char *IdemExtensionVersion(void);
extern bool IdemInSubtransactionUntil(bool (*fn) (void *arg), void *arg,
									  TimestampTz deadline);
extern bool IdemRunContestedUntil(const IdemPlanDef *def, SPIPlanPtr *plan, Datum *args,
								  const char *nulls, TimestampTz deadline);
extern bool IdemRunContested(const IdemPlanDef *def, SPIPlanPtr *plan, Datum *args,
							 const char *nulls);

/* The user and security context IdemAsOwner switched from. */
typedef struct IdemUserSave
{
	Oid			userid;			/* the caller's current user */
	int			sec_context;	/* and its security context */
} IdemUserSave;

extern void IdemAsOwner(IdemUserSave *save);
extern void IdemRestoreUser(const IdemUserSave *save);

/*
 * The hint of an error about one of the extension's tables gone missing.
 * Recreating the extension is no repair: DROP EXTENSION ... CASCADE would
 * take the policies, machines and every table's guard with it.
 */
#define IDEM_HINT_MISSING_TABLE \
	"If it was renamed or moved, put it back; if it was dropped, restore it from a backup. " \
	"Do not drop and recreate the extension: that drops the policies, the machines and the guards of tables (README, \"Repairing an installation\")."

/* claims_table.c: idempotency.claims */
typedef enum IdemClaimsColumn
{
	CLAIMS_SCOPE, CLAIMS_KEY, CLAIMS_FINGERPRINT, CLAIMS_STATE, CLAIMS_TOKEN,
	CLAIMS_ATTEMPTS, CLAIMS_LEASE_UNTIL, CLAIMS_RECOVERY_POINT,
	CLAIMS_RESPONSE, CLAIMS_STATUS, CLAIMS_CREATED_AT, CLAIMS_EXPIRES_AT,
	/* Since 1.1.0: a table of 1.0.0 (not yet updated) lacks them. */
	CLAIMS_BODY, CLAIMS_CONTENT_TYPE, CLAIMS_HEADERS,
	CLAIMS_NUM_COLUMNS
} IdemClaimsColumn;

/* The labels of idem_claim_state. */
enum
{
	CLAIMS_IN_PROGRESS, CLAIMS_COMPLETED, CLAIMS_FAILED, CLAIMS_NUM_STATES
};

typedef struct IdemClaimsLayout
{
	bool		attnums_known;	/* the fields below are filled */
	AttrNumber	attnums[CLAIMS_NUM_COLUMNS];	/* by IdemClaimsColumn; 0 if absent */
	int			ncolumns;		/* how many are there */
	bool		has_body;		/* all are: the columns of 1.1.0 too */
	Oid			state_type;		/* the type of the state column */
	Datum		states[CLAIMS_NUM_STATES];	/* its labels */
} IdemClaimsLayout;

/* A new claim of a key. */
typedef struct IdemNewClaim
{
	text	   *scope;
	text	   *key;
	bytea	   *fingerprint;	/* or NULL */
	const Interval *lease;
	const Interval *ttl;
} IdemNewClaim;

typedef enum IdemClaimsInsertResult
{
	CLAIMS_INSERTED,			/* the row is in */
	CLAIMS_TAKEN,				/* another transaction holds the key */
	CLAIMS_USE_SQL				/* run the SQL statement instead */
} IdemClaimsInsertResult;

/* A column an update sets. */
typedef struct IdemClaimsSet
{
	IdemClaimsColumn column;
	Datum		value;
	bool		isnull;
} IdemClaimsSet;

typedef enum IdemClaimsWriteResult
{
	CLAIMS_UPDATED,				/* the new version is in */
	CLAIMS_UPDATE_USE_SQL		/* run the SQL statement instead */
} IdemClaimsWriteResult;

extern Relation IdemClaimsOpen(LOCKMODE mode, const IdemClaimsLayout **layout);
extern IdemClaimsInsertResult IdemClaimsInsert(Relation rel, const IdemNewClaim *claim,
											   int64 *token, TimestampTz *expires_at);
extern IdemClaimsWriteResult IdemClaimsUpdate(Relation rel, ItemPointer tid,
											  const IdemClaimsSet *sets, int nsets,
											  int64 token);

/* claim_wait.c */
extern void IdemClaimWaitShmemInit(IdemClaimWaitShared *w, bool found);
extern int	IdemClaimWaitSlot(const text *scope, const text *key);
extern void IdemClaimWaitNote(const text *scope, const text *key);
extern void IdemClaimWaitPrepare(int slot);
extern void IdemClaimWaitSleep(int slot, long timeout_ms);
extern void IdemClaimWaitDone(void);

/* fingerprint.c */
extern void IdemSha256(const void *data, size_t len, uint8 *digest);

/* sync_wait.c */
extern void IdemAwaitSyncStandbys(const char *what);

/* snowflake.c */
extern void SnowflakeShmemInit(SnowflakeShared *sf, bool found);
extern void SnowflakeShmemShutdown(SnowflakeShared *sf);
extern bool SnowflakeAbsorbMark(SnowflakeShared *sf, SnowflakeMark *mark);

/* snowflake_state.c */
extern void SnowflakeRegisterRmgr(void);
extern bool SnowflakeWriteFile(const SnowflakeMark *mark, bool exact, int elevel);
extern bool SnowflakeReadFile(SnowflakeMark *mark, bool *exact);
extern void SnowflakeLogMark(const SnowflakeMark *mark);

/* snowflake_type.c */
extern bool SnowflakeParseEpoch(const char *str, int64 *unix_ms,
								const char **problem);

#endif							/* IDEMPOTENCY_H */
