/*-------------------------------------------------------------------------
 *
 * purge.c
 *	  Removing expired claims, one-time tokens and leases: the purge worker
 *	  and idem_purge().
 *
 * An expired row already counts as absent to every function, so removing
 * it changes no answer; it only keeps the tables small.  Rows go in
 * batches of idempotency.purge_batch_size.  A batch picks its rows through
 * the expires_at index, locks them with SKIP LOCKED (a row another
 * transaction is working on, such as a claim being taken over, is left for
 * the next round) and deletes them by ctid.  So a purge never waits for a
 * claim, and only expired rows are locked: a call that touches one of the
 * rows of the batch being deleted waits at most for that batch's commit.
 * (In READ COMMITTED, a row renewed by a commit after the batch chose it
 * stays locked until then too, though the recheck leaves it alone.)
 *
 * A purge (a round of the worker, or idem_purge()) removes what had
 * expired when it began, taking the three tables in turn, one batch each,
 * until every table's batch has come back short: a backlog or a stream of
 * expiring rows in one table (claims with a ttl of a microsecond, say)
 * neither starves the other two nor keeps the purge going for ever.
 *
 * The worker (started when the library is preloaded) connects to
 * idempotency.database and, every idempotency.purge_interval, runs such a
 * purge, each batch in its own short READ COMMITTED transaction.  Between
 * two full batches (a backlog) it sleeps idempotency.purge_delay, so that
 * working off a backlog takes a bounded share of the machine, as
 * autovacuum's cost delay does.  It does nothing
 * while the extension is not installed in that database, rereads its
 * settings on SIGHUP, and leaves (to be started again by the postmaster)
 * when the database setting changes.  An error ends it the same way: the
 * postmaster starts it again after PURGE_RESTART_SECS.
 *
 * idem_purge() runs the same batches in the caller's transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_purge);
PGDLLEXPORT void idem_purge_worker_main(Datum main_arg);

#define PURGE_WORKER_NAME	"idempotency purge worker"
#define PURGE_RESTART_SECS	10

/* Settings (idempotency.c defines them). */
char	   *idem_purge_database = NULL;
int			idem_purge_interval_s = 60;
int			idem_purge_batch_size = 1000;
int			idem_purge_delay_ms = 50;

/*
 * One batch per table: the oldest expired rows (through the expires_at
 * index), at most $1 of them, skipping rows another transaction holds.
 * $2 is the moment the purge began, which counts as now (a constant, so
 * that the index can be used).
 */
#define BATCH(table) \
	"DELETE FROM idempotency." table \
	" WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY(" \
	"SELECT ctid FROM idempotency." table \
	" WHERE expires_at OPERATOR(pg_catalog.<=) $2" \
	" ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED))" \
	" AND expires_at OPERATOR(pg_catalog.<=) $2"

#define NUM_PURGED_TABLES 3

static const IdemPlanDef batch_defs[NUM_PURGED_TABLES] = {
	{BATCH("claims"), 2, {INT8OID, TIMESTAMPTZOID}},
	{BATCH("tokens"), 2, {INT8OID, TIMESTAMPTZOID}},
	{BATCH("leases"), 2, {INT8OID, TIMESTAMPTZOID}},
};

static SPIPlanPtr batch_plans[NUM_PURGED_TABLES];

/*
 * Delete one batch of the rows of table t that had expired at start;
 * returns how many went.  The caller has connected to SPI and set a
 * snapshot.
 */
static uint64
purge_batch(int t, int batch_size, TimestampTz start)
{
	Datum		args[2];
	uint64		n;

	args[0] = Int64GetDatum(batch_size);
	args[1] = TimestampTzGetDatum(start);
	n = IdemRunPlan(&batch_defs[t], &batch_plans[t], args, NULL, false);
	if (n > 0)
		IdemCountN(IDEM_PURGED_ROWS, n);
	return n;
}

/*
 * idem_purge() → bigint: delete every expired claim, token and lease now,
 * in the caller's transaction; returns how many rows went.
 */
Datum
idem_purge(PG_FUNCTION_ARGS)
{
	int64		total = 0;
	TimestampTz start = GetCurrentTimestamp();
	bool		more[NUM_PURGED_TABLES];
	bool		any;

	IdemMemoForget();			/* claims may go */

	IdemConnectSPI();
	memset(more, true, sizeof(more));
	do
	{
		any = false;
		for (int t = 0; t < NUM_PURGED_TABLES; t++)
		{
			uint64		n;

			if (!more[t])
				continue;
			CHECK_FOR_INTERRUPTS();
			n = purge_batch(t, idem_purge_batch_size, start);
			total += n;
			more[t] = n >= (uint64) idem_purge_batch_size;
			any |= more[t];
		}
	} while (any);
	SPI_finish();
	PG_RETURN_INT64(total);
}

/*
 * Register the worker; called from _PG_init while preloading.
 */
void
IdemPurgeWorkerRegister(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = PURGE_RESTART_SECS;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "idempotency");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_purge_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, PURGE_WORKER_NAME);
	snprintf(worker.bgw_type, BGW_MAXLEN, PURGE_WORKER_NAME);
	RegisterBackgroundWorker(&worker);
}

/*
 * Reread the configuration if SIGHUP asked for it.
 */
static void
reload_if_asked(void)
{
	if (ConfigReloadPending)
	{
		int			interval = idem_purge_interval_s;
		int			batch_size = idem_purge_batch_size;
		int			delay = idem_purge_delay_ms;

		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		if (interval != idem_purge_interval_s && idem_purge_interval_s == 0)
			ereport(LOG,
					(errmsg("idempotency purge worker stops purging: \"idempotency.purge_interval\" is 0")));
		else if (interval != idem_purge_interval_s || batch_size != idem_purge_batch_size ||
				 delay != idem_purge_delay_ms)
			ereport(LOG,
					(errmsg("idempotency purge worker now purges every %d s in batches of %d rows with %d ms between them",
							idem_purge_interval_s, idem_purge_batch_size, idem_purge_delay_ms)));
	}
}

/*
 * Sleep until woken or for at most timeout_ms (-1: until woken).
 */
static void
nap(long timeout_ms)
{
	int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH;

	if (timeout_ms >= 0)
		events |= WL_TIMEOUT;
	(void) WaitLatch(MyLatch, events, timeout_ms,
					 IdemWaitEvent(IDEM_WAIT_PURGE_NAP));
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	reload_if_asked();
}

/*
 * One round: what had expired when it began, the tables in turn, one batch
 * each in its own transaction, until every table's batch came back short.
 * Returns false if the extension is not installed.
 */
static bool
purge_round(void)
{
	uint64		total = 0;
	TimestampTz start = GetCurrentTimestamp();
	bool		more[NUM_PURGED_TABLES];
	bool		any;

	memset(more, true, sizeof(more));
	do
	{
		any = false;
		for (int t = 0; t < NUM_PURGED_TABLES; t++)
		{
			uint64		n;
			int			batch_size = idem_purge_batch_size;

			if (!more[t])
				continue;
			CHECK_FOR_INTERRUPTS();
			reload_if_asked();
			if (idem_purge_interval_s == 0)
				return true;	/* turned off midway */

			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			if (!OidIsValid(get_extension_oid("idempotency", true)))
			{
				CommitTransactionCommand();
				return false;
			}
			PushActiveSnapshot(GetTransactionSnapshot());
			pgstat_report_activity(STATE_RUNNING, batch_defs[t].sql);
			IdemConnectSPI();
			n = purge_batch(t, batch_size, start);
			SPI_finish();
			PopActiveSnapshot();
			CommitTransactionCommand();
			pgstat_report_stat(false);
			total += n;
			more[t] = n >= (uint64) batch_size;
			any |= more[t];
			/* A backlog: leave the CPU and the WAL to the claims a while. */
			if (more[t] && idem_purge_delay_ms > 0)
				nap(idem_purge_delay_ms);
		}
	} while (any);
	if (total > 0)
		elog(DEBUG1, "idempotency purge worker removed " UINT64_FORMAT " expired rows", total);
	return true;
}

/*
 * The worker's entry point.
 */
void
idem_purge_worker_main(Datum main_arg)
{
	char	   *database;
	bool		missing_reported = false;
	TimestampTz last_round = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* An empty database setting: wait, unconnected, until one is given. */
	while (idem_purge_database == NULL || idem_purge_database[0] == '\0')
		nap(-1);
	database = pstrdup(idem_purge_database);
	BackgroundWorkerInitializeConnection(database, NULL, 0);

	/*
	 * Batches are short READ COMMITTED transactions that write, whatever
	 * the server's defaults say: a newer row version is then rechecked, not
	 * an error.
	 */
	SetConfigOption("default_transaction_isolation", "read committed",
					PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off",
					PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname(PURGE_WORKER_NAME);
	pgstat_report_activity(STATE_IDLE, NULL);
	ereport(LOG,
			(errmsg("idempotency purge worker started in database \"%s\"", database)));

	for (;;)
	{
		long		wait_ms = -1;

		if (strcmp(database, idem_purge_database) != 0)
		{
			ereport(LOG,
					(errmsg("idempotency purge worker restarting: \"idempotency.database\" changed to \"%s\"",
							idem_purge_database)));
			proc_exit(1);		/* the postmaster starts it again */
		}

		if (idem_purge_interval_s > 0)
		{
			TimestampTz now = GetCurrentTimestamp();
			TimestampTz due;

			if (now < last_round)
				last_round = now;	/* the clock was set back */
			due = last_round + (int64) idem_purge_interval_s * USECS_PER_SEC;

			if (now >= due)
			{
				bool		installed;

				last_round = now;
				installed = purge_round();
				pgstat_report_activity(STATE_IDLE, NULL);
				if (installed)
					missing_reported = false;
				else if (!missing_reported)
				{
					ereport(LOG,
							(errmsg("idempotency purge worker is waiting: extension \"idempotency\" is not installed in database \"%s\"",
									database),
							 errhint("Run CREATE EXTENSION idempotency in that database, or set \"idempotency.database\" to the database where it is installed.")));
					missing_reported = true;
				}
				continue;		/* settings may have changed meanwhile */
			}
			wait_ms = (long) ((due - now + 999) / 1000);
		}
		nap(wait_ms);
	}
}
