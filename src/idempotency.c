/*-------------------------------------------------------------------------
 *
 * idempotency.c
 *	  Module entry point: settings, shared memory and hooks.
 *
 * _PG_init runs in the postmaster when the library is listed in
 * shared_preload_libraries, and in a backend when a function of the
 * extension is first called otherwise.  Only in the first case can it
 * reserve shared memory; the parts that need it then refuse to run with a
 * hint that names the setting (IdemRequireShared), while the rest of the
 * extension works either way.
 *
 * Shared memory is requested in shmem_request_hook and created in
 * shmem_startup_hook under AddinShmemInitLock, the PostgreSQL 15 protocol.
 * The postmaster also registers an exit callback that lets the snowflake
 * generator record its exact high-water mark at a clean shutdown, and the
 * generator's WAL resource manager, which must exist before any WAL is
 * replayed (snowflake_state.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "utils/plancache.h"
#include "utils/wait_event.h"

#include "guard.h"
#include "idempotency.h"

IDEM_MODULE_MAGIC;

/* Settings. */
int			idem_node_id = 0;
char	   *idem_epoch_string = NULL;
int64		idem_epoch_unix_ms = INT64CONST(1577836800000);	/* 2020-01-01 UTC */
int			idem_max_lead_ms = 1000;
int			idem_test_clock_shift_ms = 0;
bool		idem_require_policy = false;

/* Shared state, NULL unless the library was preloaded. */
IdemShared *idem_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);
static void idem_shmem_request(void);
static void idem_shmem_startup(void);
static void idem_shmem_shutdown(int code, Datum arg);
static char *copy_raw_setting(const char *name);
static void refuse_rejected_settings(const char *raw_node_id, const char *raw_epoch);
static bool check_epoch(char **newval, void **extra, GucSource source);
static void assign_epoch(const char *newval, void *extra);

PG_FUNCTION_INFO_V1(idem_preloaded);

/*
 * idem_preloaded() → boolean: whether the server loaded the library
 * through shared_preload_libraries, which the snowflake generator, the
 * counters and the purge worker need.
 */
Datum
idem_preloaded(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(idem_shared != NULL);
}

/*
 * Plans kept before idempotency.guard_rewrite changed are planned again,
 * so that the setting reaches prepared statements and PL/pgSQL too.
 */
static void
assign_guard_rewrite(bool newval, void *extra)
{
	if (newval != idem_guard_rewrite)
		ResetPlanCache();
}

/* The same for idempotency.call_scan. */
static void
assign_call_scan(bool newval, void *extra)
{
	if (newval != idem_call_scan)
		ResetPlanCache();
}

/*
 * Define the settings and, when preloaded, claim shared memory.
 */
void
_PG_init(void)
{
	/*
	 * PostgreSQL refuses PGC_POSTMASTER settings defined after startup.  Loaded
	 * late, nothing generates IDs, but decoding still needs node_id and epoch:
	 * they are then read from the configuration file like PGC_SIGHUP ones.
	 */
	bool		preloading = process_shared_preload_libraries_in_progress;
	GucContext	startup_only = preloading ? PGC_POSTMASTER : PGC_SIGHUP;
	char	   *raw_node_id = copy_raw_setting("idempotency.node_id");
	char	   *raw_epoch = copy_raw_setting("idempotency.epoch");

	DefineCustomIntVariable("idempotency.node_id",
							"Sets the node number written into every snowflake ID.",
							"Give every server that generates IDs for the same "
							"tables its own number from 0 to 1023.",
							&idem_node_id,
							0, 0, SNOWFLAKE_MAX_NODE,
							startup_only,
							0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("idempotency.epoch",
							   "Sets the instant from which snowflake IDs count milliseconds.",
							   "An ISO 8601 timestamp; without a UTC offset it is read as UTC. "
							   "Never change it once IDs have been issued.",
							   &idem_epoch_string,
							   "2020-01-01 00:00:00+00",
							   startup_only,
							   0,
							   check_epoch, assign_epoch, NULL);

	if (preloading)
		refuse_rejected_settings(raw_node_id, raw_epoch);

	DefineCustomIntVariable("idempotency.max_lead",
							"Sets how far the snowflake generator may run ahead of "
							"the clock before a caller waits.",
							"Each millisecond holds 4096 IDs; a burst beyond that "
							"borrows later milliseconds up to this bound.",
							&idem_max_lead_ms,
							1000, 0, 60 * 60 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.test_clock_shift",
							"Shifts the clock the snowflake generator reads, for tests.",
							"Lets tests step the clock back or forward without "
							"touching the system clock.  Leave it at 0 in production.",
							&idem_test_clock_shift_ms,
							0, -INT_MAX, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MS | GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("idempotency.guard_rewrite",
							 "Lets UPDATEs of guarded tables check themselves instead "
							 "of through the row trigger.",
							 "Such an UPDATE does not lock each row before updating it. "
							 "Off makes every guarded UPDATE use the trigger.",
							 &idem_guard_rewrite,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, assign_guard_rewrite, NULL);

	DefineCustomBoolVariable("idempotency.call_scan",
							 "Runs idem_claim and idem_transition in FROM without a "
							 "function scan's tuple store.",
							 "Off plans them as function scans again; the answers are "
							 "the same.",
							 &idem_call_scan,
							 true,
							 PGC_USERSET,
							 GUC_NOT_IN_SAMPLE,
							 NULL, assign_call_scan, NULL);

	DefineCustomBoolVariable("idempotency.require_policy",
							 "Refuses scopes that have no row in idempotency.policies.",
							 "Catches a misspelt scope, which would otherwise be used "
							 "with the default limits.  The scope 'default' needs no row.",
							 &idem_require_policy,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("idempotency.database",
							   "Sets the database the purge worker connects to.",
							   "The extension must be installed there.  Empty leaves the "
							   "worker unconnected; other databases can call idem_purge().",
							   &idem_purge_database,
							   "postgres",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.purge_interval",
							"Sets how often the purge worker removes expired claims, "
							"tokens and leases.",
							"0 stops the worker from purging.",
							&idem_purge_interval_s,
							60, 0, 7 * 24 * 60 * 60,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.purge_batch_size",
							"Sets how many expired rows the purge removes per transaction.",
							"Smaller batches hold their rows for less time; larger "
							"ones purge a backlog with fewer commits.",
							&idem_purge_batch_size,
							1000, 1, 1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.purge_delay",
							"Sets how long the purge worker sleeps between two full batches.",
							"Bounds the share of the machine that working off a backlog "
							"of expired rows takes; 0 purges it without pause.",
							&idem_purge_delay_ms,
							50, 0, 10000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("idempotency");
	GuardUpdateHooksInit();
	IdemCallScanInit();

	if (!process_shared_preload_libraries_in_progress)
		return;

	IdemPurgeWorkerRegister();
	SnowflakeRegisterRmgr();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = idem_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = idem_shmem_startup;
}

/*
 * Reserve our shared memory and the generator's lock.
 */
static void
idem_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	RequestAddinShmemSpace(add_size(MAXALIGN(sizeof(IdemShared)), IdemStatsShmemSize()));
	RequestNamedLWLockTranche("idempotency", 1);
}

/*
 * Create or attach to the shared block.  Runs in the postmaster at start
 * and after every crash restart; the generator reloads its persisted
 * high-water mark each time it initialises a fresh block.
 */
static void
idem_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	idem_shared = ShmemInitStruct("idempotency", sizeof(IdemShared), &found);
	if (!found)
		idem_shared->snowflake.persist_lock =
			&(GetNamedLWLockTranche("idempotency"))[0].lock;
	SnowflakeShmemInit(&idem_shared->snowflake, found);
	IdemStatsShmemInit(&idem_shared->stats, found);
	IdemClaimWaitShmemInit(&idem_shared->claim_wait, found);

	LWLockRelease(AddinShmemInitLock);
	IdemWaitEventsInit();

	if (!IsUnderPostmaster)
		on_shmem_exit(idem_shmem_shutdown, (Datum) 0);
}

/*
 * Postmaster exit: on a clean shutdown, record the generator's exact
 * high-water mark.  After a crash (code != 0) the reservation already on
 * disk is the bound, and shared memory may not be trustworthy.
 */
static void
idem_shmem_shutdown(int code, Datum arg)
{
	if (code != 0 || idem_shared == NULL)
		return;
	SnowflakeShmemShutdown(&idem_shared->snowflake);
}

/*
 * The value a setting was given in the configuration, before the setting is
 * defined (a placeholder then holds it), or NULL if it was not given.
 */
static char *
copy_raw_setting(const char *name)
{
	const char *raw = GetConfigOption(name, true, false);

	return raw ? pstrdup(raw) : NULL;
}

/*
 * PostgreSQL only warns about an invalid value of a custom setting in the
 * configuration, and keeps the default.  For node_id and epoch that would
 * silently give a second node 0 or another epoch, so refuse to start.
 */
static void
refuse_rejected_settings(const char *raw_node_id, const char *raw_epoch)
{
	int			node_id;

	if (raw_node_id != NULL &&
		!(parse_int(raw_node_id, &node_id, 0, NULL) && node_id == idem_node_id))
		ereport(FATAL,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for parameter \"%s\": \"%s\"",
						"idempotency.node_id", raw_node_id),
				 errdetail("Starting with the default node number could repeat another node's snowflake IDs."),
				 errhint("Set it to a whole number from 0 to %d.", SNOWFLAKE_MAX_NODE)));
	if (raw_epoch != NULL && strcmp(raw_epoch, idem_epoch_string) != 0)
		ereport(FATAL,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for parameter \"%s\": \"%s\"",
						"idempotency.epoch", raw_epoch),
				 errdetail("Starting with the default epoch would give snowflake IDs other timestamps."),
				 errhint("Write it as YYYY-MM-DD HH:MM:SS+00, for example \"2020-01-01 00:00:00+00\".")));
}

/*
 * Return the shared block, or explain why there is none.
 */
IdemShared *
IdemRequireShared(const char *what)
{
	if (idem_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s requires idempotency to be loaded via \"shared_preload_libraries\"",
						what),
				 errhint("Add idempotency to \"shared_preload_libraries\" in postgresql.conf and restart the server.")));
	return idem_shared;
}

/*
 * Validate idempotency.epoch: it must parse and not lie before 1970.  An
 * epoch in the future is accepted (the clock may be wrong at boot);
 * snowflake_id() then refuses until the clock has passed it.
 */
static bool
check_epoch(char **newval, void **extra, GucSource source)
{
	int64		unix_ms;
	const char *problem = NULL;
	int64	   *parsed;

	if (*newval == NULL)
		return false;
	if (!SnowflakeParseEpoch(*newval, &unix_ms, &problem))
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("%s", problem);
		GUC_check_errhint("Write it as YYYY-MM-DD HH:MM:SS+00, for example \"2020-01-01 00:00:00+00\".");
		return false;
	}
	parsed = (int64 *) guc_malloc(LOG, sizeof(int64));
	if (parsed == NULL)
		return false;
	*parsed = unix_ms;
	*extra = parsed;
	return true;
}

static void
assign_epoch(const char *newval, void *extra)
{
	if (extra != NULL)
		idem_epoch_unix_ms = *(int64 *) extra;
}

/*
 * The wait event to report while waiting for which.  PostgreSQL 17 and
 * later give each a name of its own.  They are registered by the postmaster
 * at shared memory set-up (IdemWaitEventsInit), before anything can fill
 * the server's 127 custom wait events, so that running out is a start-up
 * failure, not an error that a burst of snowflake_id() calls meets; a
 * process that missed that (loaded without preloading) registers lazily.
 */
#ifdef IDEM_HAVE_CUSTOM_WAIT_EVENTS
static const char *const idem_wait_names[IDEM_WAIT_COUNT] = {
	[IDEM_WAIT_SYNC_STANDBY] = "IdempotencySyncStandby",
	[IDEM_WAIT_CLOCK] = "IdempotencySnowflakeClock",
	[IDEM_WAIT_PURGE_NAP] = "IdempotencyPurgeNap",
	[IDEM_WAIT_CLAIM] = "IdempotencyClaimWait",
};
static uint32 idem_wait_events[IDEM_WAIT_COUNT];
#endif

void
IdemWaitEventsInit(void)
{
#ifdef IDEM_HAVE_CUSTOM_WAIT_EVENTS
	/* After a crash restart the table is new: register again. */
	for (int i = 0; i < IDEM_WAIT_COUNT; i++)
		idem_wait_events[i] = WaitEventExtensionNew(idem_wait_names[i]);
#endif
}

uint32
IdemWaitEvent(IdemWait which)
{
#ifdef IDEM_HAVE_CUSTOM_WAIT_EVENTS
	Assert((unsigned int) which < IDEM_WAIT_COUNT);
	if (idem_wait_events[which] == 0)
		idem_wait_events[which] = WaitEventExtensionNew(idem_wait_names[which]);
	return idem_wait_events[which];
#else
	(void) which;
	return PG_WAIT_EXTENSION;
#endif
}
