/*-------------------------------------------------------------------------
 *
 * snowflake.c
 *	  The snowflake ID generator: shared state, its clock, and the
 *	  high-water mark that survives restarts and crashes.
 *
 * The generator hands out "ticks", (milliseconds << 12) | sequence; see
 * idempotency.h.  Its rules, and the concurrency each relies on:
 *
 * - last_tick is the one field every call writes.  A caller computes the
 *	 tick it wants, max(last_tick + 1, clock << 12), and installs it with a
 *	 compare-and-swap; a loser retries from the winner's value.  So ticks are
 *	 unique, and a call that starts after another has returned gets a larger
 *	 one.  No lock, no WAL, no sequence.
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
 *	 floor_base only grows while active, so the floor never moves back.
 *	 A step back is recognised because the generator is further ahead of
 *	 the clock than max_lead lets a burst take it; max_lead is therefore
 *	 a server-wide setting (PGC_SIGHUP).  While the floor is in force the
 *	 sustained rate is half the usual 4096 IDs per millisecond.
 *
 * - Crash safety: reserved_ms is a bound, kept on disk, above every
 *	 millisecond ever issued.  A tick is installed only when its millisecond
 *	 is below a value of reserved_ms read from shared memory, and that value
 *	 is published only after it is durable.  When a caller comes within half
 *	 a window of the bound, it pushes the bound a window ahead, under
 *	 persist_lock, with a write and fsync of a small file: once every few
 *	 seconds under load, never per call.  Other callers go on meanwhile;
 *	 only one that reaches the bound itself waits for the lock.
 *	 At a clean shutdown the postmaster records the exact high-water mark;
 *	 after a crash the reservation stands.  Either way a fresh shared block
 *	 starts above it, raising the floor if the clock is now behind.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "access/xlog.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/wait_event.h"

#include "idempotency.h"

/* How far ahead of the issued IDs the on-disk bound is pushed. */
#define SNOWFLAKE_RESERVE_MS	5000

/* floor_base value meaning "no floor: read the wall clock". */
#define SNOWFLAKE_FLOOR_OFF		((uint64) PG_INT64_MIN)

#define SNOWFLAKE_STATE_FILE	"idempotency_snowflake.state"
#define SNOWFLAKE_STATE_TMP		"idempotency_snowflake.state.tmp"
#define SNOWFLAKE_STATE_MAGIC	0x1DE3F1A5
#define SNOWFLAKE_STATE_VERSION 1

/* On-disk form of the high-water mark. */
typedef struct SnowflakeStateFile
{
	uint32		magic;			/* SNOWFLAKE_STATE_MAGIC */
	uint32		version;		/* SNOWFLAKE_STATE_VERSION */
	int64		bound_unix_ms;	/* no ID has a timestamp at or after this */
	int64		epoch_unix_ms;	/* idempotency.epoch when written */
	int32		node_id;		/* idempotency.node_id when written */
	pg_crc32c	crc;			/* CRC-32C of the fields above */
} SnowflakeStateFile;

PG_FUNCTION_INFO_V1(snowflake_id);

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
 * Half the monotonic clock, in milliseconds: the floor's rate.  The
 * monotonic clock is system-wide and no clock step moves it.
 */
static inline int64
mono_half_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64) ts.tv_sec * 1000 + ts.tv_nsec / 1000000) / 2;
}

/*
 * The generator's clock: the wall clock, or the floor while the wall clock
 * is behind it.  Retires the floor once the wall clock has caught up.
 */
static int64
generator_clock(SnowflakeShared *sf)
{
	int64		wall = wall_ms();
	uint64		base = pg_atomic_read_u64(&sf->floor_base);

	if (base != SNOWFLAKE_FLOOR_OFF)
	{
		int64		floor = (int64) base + mono_half_ms();

		if (floor > wall)
			return floor;
		/* A failed exchange means someone raised it again: keep theirs. */
		pg_atomic_compare_exchange_u64(&sf->floor_base, &base,
									   SNOWFLAKE_FLOOR_OFF);
	}
	return wall;
}

/*
 * Make the floor read at least target_ms now.  Returns true if the floor
 * was off before, i.e. this is a new step back worth reporting.
 */
static bool
raise_floor(SnowflakeShared *sf, int64 target_ms)
{
	uint64		want = (uint64) (target_ms - mono_half_ms());
	uint64		cur = pg_atomic_read_u64(&sf->floor_base);

	while (cur == SNOWFLAKE_FLOOR_OFF || (int64) cur < (int64) want)
	{
		bool		was_off = (cur == SNOWFLAKE_FLOOR_OFF);

		if (pg_atomic_compare_exchange_u64(&sf->floor_base, &cur, want))
			return was_off;
	}
	return false;
}

/*
 * Write the bound to disk durably: a temporary file, fsync, rename, fsync
 * of the directory.  Errors are reported at elevel; returns success.
 */
static bool
persist_bound(int64 bound_ms, int elevel)
{
	SnowflakeStateFile f;
	int			fd;

	memset(&f, 0, sizeof(f));
	f.magic = SNOWFLAKE_STATE_MAGIC;
	f.version = SNOWFLAKE_STATE_VERSION;
	f.bound_unix_ms = bound_ms + idem_epoch_unix_ms;
	f.epoch_unix_ms = idem_epoch_unix_ms;
	f.node_id = idem_node_id;
	INIT_CRC32C(f.crc);
	COMP_CRC32C(f.crc, &f, offsetof(SnowflakeStateFile, crc));
	FIN_CRC32C(f.crc);

	fd = OpenTransientFile(SNOWFLAKE_STATE_TMP, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
	{
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", SNOWFLAKE_STATE_TMP)));
		return false;
	}
	errno = 0;
	if (write(fd, &f, sizeof(f)) != sizeof(f))
	{
		int			save_errno = errno ? errno : ENOSPC;

		CloseTransientFile(fd);
		errno = save_errno;
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", SNOWFLAKE_STATE_TMP)));
		return false;
	}
	if (pg_fsync(fd) != 0)
	{
		int			save_errno = errno;

		CloseTransientFile(fd);
		errno = save_errno;
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", SNOWFLAKE_STATE_TMP)));
		return false;
	}
	if (CloseTransientFile(fd) != 0)
	{
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", SNOWFLAKE_STATE_TMP)));
		return false;
	}
	return durable_rename(SNOWFLAKE_STATE_TMP, SNOWFLAKE_STATE_FILE, elevel) == 0;
}

/*
 * Read the bound from disk, in milliseconds since the current epoch.
 * Returns -1 when there is none yet (first start) or it is unusable; the
 * latter is logged, since the crash guarantee is then void for this start.
 */
static int64
load_bound(void)
{
	SnowflakeStateFile f;
	pg_crc32c	crc;
	int			fd;
	int			nread;

	fd = OpenTransientFile(SNOWFLAKE_STATE_FILE, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno != ENOENT)
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("could not open file \"%s\": %m", SNOWFLAKE_STATE_FILE),
					 errdetail("Snowflake IDs start from the system clock alone.")));
		return -1;
	}
	nread = read(fd, &f, sizeof(f));
	if (nread < 0)
	{
		int			save_errno = errno;

		CloseTransientFile(fd);
		errno = save_errno;
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", SNOWFLAKE_STATE_FILE),
				 errdetail("Snowflake IDs start from the system clock alone.")));
		return -1;
	}
	CloseTransientFile(fd);

	INIT_CRC32C(crc);
	if (nread == sizeof(f))
	{
		COMP_CRC32C(crc, &f, offsetof(SnowflakeStateFile, crc));
		FIN_CRC32C(crc);
	}
	if (nread != sizeof(f) || f.magic != SNOWFLAKE_STATE_MAGIC ||
		f.version != SNOWFLAKE_STATE_VERSION || !EQ_CRC32C(crc, f.crc))
	{
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("ignoring invalid snowflake state file \"%s\"", SNOWFLAKE_STATE_FILE),
				 errdetail("Snowflake IDs start from the system clock alone; if the clock was set back, they may repeat earlier ones."),
				 errhint("Check the system clock before issuing IDs.")));
		return -1;
	}
	if (f.node_id != idem_node_id)
		ereport(LOG,
				(errmsg("idempotency.node_id changed from %d to %d",
						f.node_id, idem_node_id)));

	/*
	 * IDs compare by value, whose high bits count from the epoch they were
	 * made under.  If the epoch moved later, new IDs must still start above
	 * the old ones' millisecond field, even though their timestamps then
	 * run ahead of the clock; if it moved earlier, the clock is the bound.
	 */
	if (f.epoch_unix_ms != idem_epoch_unix_ms)
		ereport(WARNING,
				(errmsg("idempotency.epoch changed since snowflake IDs were last issued"),
				 errdetail("New IDs continue above the old ones, so their timestamps may run ahead of the clock by the difference, %lld ms.",
						   (long long) Max(idem_epoch_unix_ms - f.epoch_unix_ms, 0)),
				 errhint("Restore the old epoch unless this was intended.")));
	return Max(Max(f.bound_unix_ms - f.epoch_unix_ms,
				   f.bound_unix_ms - idem_epoch_unix_ms), 0);
}

/*
 * Set up a fresh shared block from the on-disk bound.  Called in the
 * postmaster under AddinShmemInitLock, at start and after crash restarts.
 */
void
SnowflakeShmemInit(SnowflakeShared *sf, bool found)
{
	int64		bound;

	if (found)
		return;

	bound = load_bound();
	pg_atomic_init_u64(&sf->last_tick,
					   bound > 0 ? ((uint64) bound << SNOWFLAKE_SEQ_BITS) - 1 : 0);
	pg_atomic_init_u64(&sf->reserved_ms, bound > 0 ? (uint64) bound : 0);
	pg_atomic_init_u64(&sf->floor_base, SNOWFLAKE_FLOOR_OFF);
	pg_atomic_init_u64(&sf->regressions, 0);

	if (bound > 0 && bound > wall_ms())
	{
		raise_floor(sf, bound);
		pg_atomic_write_u64(&sf->regressions, 1);
		ereport(LOG,
				(errmsg("system clock is %lld ms behind the snowflake high-water mark",
						(long long) (bound - wall_ms())),
				 errdetail("New IDs continue above every ID issued before; their timestamps run ahead of the clock until it catches up.")));
	}
}

/*
 * Postmaster, clean shutdown: replace the reservation by the exact bound,
 * so that the next start does not skip ahead of the clock needlessly.
 */
void
SnowflakeShmemShutdown(SnowflakeShared *sf)
{
	int64		bound = (int64) (pg_atomic_read_u64(&sf->last_tick) >> SNOWFLAKE_SEQ_BITS) + 1;

	(void) persist_bound(bound, LOG);
}

/*
 * Make sure the on-disk bound covers ms, pushing it ahead when it gets
 * close.  Blocks only when ms has reached the bound itself.
 */
static void
ensure_reserved(SnowflakeShared *sf, int64 ms)
{
	int64		reserved = (int64) pg_atomic_read_u64(&sf->reserved_ms);

	if (ms + SNOWFLAKE_RESERVE_MS / 2 < reserved)
		return;
	if (ms < reserved)
	{
		/* Still covered: refresh unless someone else already is. */
		if (!LWLockConditionalAcquire(sf->persist_lock, LW_EXCLUSIVE))
			return;
	}
	else
		LWLockAcquire(sf->persist_lock, LW_EXCLUSIVE);

	reserved = (int64) pg_atomic_read_u64(&sf->reserved_ms);
	if (ms + SNOWFLAKE_RESERVE_MS / 2 >= reserved)
	{
		int64		bound = ms + SNOWFLAKE_RESERVE_MS;

		/* ERROR releases the lock through transaction abort. */
		persist_bound(bound, ERROR);
		pg_memory_barrier();
		pg_atomic_write_u64(&sf->reserved_ms, (uint64) bound);
	}
	LWLockRelease(sf->persist_lock);
}

/*
 * Sleep about ms milliseconds, interruptibly, while a burst waits for the
 * clock.
 */
static void
wait_for_clock(int64 ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 (long) Min(Max(ms, 1), 100), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Hand out the next tick.
 */
static int64
next_tick(SnowflakeShared *sf)
{
	int64		clock = generator_clock(sf);
	uint64		old = pg_atomic_read_u64(&sf->last_tick);

	for (;;)
	{
		int64		old_ms = (int64) (old >> SNOWFLAKE_SEQ_BITS);
		int64		next;
		int64		next_ms;

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
			 * keeps the whole lead for bursts.
			 */
			CHECK_FOR_INTERRUPTS();
			clock = generator_clock(sf);
			if (old_ms > clock + idem_max_lead_ms)
			{
				pg_atomic_fetch_add_u64(&sf->regressions, 1);
				if (raise_floor(sf, old_ms))
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

		ensure_reserved(sf, next_ms);

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
