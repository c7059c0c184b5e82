/*-------------------------------------------------------------------------
 *
 * snowflake.c
 *	  The snowflake ID generator: shared state, its clocks, and the
 *	  high-water mark that survives restarts, crashes and failovers.
 *
 * The generator hands out "ticks", (milliseconds << 12) | sequence; see
 * idempotency.h.  Its rules, and the concurrency each relies on:
 *
 * - last_tick is the one field every call writes.  A caller computes the
 *	 tick it wants, max(last_tick + 1, clock << 12), and installs it with a
 *	 compare-and-swap; a loser retries from the winner's value.  So ticks are
 *	 unique, and a call that starts after another has returned gets a larger
 *	 one.  No lock, no sequence, no WAL per call.
 *
 * - A burst of more than 4096 calls in a millisecond carries into the next
 *	 millisecond, running ahead of the clock.  idempotency.max_lead bounds
 *	 how far; beyond it a caller sleeps until the clock moves on.
 *
 * - When the clock steps back (NTP, a VM resume, an operator, or the test
 *	 setting idempotency.test_clock_shift), the generator does not follow.
 *	 It raises a "floor": a clock that starts at the high-water mark and
 *	 advances at half the speed of CLOCK_MONOTONIC, which no clock step can
 *	 move.  The generator reads max(wall clock, floor), so IDs keep coming
 *	 at once, keep increasing, and their timestamps converge back to the
 *	 wall clock after twice the size of the step; then the floor retires.
 *	 A floor's base only grows while active, so it never moves back.
 *	 A step back is recognised because the generator is further ahead of
 *	 the clock than max_lead lets a burst take it; max_lead is therefore
 *	 a server-wide setting (PGC_SIGHUP).  While the floor is in force the
 *	 sustained rate is half the usual 4096 IDs per millisecond.
 *
 * - Durability: reserved_ms is a bound above every millisecond ever
 *	 issued, kept in a file and in WAL (snowflake_state.c).  A tick is
 *	 installed only when its millisecond is below a value of reserved_ms
 *	 read from shared memory, and that value is published only after it is
 *	 durable.  When a caller comes within a quarter of SNOWFLAKE_RESERVE_MS
 *	 of the bound, it reserves ahead, under persist_lock: about every three
 *	 seconds under load, never per call.  Other callers go on meanwhile;
 *	 only one that reaches the bound itself waits for the lock.
 *
 * - A reservation reaches SNOWFLAKE_RESERVE_MS ahead of the IDs, and never
 *	 more than that plus max_lead ahead of the "reference clock": the wall
 *	 clock, or, once the wall clock went back, a second floor (ref_base)
 *	 that starts at the time the wall clock had reached and runs at three
 *	 quarters speed, so that it draws away from the IDs on the generator's
 *	 floor and still converges back to the wall clock, later.  Without that
 *	 cap, each crash restart, which starts above the last reservation,
 *	 would reserve further ahead again, and a crash loop would carry IDs
 *	 ever further into the future; with it, IDs after any number of crash
 *	 restarts are at most that far ahead of the reference clock.  Only a
 *	 lowered max_lead or an epoch moved later put IDs past the cap; then
 *	 the reference clock is moved up to them (reference_up_to).  A
 *	 reservation is made only when it moves the bound by
 *	 SNOWFLAKE_RESERVE_STEP_MS at least, so that the seconds after a
 *	 restart, when IDs run close to the cap, do not write one per call.
 *
 * - At a clean shutdown the postmaster records the exact high-water mark;
 *	 after a crash the reservation stands, and WAL replay brings the
 *	 reservations of the server whose WAL is replayed (a standby's primary,
 *	 a restored backup's origin).  The first call after a start or a
 *	 recovery takes the mark over (adopt_mark): IDs start at its bound, on
 *	 the floor if that is ahead of the clock, and the log says whether the
 *	 lead comes from a crash restart, from replayed WAL, or from a clock
 *	 that is behind the mark's reference clock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "access/xlog.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/wait_event.h"

#include "idempotency.h"

/* How far ahead of the reference clock (plus max_lead) IDs are reserved. */
#define SNOWFLAKE_RESERVE_MS		4000

/* The least a renewal moves the reservation by. */
#define SNOWFLAKE_RESERVE_STEP_MS	250

/*
 * The floors' speeds, in quarters of the monotonic clock's.  The
 * generator's floor runs at half speed, so that IDs converge back to a
 * clock that went back after twice the step; the reference floor at three
 * quarters, so that it converges too, later, and the reservation limit
 * measured from it moves away from the IDs on the generator's floor.
 */
#define SNOWFLAKE_FLOOR_QUARTERS	2
#define SNOWFLAKE_REF_QUARTERS		3

/* A floor's base meaning "no floor: read the wall clock". */
#define SNOWFLAKE_FLOOR_OFF		((uint64) PG_INT64_MIN)

/* Where the loaded mark came from (SnowflakeShared.mark_source). */
#define MARK_NONE		0		/* no mark: a first start */
#define MARK_EXACT		1		/* the exact mark of a clean shutdown */
#define MARK_RESERVED	2		/* this server's reservation: a crash */
#define MARK_REPLAYED	3		/* a reservation replayed from WAL */

PG_FUNCTION_INFO_V1(snowflake_id);

static void adopt_mark(SnowflakeShared *sf);

/*
 * The wall clock, as milliseconds since idempotency.epoch, shifted by the
 * test setting.
 */
static inline int64
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64) ts.tv_sec * 1000 + ts.tv_nsec / 1000000
		+ idem_test_clock_shift_ms - idem_epoch_unix_ms;
}

/*
 * The monotonic clock at quarters/4 of its speed, in milliseconds: the
 * floors' rates.  The monotonic clock is system-wide and no clock step
 * moves it.
 */
static inline int64
mono_ms(int quarters)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64) ts.tv_sec * 1000 + ts.tv_nsec / 1000000) * quarters / 4;
}

/*
 * The wall clock, or the floor with this base and rate while the wall
 * clock is behind it.  Retires the floor once the wall clock has caught
 * up.
 */
static pg_attribute_always_inline int64
floored_clock(pg_atomic_uint64 *floor_base, int quarters)
{
	int64		wall = wall_ms();
	uint64		base = pg_atomic_read_u64(floor_base);

	if (base != SNOWFLAKE_FLOOR_OFF)
	{
		int64		floor = (int64) base + mono_ms(quarters);

		if (floor > wall)
			return floor;
		/* A failed exchange means someone raised it again: keep theirs. */
		pg_atomic_compare_exchange_u64(floor_base, &base, SNOWFLAKE_FLOOR_OFF);
	}
	return wall;
}

/* The generator's clock: the wall clock, or the floor above it. */
static inline int64
generator_clock(SnowflakeShared *sf)
{
	return floored_clock(&sf->floor_base, SNOWFLAKE_FLOOR_QUARTERS);
}

/*
 * Make a floor read at least target_ms now.  Returns true if the floor
 * was off before, i.e. this is a new step back worth reporting.
 */
static bool
raise_floor(pg_atomic_uint64 *floor_base, int quarters, int64 target_ms)
{
	uint64		want = (uint64) (target_ms - mono_ms(quarters));
	uint64		cur = pg_atomic_read_u64(floor_base);

	while (cur == SNOWFLAKE_FLOOR_OFF || (int64) cur < (int64) want)
	{
		bool		was_off = (cur == SNOWFLAKE_FLOOR_OFF);

		if (pg_atomic_compare_exchange_u64(floor_base, &cur, want))
			return was_off;
	}
	return false;
}

/*
 * The reference clock: the wall clock, or a floor raised to where the
 * wall clock stood before it went back.  Reservations are measured from
 * it, so that they stay a bounded distance ahead of real time.
 */
static inline int64
reference_clock(SnowflakeShared *sf)
{
	return floored_clock(&sf->ref_base, SNOWFLAKE_REF_QUARTERS);
}

/*
 * The furthest a reservation may reach: SNOWFLAKE_RESERVE_MS plus the
 * burst allowance ahead of the reference clock.  This cap is what keeps
 * crash restarts from adding up.
 */
static inline int64
reservation_limit(int64 ref)
{
	return ref + SNOWFLAKE_RESERVE_MS + idem_max_lead_ms;
}

/*
 * Where a reservation made now should reach: SNOWFLAKE_RESERVE_MS ahead of
 * the IDs (or of the reference clock, if the IDs are behind it), within
 * the cap.  So IDs that are not running ahead reserve no more than that,
 * whatever max_lead allows.
 */
static inline int64
reservation_target(int64 ref, int64 ms)
{
	return Min(reservation_limit(ref), Max(ms, ref) + SNOWFLAKE_RESERVE_MS);
}

/*
 * The IDs are past the cap itself, which only a lowered max_lead or an
 * epoch moved later can bring about (the reservation they run under was
 * made under a larger cap): move the reference clock up to them, so that
 * reservations go on at once instead of waiting for a clock that runs
 * slower than the gap.
 */
static void
reference_up_to(SnowflakeShared *sf, int64 ms)
{
	if (ms > reservation_limit(reference_clock(sf)))
		raise_floor(&sf->ref_base, SNOWFLAKE_REF_QUARTERS, ms);
}

/*
 * Make the bound cover ms, reserving ahead when it gets close.  Returns 0;
 * or, when ms is too close to the cap to reserve a step past it yet, how
 * many milliseconds the caller should wait (only right after a restart:
 * with the reference clock on the wall clock, less than a step; on its
 * floor, which gains on the generator's floor at a quarter speed, up to
 * four steps, a second); or -1 when the caller should read the clocks
 * again.  Blocks on the lock only when ms has
 * reached the bound itself.
 *
 * A new reservation is made only if it moves the bound a step
 * (SNOWFLAKE_RESERVE_STEP_MS) at least, so that the seconds after a
 * restart, when IDs run close to the cap, do not write one per call.
 */
static int64
ensure_reserved(SnowflakeShared *sf, int64 ms)
{
	int64		reserved = (int64) pg_atomic_read_u64(&sf->reserved_ms);
	int64		target;

	if (ms + SNOWFLAKE_RESERVE_MS / 4 < reserved)
		return 0;
	if (unlikely(pg_atomic_read_u32(&sf->adopted) == 0))
	{
		/*
		 * The first call since a start or a recovery, which always gets
		 * here: a fresh or replayed mark sets last_tick just below its
		 * bound, and reserved_ms to it.  Take the mark over, then look at
		 * the clocks again.
		 */
		adopt_mark(sf);
		return -1;
	}
	if (ms < reserved)
	{
		/* Still covered: renew, unless it is no step or someone is at it. */
		if (reservation_target(reference_clock(sf), ms) - reserved < SNOWFLAKE_RESERVE_STEP_MS ||
			!LWLockConditionalAcquire(sf->persist_lock, LW_EXCLUSIVE))
			return 0;
	}
	else
	{
		reference_up_to(sf, ms);
		target = reservation_target(reference_clock(sf), ms);
		if (target < ms + SNOWFLAKE_RESERVE_STEP_MS)
			return ms + SNOWFLAKE_RESERVE_STEP_MS - target;
		LWLockAcquire(sf->persist_lock, LW_EXCLUSIVE);
	}

	reserved = (int64) pg_atomic_read_u64(&sf->reserved_ms);
	if (ms + SNOWFLAKE_RESERVE_MS / 4 >= reserved)
	{
		SnowflakeMark mark;

		mark.ref_ms = reference_clock(sf);
		mark.bound_ms = reservation_target(mark.ref_ms, ms);
		if (mark.bound_ms - Max(reserved, ms) >= SNOWFLAKE_RESERVE_STEP_MS)
		{
			/* File first, then WAL: snowflake_state.c.  ERROR releases the lock. */
			SnowflakeWriteFile(&mark, false, ERROR);
			SnowflakeLogMark(&mark);
			pg_memory_barrier();
			pg_atomic_write_u64(&sf->reserved_ms, (uint64) mark.bound_ms);
		}
	}
	LWLockRelease(sf->persist_lock);

	reserved = (int64) pg_atomic_read_u64(&sf->reserved_ms);
	return ms < reserved ? 0 : 1;
}

/*
 * Raise the shared state to cover a mark read from WAL (or the file), and
 * leave the combined mark in *mark.  Returns whether anything was raised.
 * The startup process calls this while replaying.
 */
bool
SnowflakeAbsorbMark(SnowflakeShared *sf, SnowflakeMark *mark)
{
	bool		raised = false;
	int64		reserved;
	uint64		tick;

	LWLockAcquire(sf->persist_lock, LW_EXCLUSIVE);
	reserved = (int64) pg_atomic_read_u64(&sf->reserved_ms);
	if (mark->bound_ms > reserved)
	{
		tick = ((uint64) mark->bound_ms << SNOWFLAKE_SEQ_BITS) - 1;
		if (pg_atomic_read_u64(&sf->last_tick) < tick)
			pg_atomic_write_u64(&sf->last_tick, tick);
		pg_atomic_write_u64(&sf->reserved_ms, (uint64) mark->bound_ms);
		sf->mark_source = MARK_REPLAYED;
		raised = true;
	}
	else
		mark->bound_ms = reserved;
	if (mark->ref_ms > sf->mark_ref_ms)
	{
		sf->mark_ref_ms = mark->ref_ms;
		raised = true;
	}
	else
		mark->ref_ms = sf->mark_ref_ms;
	/* The first call after recovery takes the new mark over. */
	pg_atomic_write_u32(&sf->adopted, 0);
	LWLockRelease(sf->persist_lock);
	return raised;
}

/*
 * Set up a fresh shared block from the state file.  Called in the
 * postmaster under AddinShmemInitLock, at start and after crash restarts;
 * WAL replay may raise the mark further, and the first call after that
 * takes it over (adopt_mark).
 */
void
SnowflakeShmemInit(SnowflakeShared *sf, bool found)
{
	SnowflakeMark mark = {0, PG_INT64_MIN};
	bool		exact = false;
	int			source = MARK_NONE;

	if (found)
		return;

	if (SnowflakeReadFile(&mark, &exact) && mark.bound_ms > 0)
		source = exact ? MARK_EXACT : MARK_RESERVED;
	else
		mark.bound_ms = 0;
	pg_atomic_init_u64(&sf->last_tick,
					   mark.bound_ms > 0 ? ((uint64) mark.bound_ms << SNOWFLAKE_SEQ_BITS) - 1 : 0);
	pg_atomic_init_u64(&sf->reserved_ms, (uint64) mark.bound_ms);
	pg_atomic_init_u32(&sf->adopted, 0);
	pg_atomic_init_u64(&sf->floor_base, SNOWFLAKE_FLOOR_OFF);
	pg_atomic_init_u64(&sf->ref_base, SNOWFLAKE_FLOOR_OFF);
	pg_atomic_init_u64(&sf->regressions, 0);
	sf->mark_ref_ms = mark.ref_ms;
	sf->mark_source = source;
}

/*
 * The first call after a start or a recovery: continue above the mark that
 * was loaded or replayed.  IDs start at its bound; if that is ahead of the
 * clock, the floor carries them on at once.  The log says why: a crash
 * restart (the previous run's reservation), a replayed reservation (a
 * promoted standby, a restored backup), or a clock that is behind the
 * reference clock of the mark.
 */
static void
adopt_mark(SnowflakeShared *sf)
{
	LWLockAcquire(sf->persist_lock, LW_EXCLUSIVE);
	if (pg_atomic_read_u32(&sf->adopted) == 0 && sf->mark_source == MARK_NONE)
		pg_atomic_write_u32(&sf->adopted, 1);	/* a first start: the clock */
	if (pg_atomic_read_u32(&sf->adopted) == 0)
	{
		int64		bound = (int64) pg_atomic_read_u64(&sf->reserved_ms);
		int64		ref = sf->mark_ref_ms;
		int64		wall = wall_ms();

		if (ref > wall)
			raise_floor(&sf->ref_base, SNOWFLAKE_REF_QUARTERS, ref);
		/* A bound past the cap: see reference_up_to. */
		if (bound > reservation_limit(Max(ref, wall)))
			raise_floor(&sf->ref_base, SNOWFLAKE_REF_QUARTERS, bound);
		if (ref > wall)
		{
			pg_atomic_fetch_add_u64(&sf->regressions, 1);
			ereport(LOG,
					(errmsg("system clock is %lld ms behind the clock that set the snowflake high-water mark",
							(long long) (ref - wall)),
					 errdetail("New IDs continue above every ID issued before; their timestamps run ahead of the clock until it catches up.")));
		}
		if (bound > wall)
		{
			raise_floor(&sf->floor_base, SNOWFLAKE_FLOOR_QUARTERS, bound);
			if (ref <= wall && sf->mark_source == MARK_RESERVED)
				ereport(LOG,
						(errmsg("snowflake IDs continue above the reservation of the run before a crash restart"),
						 errdetail("They start %lld ms ahead of the clock and converge back within %lld ms.",
								   (long long) (bound - wall), (long long) (2 * (bound - wall)))));
			else if (ref <= wall && sf->mark_source == MARK_REPLAYED)
				ereport(LOG,
						(errmsg("snowflake IDs continue above the reservation replayed from WAL"),
						 errdetail("They start %lld ms ahead of the clock and converge back within %lld ms.",
								   (long long) (bound - wall), (long long) (2 * (bound - wall)))));
		}
		pg_write_barrier();
		pg_atomic_write_u32(&sf->adopted, 1);
	}
	LWLockRelease(sf->persist_lock);
}

/*
 * Postmaster, clean shutdown: replace the reservation by the exact bound,
 * so that the next start does not skip ahead of the clock needlessly.
 */
void
SnowflakeShmemShutdown(SnowflakeShared *sf)
{
	SnowflakeMark mark;

	mark.bound_ms = (int64) (pg_atomic_read_u64(&sf->last_tick) >> SNOWFLAKE_SEQ_BITS) + 1;
	mark.ref_ms = Max(reference_clock(sf), sf->mark_ref_ms);
	(void) SnowflakeWriteFile(&mark, true, LOG);
}

/*
 * Sleep about ms milliseconds, interruptibly, while a burst waits for the
 * clock.
 */
static void
wait_for_clock(int64 ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 (long) Min(Max(ms, 1), 100), IdemWaitEvent(IDEM_WAIT_CLOCK));
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Hand out the next tick.
 */
static int64
next_tick(SnowflakeShared *sf)
{
	int64		clock;
	uint64		old;

	clock = generator_clock(sf);
	old = pg_atomic_read_u64(&sf->last_tick);

	for (;;)
	{
		int64		old_ms = (int64) (old >> SNOWFLAKE_SEQ_BITS);
		int64		next;
		int64		next_ms;
		int64		wait_ms;

		if (unlikely(clock < 0) && pg_atomic_read_u32(&sf->adopted) == 0)
		{
			adopt_mark(sf);		/* a mark's floor may be above the epoch */
			clock = generator_clock(sf);
		}
		if (clock < 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("system clock reads before idempotency.epoch"),
					 errdetail("The clock is %lld ms before the epoch \"%s\".",
							   (long long) -clock, idem_epoch_string),
					 errhint("Check the system clock and idempotency.test_clock_shift.")));

		if (old_ms > clock + idem_max_lead_ms)
		{
			/*
			 * Further ahead than a burst can take the generator: either our
			 * clock reading is stale, or the clock stepped back.  Look again;
			 * if it still is, raise the floor to the high-water mark, which
			 * keeps the whole lead for bursts, and the reference clock to
			 * it, which keeps reservations going.
			 */
			CHECK_FOR_INTERRUPTS();
			if (pg_atomic_read_u32(&sf->adopted) == 0)
				adopt_mark(sf); /* no step: a mark not yet taken over */
			clock = generator_clock(sf);
			if (old_ms > clock + idem_max_lead_ms)
			{
				pg_atomic_fetch_add_u64(&sf->regressions, 1);
				raise_floor(&sf->ref_base, SNOWFLAKE_REF_QUARTERS, old_ms);
				if (raise_floor(&sf->floor_base, SNOWFLAKE_FLOOR_QUARTERS, old_ms))
					ereport(LOG,
							(errmsg("system clock is %lld ms behind the snowflake generator",
									(long long) (old_ms - clock)),
							 errdetail("IDs continue above the high-water mark; their timestamps run at half speed until the clock catches up.")));
				clock = generator_clock(sf);
			}
			old = pg_atomic_read_u64(&sf->last_tick);
			continue;
		}

		next = Max((int64) old + 1, clock << SNOWFLAKE_SEQ_BITS);
		next_ms = next >> SNOWFLAKE_SEQ_BITS;

		if (next_ms > clock + idem_max_lead_ms)
		{
			/* This millisecond and the lead allowed are used up: wait. */
			wait_for_clock(next_ms - clock - idem_max_lead_ms);
			clock = generator_clock(sf);
			old = pg_atomic_read_u64(&sf->last_tick);
			continue;
		}

		if (next_ms > SNOWFLAKE_MAX_MS)
			ereport(ERROR,
					(errcode(ERRCODE_SEQUENCE_GENERATOR_LIMIT_EXCEEDED),
					 errmsg("snowflake IDs have run out of timestamp bits"),
					 errdetail("41 bits of milliseconds reach about 69 years past idempotency.epoch \"%s\".",
							   idem_epoch_string),
					 errhint("Check the system clock and idempotency.test_clock_shift; if they are right, this epoch's IDs are used up.")));

		wait_ms = ensure_reserved(sf, next_ms);
		if (wait_ms != 0)
		{
			/* Right after a crash restart the limit may have to move on. */
			if (wait_ms > 0)
				wait_for_clock(wait_ms);
			clock = generator_clock(sf);
			old = pg_atomic_read_u64(&sf->last_tick);
			continue;
		}

		if (pg_atomic_compare_exchange_u64(&sf->last_tick, &old, (uint64) next))
			return next;
		/* Lost the race: old now holds the winner's tick; go again. */
	}
}

/*
 * snowflake_id() → snowflake
 */
Datum
snowflake_id(PG_FUNCTION_ARGS)
{
	IdemShared *shared = IdemRequireShared("snowflake_id()");
	int64		tick;

	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot generate snowflake IDs during recovery"),
				 errdetail("A standby usually has its primary's idempotency.node_id, so its IDs could repeat the primary's."),
				 errhint("Generate IDs on the primary.")));
	tick = next_tick(&shared->snowflake);
	IdemCount(IDEM_IDS_GENERATED);

	PG_RETURN_INT64(((tick >> SNOWFLAKE_SEQ_BITS) << SNOWFLAKE_MS_SHIFT) |
					((int64) idem_node_id << SNOWFLAKE_SEQ_BITS) |
					(tick & SNOWFLAKE_MAX_SEQ));
}
