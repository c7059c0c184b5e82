/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  Cluster-wide counters: idem_stats() (the view idempotency.stats) and
 *	  idem_stats_reset().
 *
 * Counting must cost next to nothing on hot paths (snowflake_id() runs in
 * tens of nanoseconds), so no two backends ever write the same memory:
 * each backend has a slot of counters in shared memory, at its backend
 * number (IdemBackendId(), compat.h), which only it writes, with plain
 * atomic stores (no locked instruction, and no cache line shared with
 * another backend's slot, so none bouncing between CPUs).  A reader sums
 * the slots.  A slot is not cleared when its backend exits, so what a
 * backend counted stays counted.  A reset records the sums at that moment
 * as a baseline, which the view subtracts.  Counts from transactions that
 * roll back remain, as in PostgreSQL's own statistics.  Nothing is kept
 * across a restart.
 *
 * Without shared_preload_libraries there is no shared memory: nothing is
 * counted, and the view raises the usual error naming the setting.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_stats);
PG_FUNCTION_INFO_V1(idem_stats_reset);

/*
 * A backend's counters, padded to whole cache lines: packed, two
 * backends' slots would share a line, and every count of one would take
 * the line from the other's CPU.  (Shared memory hands out cache-aligned
 * allocations.)
 */
typedef union IdemStatsSlot
{
	pg_atomic_uint64 counts[NUM_IDEM_COUNTERS];	/* written by its backend only */
	char		pad[TYPEALIGN(PG_CACHE_LINE_SIZE, sizeof(pg_atomic_uint64) * NUM_IDEM_COUNTERS)];
} IdemStatsSlot;

/* The counters, in the order of the view's columns. */
static const char *const counter_names[NUM_IDEM_COUNTERS] = {
	"claims_claimed", "claims_replayed", "claims_in_progress", "claims_mismatched",
	"claims_reclaimed", "purged_rows", "ids_generated", "guard_rejections",
	"stale_versions"
};

static IdemStatsSlot *my_slot = NULL;

Size
IdemStatsShmemSize(void)
{
	return mul_size(MaxBackends + 1, sizeof(IdemStatsSlot));
}

void
IdemStatsShmemInit(IdemStatsShared *stats, bool found)
{
	if (!found)
	{
		for (int i = 0; i < NUM_IDEM_COUNTERS; i++)
			pg_atomic_init_u64(&stats->baseline[i], 0);
		pg_atomic_init_u64(&stats->regressions_baseline, 0);
		stats->reset_at = GetCurrentTimestamp();
		SpinLockInit(&stats->reset_lock);
	}
	stats->slots = ShmemInitStruct("idempotency stats", IdemStatsShmemSize(), &found);
	if (!found)
		for (int b = 0; b <= MaxBackends; b++)
			for (int i = 0; i < NUM_IDEM_COUNTERS; i++)
				pg_atomic_init_u64(&((IdemStatsSlot *) stats->slots)[b].counts[i], 0);
}

/*
 * Add n to a counter of this backend (nothing without shared memory or a
 * backend number).
 */
void
IdemCountN(IdemCounter c, uint64 n)
{
	pg_atomic_uint64 *v;

	if (my_slot == NULL)
	{
		int			id = IdemBackendId();

		if (idem_shared == NULL || id < 1 || id > MaxBackends)
			return;
		my_slot = &((IdemStatsSlot *) idem_shared->stats.slots)[id];
	}
	v = &my_slot->counts[c];
	pg_atomic_write_u64(v, pg_atomic_read_u64(v) + n);
}

/* The sums over all slots. */
static void
sum_slots(uint64 *sums)
{
	IdemStatsSlot *slots = idem_shared->stats.slots;

	memset(sums, 0, sizeof(uint64) * NUM_IDEM_COUNTERS);
	for (int b = 0; b <= MaxBackends; b++)
		for (int i = 0; i < NUM_IDEM_COUNTERS; i++)
			sums[i] += pg_atomic_read_u64(&slots[b].counts[i]);
}

/*
 * idem_stats() → one row: each counter since the last reset, the clock
 * regressions the snowflake generator met, and when the counters were
 * reset.
 */
Datum
idem_stats(PG_FUNCTION_ARGS)
{
	IdemShared *shared = IdemRequireShared("idempotency.stats");
	TupleDesc	tupdesc;
	Datum		values[NUM_IDEM_COUNTERS + 2];
	bool		nulls[NUM_IDEM_COUNTERS + 2] = {0};
	uint64		sums[NUM_IDEM_COUNTERS];
	TimestampTz reset_at;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "idem_stats must return a row");
	sum_slots(sums);
	for (int i = 0; i < NUM_IDEM_COUNTERS; i++)
	{
		uint64		base = pg_atomic_read_u64(&shared->stats.baseline[i]);

		values[i] = Int64GetDatum((int64) (sums[i] > base ? sums[i] - base : 0));
	}
	values[NUM_IDEM_COUNTERS] = Int64GetDatum((int64)
											  (pg_atomic_read_u64(&shared->snowflake.regressions) -
											   pg_atomic_read_u64(&shared->stats.regressions_baseline)));
	SpinLockAcquire(&shared->stats.reset_lock);
	reset_at = shared->stats.reset_at;
	SpinLockRelease(&shared->stats.reset_lock);
	values[NUM_IDEM_COUNTERS + 1] = TimestampTzGetDatum(reset_at);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * idem_stats_reset(): start every counter again from zero.
 */
Datum
idem_stats_reset(PG_FUNCTION_ARGS)
{
	IdemShared *shared = IdemRequireShared("idem_stats_reset()");
	uint64		sums[NUM_IDEM_COUNTERS];

	sum_slots(sums);
	for (int i = 0; i < NUM_IDEM_COUNTERS; i++)
		pg_atomic_write_u64(&shared->stats.baseline[i], sums[i]);
	pg_atomic_write_u64(&shared->stats.regressions_baseline,
						pg_atomic_read_u64(&shared->snowflake.regressions));
	SpinLockAcquire(&shared->stats.reset_lock);
	shared->stats.reset_at = GetCurrentTimestamp();
	SpinLockRelease(&shared->stats.reset_lock);
	PG_RETURN_VOID();
}

/* For the SQL script's column list: keep it in step with the enum. */
StaticAssertDecl(lengthof(counter_names) == NUM_IDEM_COUNTERS,
				 "every counter needs a name");
