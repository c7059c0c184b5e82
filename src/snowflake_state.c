/*-------------------------------------------------------------------------
 *
 * snowflake_state.c
 *	  Where the snowflake generator's high-water mark is kept: a small file
 *	  in the data directory, and a record in WAL.
 *
 * A mark says "no ID has a millisecond at or after bound", and which time
 * the generator's reference clock read when the bound was set (snowflake.c
 * uses it to tell a crash restart from a clock that went back).
 *
 * The file ($PGDATA/idempotency_snowflake.state) is what a restart of the
 * same server reads: the postmaster writes the exact mark at a clean
 * shutdown, and each reservation writes its bound before it is used, so a
 * crash restart finds it too, including reservations older than the last
 * checkpoint, which crash recovery does not replay.
 *
 * The WAL record carries each reservation to every server that replays
 * this server's WAL: streaming standbys, servers restored from a base
 * backup and archived WAL, and so promoted standbys.  The record is
 * written after the file and before any ID under its bound is handed out,
 * so any WAL that holds such an ID (a row, say) comes after it; it is
 * flushed at once, so that standbys receive it even when no commit
 * follows.
 * A server replaying it raises its own mark and writes its own file, so a
 * standby's restart, and a base backup taken from a standby, keep it too.
 * One record per reservation, a few seconds apart under full load; never
 * one per ID.
 *
 * The resource manager has the custom id IDEM_RMGR_ID (186) and the name
 * "idempotency".  It has to be registered before any WAL is replayed, so
 * the library must be in shared_preload_libraries of every server that
 * replays this WAL; PostgreSQL refuses to replay it otherwise, with a hint
 * that says so.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"
#include "lib/stringinfo.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "utils/timestamp.h"

#include "idempotency.h"

#define STATE_FILE		"idempotency_snowflake.state"
#define STATE_TMP		"idempotency_snowflake.state.tmp"
#define STATE_MAGIC		0x1DE3F1A5
#define STATE_VERSION	2

/* STATE_VERSION 1 files had no reference clock; their reserve was 5 s. */
#define STATE_V1_RESERVE_MS	5000

/* The one kind of record: a new reservation. */
#define XLOG_IDEM_SNOWFLAKE_RESERVE	0x00

/* On-disk form of a mark, in the file and in WAL. */
typedef struct SnowflakeMarkData
{
	int64		bound_unix_ms;	/* no ID has a timestamp at or after this */
	int64		ref_unix_ms;	/* the reference clock when it was set */
	int64		epoch_unix_ms;	/* idempotency.epoch of the writer */
	int32		node_id;		/* idempotency.node_id of the writer */
	int32		exact;			/* 1: the exact high-water mark (clean
								 * shutdown); 0: a reservation */
} SnowflakeMarkData;

typedef struct SnowflakeStateFile
{
	uint32		magic;			/* STATE_MAGIC */
	uint32		version;		/* STATE_VERSION */
	SnowflakeMarkData mark;
	pg_crc32c	crc;			/* CRC-32C of the fields above */
} SnowflakeStateFile;

/* What version 1 wrote. */
typedef struct SnowflakeStateFileV1
{
	uint32		magic;
	uint32		version;
	int64		bound_unix_ms;
	int64		epoch_unix_ms;
	int32		node_id;
	pg_crc32c	crc;
} SnowflakeStateFileV1;

static void idem_rmgr_redo(XLogReaderState *record);
static void idem_rmgr_desc(StringInfo buf, XLogReaderState *record);
static const char *idem_rmgr_identify(uint8 info);

static RmgrData idem_rmgr = {
	.rm_name = IDEM_RMGR_NAME,
	.rm_redo = idem_rmgr_redo,
	.rm_desc = idem_rmgr_desc,
	.rm_identify = idem_rmgr_identify,
};

/*
 * Register the resource manager; from _PG_init, while preloading.
 */
void
SnowflakeRegisterRmgr(void)
{
	RegisterCustomRmgr(IDEM_RMGR_ID, &idem_rmgr);
}

/* A mark as written, from one in milliseconds since the current epoch. */
static void
mark_to_data(const SnowflakeMark *mark, bool exact, SnowflakeMarkData *d)
{
	memset(d, 0, sizeof(*d));
	d->bound_unix_ms = mark->bound_ms + idem_epoch_unix_ms;
	d->ref_unix_ms = mark->ref_ms + idem_epoch_unix_ms;
	d->epoch_unix_ms = idem_epoch_unix_ms;
	d->node_id = idem_node_id;
	d->exact = exact ? 1 : 0;
}

/*
 * A mark as read, in milliseconds since the current epoch.  IDs compare by
 * value, whose high bits count from the epoch they were made under: if the
 * epoch moved later, new IDs must still start above the old ones'
 * millisecond field, even though their timestamps then run ahead of the
 * clock; if it moved earlier, the old bound's time is what counts.
 */
static void
data_to_mark(const SnowflakeMarkData *d, SnowflakeMark *mark)
{
	mark->bound_ms = Max(Max(d->bound_unix_ms - d->epoch_unix_ms,
							 d->bound_unix_ms - idem_epoch_unix_ms), 0);
	mark->ref_ms = d->ref_unix_ms - idem_epoch_unix_ms;
}

/*
 * Write a mark to the file durably: a temporary file, fsync, rename, fsync
 * of the directory.  (durable_rename would also fsync both files again:
 * two more flushes on a path that runs every few seconds under load, and
 * not needed, since the file replaced was made the same way.)  Errors are
 * reported at elevel; returns success.
 */
bool
SnowflakeWriteFile(const SnowflakeMark *mark, bool exact, int elevel)
{
	SnowflakeStateFile f;
	int			fd;

	memset(&f, 0, sizeof(f));
	f.magic = STATE_MAGIC;
	f.version = STATE_VERSION;
	mark_to_data(mark, exact, &f.mark);
	INIT_CRC32C(f.crc);
	COMP_CRC32C(f.crc, &f, offsetof(SnowflakeStateFile, crc));
	FIN_CRC32C(f.crc);

	fd = OpenTransientFile(STATE_TMP, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
	{
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", STATE_TMP)));
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
				 errmsg("could not write file \"%s\": %m", STATE_TMP)));
		return false;
	}
	if (pg_fsync(fd) != 0)
	{
		int			save_errno = errno;

		CloseTransientFile(fd);
		errno = save_errno;
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", STATE_TMP)));
		return false;
	}
	if (CloseTransientFile(fd) != 0)
	{
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", STATE_TMP)));
		return false;
	}
	if (rename(STATE_TMP, STATE_FILE) != 0)
	{
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not rename file \"%s\" to \"%s\": %m",
						STATE_TMP, STATE_FILE)));
		return false;
	}
	return fsync_fname_ext(".", true, false, elevel) == 0;
}

/*
 * Read the mark from the file.  Returns false when there is none yet (a
 * first start) or it is unusable; the latter is logged, since the restart
 * guarantee then rests on WAL alone.
 */
bool
SnowflakeReadFile(SnowflakeMark *mark, bool *exact)
{
	union
	{
		SnowflakeStateFile v2;
		SnowflakeStateFileV1 v1;
	}			f;
	SnowflakeMarkData d;
	pg_crc32c	crc;
	int			fd;
	int			nread;
	bool		valid = false;

	fd = OpenTransientFile(STATE_FILE, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno != ENOENT)
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("could not open file \"%s\": %m", STATE_FILE),
					 errdetail("Snowflake IDs start from the system clock and WAL alone.")));
		return false;
	}
	memset(&f, 0, sizeof(f));
	nread = read(fd, &f, sizeof(f));
	if (nread < 0)
	{
		int			save_errno = errno;

		CloseTransientFile(fd);
		errno = save_errno;
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", STATE_FILE),
				 errdetail("Snowflake IDs start from the system clock and WAL alone.")));
		return false;
	}
	CloseTransientFile(fd);

	if (nread == sizeof(f.v2) && f.v2.magic == STATE_MAGIC &&
		f.v2.version == STATE_VERSION)
	{
		INIT_CRC32C(crc);
		COMP_CRC32C(crc, &f.v2, offsetof(SnowflakeStateFile, crc));
		FIN_CRC32C(crc);
		valid = EQ_CRC32C(crc, f.v2.crc);
		d = f.v2.mark;
	}
	else if (nread == sizeof(f.v1) && f.v1.magic == STATE_MAGIC && f.v1.version == 1)
	{
		INIT_CRC32C(crc);
		COMP_CRC32C(crc, &f.v1, offsetof(SnowflakeStateFileV1, crc));
		FIN_CRC32C(crc);
		valid = EQ_CRC32C(crc, f.v1.crc);
		memset(&d, 0, sizeof(d));
		d.bound_unix_ms = f.v1.bound_unix_ms;
		d.ref_unix_ms = f.v1.bound_unix_ms - STATE_V1_RESERVE_MS;
		d.epoch_unix_ms = f.v1.epoch_unix_ms;
		d.node_id = f.v1.node_id;
	}
	if (!valid)
	{
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("ignoring invalid snowflake state file \"%s\"", STATE_FILE),
				 errdetail("Snowflake IDs start from the system clock and WAL alone; if the clock was set back, they may repeat earlier ones."),
				 errhint("Check the system clock before issuing IDs.")));
		return false;
	}
	if (d.node_id != idem_node_id)
		ereport(LOG,
				(errmsg("idempotency.node_id changed from %d to %d",
						d.node_id, idem_node_id)));
	if (d.epoch_unix_ms != idem_epoch_unix_ms)
		ereport(WARNING,
				(errmsg("idempotency.epoch changed since snowflake IDs were last issued"),
				 errdetail("New IDs continue above the old ones, so their timestamps may run ahead of the clock by the difference, %lld ms.",
						   (long long) Max(idem_epoch_unix_ms - d.epoch_unix_ms, 0)),
				 errhint("Restore the old epoch unless this was intended.")));
	data_to_mark(&d, mark);
	*exact = d.exact != 0;
	return true;
}

/*
 * Write a reservation to WAL and flush it, so that walsenders send it at
 * once: IDs handed out by read-only statements (an ID service) are never
 * followed by a commit that would flush it.
 */
void
SnowflakeLogMark(const SnowflakeMark *mark)
{
	SnowflakeMarkData d;

	mark_to_data(mark, false, &d);
	XLogBeginInsert();
	XLogRegisterData((char *) &d, sizeof(d));
	XLogFlush(XLogInsert(IDEM_RMGR_ID, XLOG_IDEM_SNOWFLAKE_RESERVE));
}

/*
 * Replay a reservation: raise this server's mark, and keep it in the file
 * so that a restart, which replays only from the last restartpoint, keeps
 * it too.
 */
static void
idem_rmgr_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	SnowflakeMarkData d;
	SnowflakeMark mark;

	if (info != XLOG_IDEM_SNOWFLAKE_RESERVE || XLogRecGetDataLen(record) != sizeof(d))
		elog(PANIC, "idempotency redo: unknown record (info 0x%02X, %u bytes)",
			 info, XLogRecGetDataLen(record));
	memcpy(&d, XLogRecGetData(record), sizeof(d));
	data_to_mark(&d, &mark);
	if (idem_shared != NULL && SnowflakeAbsorbMark(&idem_shared->snowflake, &mark))
		(void) SnowflakeWriteFile(&mark, false, ERROR);
}

/* Text of a millisecond timestamp since 1970, for the description. */
static const char *
unix_ms_text(int64 unix_ms)
{
	return timestamptz_to_str((TimestampTz) (unix_ms - IDEM_UNIX_TO_PG_MS) * 1000);
}

static void
idem_rmgr_desc(StringInfo buf, XLogReaderState *record)
{
	SnowflakeMarkData d;

	if (XLogRecGetDataLen(record) != sizeof(d))
		return;
	memcpy(&d, XLogRecGetData(record), sizeof(d));
	appendStringInfo(buf, "snowflake bound %s", unix_ms_text(d.bound_unix_ms));
	appendStringInfo(buf, "; reserved at %s; node %d",
					 unix_ms_text(d.ref_unix_ms), d.node_id);
}

static const char *
idem_rmgr_identify(uint8 info)
{
	if ((info & ~XLR_INFO_MASK) == XLOG_IDEM_SNOWFLAKE_RESERVE)
		return "SNOWFLAKE_RESERVE";
	return NULL;
}
