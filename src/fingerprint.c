/*-------------------------------------------------------------------------
 *
 * fingerprint.c
 *	  idem_fingerprint: a SHA-256 digest of a JSON request payload, equal
 *	  for equal documents however they were written.
 *
 * The digest covers a canonical encoding of the jsonb value, not its text:
 * jsonb already drops whitespace and duplicate keys and keeps object keys
 * in one fixed order, so it is left to write numbers without insignificant
 * zeros (1, 1.0 and 1.00 are one number) and to frame every string and
 * key with its length, so that no two documents encode alike.  With paths,
 * only the values at those dotted paths ("customer.id", "items.0.sku")
 * count, in sorted order, each framed with its path; a missing path is
 * encoded apart from a JSON null.
 *
 * The encoding is part of the contract: stored fingerprints must keep
 * matching, so it may never change within a major version.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "port/pg_bswap.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_fingerprint);

/* Append a tag byte and length-framed bytes. */
static void
put_framed(StringInfo buf, char tag, const char *data, int len)
{
	uint32		be_len = pg_hton32((uint32) len);

	appendStringInfoChar(buf, tag);
	appendBinaryStringInfo(buf, (const char *) &be_len, sizeof(be_len));
	appendBinaryStringInfo(buf, data, len);
}

static void
put_scalar(StringInfo buf, const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			appendStringInfoChar(buf, 'n');
			break;
		case jbvBool:
			appendStringInfoChar(buf, v->val.boolean ? 't' : 'f');
			break;
		case jbvNumeric:
			{
				char	   *digits = numeric_normalize(v->val.numeric);

				put_framed(buf, 'd', digits, strlen(digits));
				pfree(digits);
				break;
			}
		case jbvString:
			put_framed(buf, 's', v->val.string.val, v->val.string.len);
			break;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
	}
}

/*
 * Encode a container, descending into nested ones.  A raw scalar (a
 * document that is just "42") is stored as a one-element array flagged
 * rawScalar; it encodes as the scalar alone.
 */
static void
put_container(StringInfo buf, JsonbContainer *container)
{
	JsonbIterator *it = JsonbIteratorInit(container);
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			depth = 0;
	bool		raw_scalar = false;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (tok)
		{
			case WJB_BEGIN_ARRAY:
				if (depth++ == 0 && v.val.array.rawScalar)
					raw_scalar = true;
				else
					appendStringInfoChar(buf, '[');
				break;
			case WJB_END_ARRAY:
				if (!(--depth == 0 && raw_scalar))
					appendStringInfoChar(buf, ']');
				break;
			case WJB_BEGIN_OBJECT:
				depth++;
				appendStringInfoChar(buf, '{');
				break;
			case WJB_END_OBJECT:
				depth--;
				appendStringInfoChar(buf, '}');
				break;
			case WJB_KEY:
				put_framed(buf, 'k', v.val.string.val, v.val.string.len);
				break;
			case WJB_VALUE:
			case WJB_ELEM:
				put_scalar(buf, &v);
				break;
			default:
				elog(ERROR, "unexpected jsonb iterator token %d", (int) tok);
		}
	}
}

static void
put_value(StringInfo buf, JsonbValue *v)
{
	if (v->type == jbvBinary)
		put_container(buf, v->val.binary.data);
	else
		put_scalar(buf, v);
}

/*
 * The value at a dotted path, or NULL.  Each step is an object key, or an
 * array index written in decimal.
 */
static JsonbValue *
find_path(JsonbContainer *root, const char *path)
{
	JsonbContainer *container = root;
	JsonbValue *v = NULL;
	const char *step = path;

	for (;;)
	{
		const char *dot = strchr(step, '.');
		int			len = dot ? (int) (dot - step) : (int) strlen(step);

		if (container == NULL || JsonContainerIsScalar(container))
			return NULL;
		if (JsonContainerIsObject(container))
			v = getKeyJsonValueFromContainer(container, step, len, NULL);
		else
		{
			char	   *end;
			long		index;

			if (len == 0 || !isdigit((unsigned char) step[0]))
				return NULL;
			index = strtol(step, &end, 10);
			if (end != step + len || index < 0 || index > PG_INT32_MAX)
				return NULL;
			v = getIthJsonbValueFromContainer(container, (uint32) index);
		}
		if (v == NULL || dot == NULL)
			return v;
		container = v->type == jbvBinary ? v->val.binary.data : NULL;
		step = dot + 1;
	}
}

static int
compare_paths(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * SHA-256 of len bytes at data into digest (PG_SHA256_DIGEST_LENGTH bytes).
 */
void
IdemSha256(const void *data, size_t len, uint8 *digest)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) data, len) < 0 ||
		pg_cryptohash_final(ctx, digest, PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "could not compute SHA-256: %s", pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);
}

/*
 * idem_fingerprint(payload jsonb, paths text[] DEFAULT NULL) → bytea
 */
Datum
idem_fingerprint(PG_FUNCTION_ARGS)
{
	Jsonb	   *payload;
	StringInfoData buf;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	bytea	   *result;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	payload = PG_GETARG_JSONB_P(0);
	initStringInfo(&buf);

	if (PG_ARGISNULL(1))
		put_container(&buf, &payload->root);
	else
	{
		ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
		Datum	   *elems;
		bool	   *elem_nulls;
		int			n;
		char	  **paths;

		deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &n);
		if (n == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("paths must not be empty"),
					 errhint("Name at least one path, or pass NULL to fingerprint the whole document.")));
		paths = palloc(n * sizeof(char *));
		for (int i = 0; i < n; i++)
		{
			if (elem_nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("paths must not contain null"),
						 errhint("Write each path as dotted keys, such as 'customer.id'.")));
			paths[i] = TextDatumGetCString(elems[i]);
			if (paths[i][0] == '\0')
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("paths must not contain an empty path"),
						 errhint("Write each path as dotted keys, such as 'customer.id'.")));
		}
		/* The order the caller lists paths in does not matter. */
		qsort(paths, n, sizeof(char *), compare_paths);
		for (int i = 0; i < n; i++)
		{
			JsonbValue *v;

			if (i > 0 && strcmp(paths[i], paths[i - 1]) == 0)
				continue;
			put_framed(&buf, 'p', paths[i], strlen(paths[i]));
			v = find_path(&payload->root, paths[i]);
			if (v == NULL)
				appendStringInfoChar(&buf, 'x');
			else
				put_value(&buf, v);
		}
	}

	IdemSha256(buf.data, buf.len, digest);
	result = palloc(VARHDRSZ + sizeof(digest));
	SET_VARSIZE(result, VARHDRSZ + sizeof(digest));
	memcpy(VARDATA(result), digest, sizeof(digest));
	PG_RETURN_BYTEA_P(result);
}
