/*-------------------------------------------------------------------------
 *
 * token.c
 *	  One-time tokens: idem_token_issue and idem_token_consume.
 *
 * A token is 24 bytes from the operating system's cryptographic random
 * source (pg_strong_random), written as 32 characters of URL-safe base64
 * (RFC 4648 section 5, no padding).  Only its SHA-256 digest is stored, in
 * idempotency.tokens, so that reading the table does not give away tokens
 * that can still be used.
 *
 * Concurrency.  Consuming is one DELETE of the digest's row, live only:
 * the first consumer deletes it; any other waits for that transaction in
 * PostgreSQL's row lock and, when it commits, finds the row gone (false),
 * or, when it rolls back, deletes it in turn.  So a token is consumed
 * exactly once by a committed transaction, and a consumption rolled back
 * with its transaction leaves the token usable.
 *
 * Rights.  Both functions check first that the caller may use the scope
 * (IdemCheckScope), then write the table with the extension owner's
 * rights (IdemAsOwner): no caller can store a token nobody issued, or
 * consume one of a scope it may not use.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_token_issue);
PG_FUNCTION_INFO_V1(idem_token_consume);

#define TOKEN_RANDOM_BYTES	24	/* 192 bits */
#define TOKEN_CHARS			32	/* base64 of 24 bytes, no padding needed */
#define TOKEN_MAX_SCOPE_BYTES 255

static const char alphabet[] =
"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static const IdemPlanDef insert_def = {
	"INSERT INTO idempotency.tokens (scope, digest, created_at, expires_at)"
	" VALUES ($1, $2, pg_catalog.clock_timestamp(),"
	" pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $3)",
	3, {TEXTOID, BYTEAOID, INTERVALOID}
};
static const IdemPlanDef consume_def = {
	"DELETE FROM idempotency.tokens WHERE scope OPERATOR(pg_catalog.=) $1"
	" AND digest OPERATOR(pg_catalog.=) $2"
	" AND expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()",
	2, {TEXTOID, BYTEAOID}
};
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr consume_plan = NULL;

static text *
scope_arg(FunctionCallInfo fcinfo, int n)
{
	return IdemNameArg(fcinfo, n, "scope", TOKEN_MAX_SCOPE_BYTES,
					   "Name what the tokens are for, such as 'email-confirmation', or leave scope out for 'default'.");
}

/* The stored form of a token: the SHA-256 of its random bytes, as bytea. */
static bytea *
token_digest(const uint8 *raw)
{
	bytea	   *d = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);

	SET_VARSIZE(d, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	IdemSha256(raw, TOKEN_RANDOM_BYTES, (uint8 *) VARDATA(d));
	return d;
}

/*
 * idem_token_issue('1 hour') names a scope "1 hour": the scope comes
 * first.  A scope without a policy row that reads as an interval with a
 * unit or a time of day ('1 hour', '90 min', '01:30', 'PT1H') is taken for
 * that mistake and refused; a scope with a row is used as named.
 */
static void
refuse_lifetime_as_scope(text *scope)
{
	char	   *s = text_to_cstring(scope);
	char		workbuf[MAXDATELEN + 1];
	char	   *fields[MAXDATEFIELDS];
	int			ftypes[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	struct pg_itm_in itm;
	bool		iso;

	/*
	 * Only text that names a unit or a time of day: a scope such as '42' or
	 * '2026' (a tenant's number) reads as an interval of seconds too.
	 */
	if (strpbrk(s, ":abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == NULL ||
		strlen(s) >= sizeof(workbuf))
		return;
	iso = s[0] == 'P' && DecodeISO8601Interval(pstrdup(s), &dtype, &itm) == 0;
	if (!iso &&
		(ParseDateTime(s, workbuf, sizeof(workbuf), fields, ftypes, MAXDATEFIELDS, &nf) != 0 ||
		 DecodeInterval(fields, ftypes, nf, INTERVAL_FULL_RANGE, &dtype, &itm) != 0))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("scope \"%s\" looks like a lifetime", s),
			 errdetail("The first argument of idem_token_issue is the scope; the lifetime is the second."),
			 errhint("Pass the lifetime by name, idem_token_issue(ttl => '%s'), or after a scope, idem_token_issue('my-scope', '%s').",
					 s, s)));
}

/*
 * idem_token_issue(scope, ttl) → text; ttl NULL: an hour, or max_ttl if shorter
 */
Datum
idem_token_issue(PG_FUNCTION_ARGS)
{
	text	   *scope = scope_arg(fcinfo, 0);
	IdemPolicy	policy;
	Interval   *ttl;
	Interval	default_ttl;
	uint8		raw[TOKEN_RANDOM_BYTES];
	char		out[TOKEN_CHARS + 1];
	Datum		args[3];
	IdemUserSave save;

	if (!IdemCheckScope(scope, &policy))
		refuse_lifetime_as_scope(scope);
	if (PG_ARGISNULL(1))
	{
		/* An hour, unless the scope's max_ttl is shorter. */
		Interval	hour = {.time = USECS_PER_HOUR,.day = 0,.month = 0};

		default_ttl = *IdemShorter(&policy.max_ttl, &hour);
		ttl = &default_ttl;
	}
	else
		ttl = IdemPolicyTtlArg(fcinfo, 1, "ttl", &policy, scope);
	if (!pg_strong_random(raw, sizeof(raw)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes for a token"),
				 errhint("Check the server's source of randomness.")));
	/* Every 3 bytes make 4 characters. */
	for (int i = 0, o = 0; i < TOKEN_RANDOM_BYTES; i += 3)
	{
		uint32		v = (raw[i] << 16) | (raw[i + 1] << 8) | raw[i + 2];

		out[o++] = alphabet[(v >> 18) & 63];
		out[o++] = alphabet[(v >> 12) & 63];
		out[o++] = alphabet[(v >> 6) & 63];
		out[o++] = alphabet[v & 63];
	}
	out[TOKEN_CHARS] = '\0';

	args[0] = PointerGetDatum(scope);
	args[1] = PointerGetDatum(token_digest(raw));
	args[2] = IntervalPGetDatum(ttl);
	IdemAsOwner(&save);
	IdemConnectSPI();
	IdemRunPlan(&insert_def, &insert_plan, args, NULL, false);
	SPI_finish();
	IdemRestoreUser(&save);
	PG_RETURN_TEXT_P(cstring_to_text(out));
}

/*
 * idem_token_consume(token, scope) → boolean
 */
Datum
idem_token_consume(PG_FUNCTION_ARGS)
{
	text	   *token;
	text	   *scope;
	const char *s;
	uint8		raw[TOKEN_RANDOM_BYTES];
	Datum		args[2];
	bool		consumed;
	bool		well_formed;
	IdemUserSave save;

	IdemRequireArg(fcinfo, 0, "token");
	token = PG_GETARG_TEXT_PP(0);
	scope = scope_arg(fcinfo, 1);
	IdemCheckScope(scope, NULL);
	s = VARDATA_ANY(token);
	well_formed = VARSIZE_ANY_EXHDR(token) == TOKEN_CHARS;
	for (int i = 0; well_formed && i < TOKEN_CHARS; i++)
		well_formed = s[i] != '\0' && strchr(alphabet, s[i]) != NULL;
	if (!well_formed)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid one-time token"),
				 errdetail("A token is %d characters of A-Z, a-z, 0-9, \"-\" and \"_\".", TOKEN_CHARS),
				 errhint("Pass the text idem_token_issue() returned, unchanged.")));
	for (int i = 0, o = 0; i < TOKEN_CHARS; i += 4)
	{
		uint32		v = 0;

		for (int j = 0; j < 4; j++)
			v = (v << 6) | (uint32) (strchr(alphabet, s[i + j]) - alphabet);
		raw[o++] = (v >> 16) & 0xff;
		raw[o++] = (v >> 8) & 0xff;
		raw[o++] = v & 0xff;
	}

	args[0] = PointerGetDatum(scope);
	args[1] = PointerGetDatum(token_digest(raw));
	IdemAsOwner(&save);
	IdemConnectSPI();
	consumed = IdemRunPlan(&consume_def, &consume_plan, args, NULL, false) == 1;
	SPI_finish();
	IdemRestoreUser(&save);
	PG_RETURN_BOOL(consumed);
}
