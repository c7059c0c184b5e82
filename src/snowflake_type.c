/*-------------------------------------------------------------------------
 *
 * snowflake_type.c
 *	  The snowflake data type: text and binary I/O, casts, and decoding an
 *	  ID into its timestamp, node and sequence.
 *
 * A snowflake is a non-negative int8 on disk and in memory, so comparison,
 * hashing, min/max and the casts to bigint reuse PostgreSQL's own int8
 * functions (bound in the install script).  What is here is what differs:
 * input refuses negative values and says "snowflake" in its errors, and
 * the decoding functions know the layout and idempotency.epoch.
 *
 * Nothing here touches shared memory, so all of it works without
 * shared_preload_libraries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "fmgr.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(snowflake_in);
PG_FUNCTION_INFO_V1(snowflake_out);
PG_FUNCTION_INFO_V1(snowflake_recv);
PG_FUNCTION_INFO_V1(snowflake_send);
PG_FUNCTION_INFO_V1(snowflake_from_int8);
PG_FUNCTION_INFO_V1(snowflake_from_int4);
PG_FUNCTION_INFO_V1(snowflake_timestamp);
PG_FUNCTION_INFO_V1(snowflake_node);
PG_FUNCTION_INFO_V1(snowflake_sequence);
PG_FUNCTION_INFO_V1(snowflake_at);

#define SNOWFLAKE_NEGATIVE_DETAIL "Snowflake IDs are never negative."
#define SNOWFLAKE_RANGE_HINT "Use a value made by snowflake_id() or snowflake_at(), from 0 to 9223372036854775807."

/*
 * snowflake_in: decimal text, optional leading '+' and surrounding blanks,
 * 0 to 9223372036854775807.
 */
Datum
snowflake_in(PG_FUNCTION_ARGS)
{
	char	   *str = PG_GETARG_CSTRING(0);
	const char *p = str;
	uint64		value = 0;
	bool		negative = false;
	bool		any_digit = false;

	while (isspace((unsigned char) *p))
		p++;
	if (*p == '+' || *p == '-')
		negative = (*p++ == '-');
	while (isdigit((unsigned char) *p))
	{
		int			digit = *p++ - '0';

		if (value > ((uint64) PG_INT64_MAX - digit) / 10)
		{
			errsave(fcinfo->context,
					errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					errmsg("value \"%s\" is out of range for type %s",
						   str, "snowflake"),
					errdetail("A snowflake is at most 9223372036854775807."),
					errhint(SNOWFLAKE_RANGE_HINT));
			PG_RETURN_NULL();
		}
		value = value * 10 + digit;
		any_digit = true;
	}
	while (isspace((unsigned char) *p))
		p++;

	if (!any_digit || *p != '\0')
	{
		errsave(fcinfo->context,
				errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				errmsg("invalid input syntax for type %s: \"%s\"",
					   "snowflake", str),
				errhint("A snowflake is written as a non-negative decimal integer."));
		PG_RETURN_NULL();
	}
	if (negative && value != 0)
	{
		errsave(fcinfo->context,
				errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				errmsg("value \"%s\" is out of range for type %s",
					   str, "snowflake"),
				errdetail(SNOWFLAKE_NEGATIVE_DETAIL),
				errhint(SNOWFLAKE_RANGE_HINT));
		PG_RETURN_NULL();
	}
	PG_RETURN_INT64((int64) value);
}

Datum
snowflake_out(PG_FUNCTION_ARGS)
{
	int64		value = PG_GETARG_INT64(0);
	char		buf[MAXINT8LEN + 1];

	pg_lltoa(value, buf);
	PG_RETURN_CSTRING(pstrdup(buf));
}

/*
 * Every non-negative int8 is a valid snowflake; refuse the rest.  Shared by
 * binary input and the casts from integers, so that neither can store what
 * text input would not.
 */
static int64
nonnegative(int64 value)
{
	if (value < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("snowflake value %lld is out of range", (long long) value),
				 errdetail(SNOWFLAKE_NEGATIVE_DETAIL),
				 errhint(SNOWFLAKE_RANGE_HINT)));
	return value;
}

/* Binary input: the int8 wire format. */
Datum
snowflake_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);

	PG_RETURN_INT64(nonnegative(pq_getmsgint64(buf)));
}

Datum
snowflake_send(PG_FUNCTION_ARGS)
{
	int64		value = PG_GETARG_INT64(0);
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendint64(&buf, value);
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

Datum
snowflake_from_int8(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(nonnegative(PG_GETARG_INT64(0)));
}

Datum
snowflake_from_int4(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(nonnegative(PG_GETARG_INT32(0)));
}

/*
 * snowflake_timestamp(snowflake) → timestamptz: the millisecond the ID was
 * generated in, read against idempotency.epoch.
 */
Datum
snowflake_timestamp(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	int64		unix_ms = (id >> SNOWFLAKE_MS_SHIFT) + idem_epoch_unix_ms;

	PG_RETURN_TIMESTAMPTZ((TimestampTz) (unix_ms - IDEM_UNIX_TO_PG_MS) * 1000);
}

Datum
snowflake_node(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);

	PG_RETURN_INT32((int32) ((id >> SNOWFLAKE_SEQ_BITS) & SNOWFLAKE_MAX_NODE));
}

Datum
snowflake_sequence(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);

	PG_RETURN_INT32((int32) (id & SNOWFLAKE_MAX_SEQ));
}

/*
 * snowflake_at(timestamptz) → snowflake: the smallest ID of the millisecond
 * holding that instant, so that "id >= snowflake_at(a) AND id <
 * snowflake_at(b)" selects the IDs generated in [a, b) on any node.
 */
Datum
snowflake_at(PG_FUNCTION_ARGS)
{
	TimestampTz ts = PG_GETARG_TIMESTAMPTZ(0);
	int64		pg_ms;
	int64		ms;

	if (TIMESTAMP_NOT_FINITE(ts))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range for type %s", "snowflake"),
				 errdetail("Infinite timestamps have no snowflake."),
				 errhint("Use a finite timestamp, or leave the bound of the range open.")));

	/* Round down to the millisecond, also before 2000. */
	pg_ms = ts / 1000 - (ts % 1000 < 0 ? 1 : 0);
	ms = pg_ms + IDEM_UNIX_TO_PG_MS - idem_epoch_unix_ms;
	if (ms < 0 || ms > SNOWFLAKE_MAX_MS)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range for type %s", "snowflake"),
				 errdetail("Snowflake IDs cover 2^41 milliseconds (about 69 years) from idempotency.epoch \"%s\".",
						   idem_epoch_string),
				 errhint("Use a timestamp inside that range.")));
	PG_RETURN_INT64(ms << SNOWFLAKE_MS_SHIFT);
}

/*
 * Read n digits at *p into *out, advancing *p; false if they are not there.
 */
static bool
take_digits(const char **p, int n, int *out)
{
	int			v = 0;

	for (int i = 0; i < n; i++)
	{
		if (!isdigit((unsigned char) (*p)[i]))
			return false;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return true;
}

/*
 * Parse idempotency.epoch: "YYYY-MM-DD[( |T)HH:MM[:SS[.fff]]][Z|±HH[[:]MM]]",
 * read as UTC without an offset.  A parser of our own rather than
 * timestamptz_in, because this runs in the postmaster from a GUC check hook,
 * which must not throw and must not depend on the session's time zone.
 * On failure sets *problem to a sentence for errdetail.
 */
bool
SnowflakeParseEpoch(const char *str, int64 *unix_ms, const char **problem)
{
	const char *p = str;
	int			year,
				month,
				day,
				hour = 0,
				minute = 0,
				second = 0,
				millis = 0,
				off_h = 0,
				off_m = 0,
				sign = 0;
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	*problem = "The value is not a timestamp of the form YYYY-MM-DD HH:MM:SS+00.";
	while (isspace((unsigned char) *p))
		p++;
	if (!take_digits(&p, 4, &year) || *p++ != '-' ||
		!take_digits(&p, 2, &month) || *p++ != '-' ||
		!take_digits(&p, 2, &day))
		return false;
	if (*p == ' ' || *p == 'T')
	{
		p++;
		if (!take_digits(&p, 2, &hour) || *p++ != ':' ||
			!take_digits(&p, 2, &minute))
			return false;
		if (*p == ':')
		{
			p++;
			if (!take_digits(&p, 2, &second))
				return false;
			if (*p == '.')
			{
				int			scale = 100;

				p++;
				if (!isdigit((unsigned char) *p))
					return false;
				for (; isdigit((unsigned char) *p); p++, scale /= 10)
					millis += (*p - '0') * scale;
			}
		}
	}
	while (isspace((unsigned char) *p))
		p++;
	if (*p == 'Z' || *p == 'z')
		p++;
	else if (*p == '+' || *p == '-')
	{
		sign = (*p++ == '-') ? -1 : 1;
		if (!take_digits(&p, 2, &off_h))
			return false;
		if (*p == ':')
			p++;
		if (isdigit((unsigned char) *p) && !take_digits(&p, 2, &off_m))
			return false;
	}
	while (isspace((unsigned char) *p))
		p++;
	if (*p != '\0')
		return false;

	if (month < 1 || month > 12 || day < 1 || day > mdays[month - 1] ||
		(month == 2 && day == 29 &&
		 !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))) ||
		hour > 23 || minute > 59 || second > 59 || off_h > 15 || off_m > 59)
	{
		*problem = "A field of the timestamp is out of range.";
		return false;
	}
	*unix_ms = ((int64) (date2j(year, month, day) - UNIX_EPOCH_JDATE) * 86400 +
				hour * 3600 + minute * 60 + second -
				sign * (off_h * 3600 + off_m * 60)) * 1000 + millis;
	if (*unix_ms < 0)
	{
		*problem = "The epoch must not be before 1970-01-01 00:00:00 UTC.";
		return false;
	}
	return true;
}
