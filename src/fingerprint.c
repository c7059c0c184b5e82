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
 * key with its length, so that no two documents encode alike.
 *
 * With paths, only the values at those paths count.  A path is written as
 * dotted steps ("customer.id", "items.0.sku") or, to name keys that hold
 * dots, braces or anything else, as PostgreSQL's #> operator takes it, a
 * text array literal ('{a.b}', '{customer,id}').  Each path is encoded by
 * its steps, each framed with its length, so both spellings of a path
 * encode alike; paths count in the sorted order of that encoding, each
 * once.  What a path finds is encoded as one of three things: the value
 * there; "missing" (an object without that key, an array too short),
 * which differs from a JSON null; or, when a step cannot be taken at all
 * (a step into a string, number, boolean or null, or a non-number step
 * into an array), the value that stopped it, so that documents of another
 * shape than the paths expect never fingerprint alike unless they are
 * alike there.
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
#include "parser/scansup.h"
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

/* One step of a path: an object key, or an array index written in decimal. */
typedef struct PathStep
{
	char	   *name;			/* the step, a copy */
	int			len;			/* its length in bytes */
} PathStep;

/* A path, and its encoding (what is hashed, and sorted by). */
typedef struct FpPath
{
	List	   *steps;			/* of PathStep */
	StringInfoData enc;			/* each step framed with its length */
} FpPath;

static void
bad_path(const char *path, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid fingerprint path \"%s\"", path),
			 errdetail("%s", why),
			 errhint("Write a path as dotted keys, such as 'customer.id', or, for keys with dots in them, as a text array as #> takes it, such as '{customer,\"first.name\"}'.")));
}

static List *
add_step(List *steps, const char *name, int len)
{
	PathStep   *step = palloc(sizeof(PathStep));

	step->name = pnstrdup(name, len);
	step->len = len;
	return lappend(steps, step);
}

/*
 * The steps of a path written as a text array literal, '{a,"b.c"}': items
 * separated by commas, each bare (surrounding white space dropped) or in
 * double quotes, with backslash escaping the next character in either.
 */
static List *
parse_braced(const char *path)
{
	List	   *steps = NIL;
	const char *p = path + 1;
	StringInfoData item;

	initStringInfo(&item);
	for (;;)
	{
		bool		quoted = false;
		int			kept;		/* item.len up to the last escaped or quoted byte */

		resetStringInfo(&item);
		while (scanner_isspace(*p))
			p++;
		if (*p == '"')
		{
			quoted = true;
			for (p++; *p != '"'; p++)
			{
				if (*p == '\\')
					p++;
				if (*p == '\0')
					bad_path(path, "A quoted step is not closed.");
				appendStringInfoChar(&item, *p);
			}
			p++;
			while (scanner_isspace(*p))
				p++;
		}
		else
		{
			kept = 0;
			for (; *p != ',' && *p != '}' && *p != '\0'; p++)
			{
				if (*p == '{' || *p == '"')
					bad_path(path, "Braces and double quotes inside a step must be escaped with a backslash, or the step quoted.");
				if (*p == '\\')
				{
					if (*++p == '\0')
						break;
					appendStringInfoChar(&item, *p);
					kept = item.len;
					continue;
				}
				appendStringInfoChar(&item, *p);
				if (!scanner_isspace(*p))
					kept = item.len;
			}
			item.len = kept;	/* trailing white space is not part of it */
			item.data[kept] = '\0';
			if (kept == 0 && *p == '}' && steps == NIL)
				bad_path(path, "The path has no steps.");
			if (kept == 0)
				bad_path(path, "A step is empty; quote it (\"\") to name an empty key.");
			if (pg_strcasecmp(item.data, "NULL") == 0)
				bad_path(path, "A step is NULL; quote it (\"NULL\") to name a key spelled NULL.");
		}
		steps = add_step(steps, item.data, item.len);
		if (*p == ',')
		{
			p++;
			continue;
		}
		if (*p != '}' || p[1] != '\0')
			bad_path(path, quoted ? "A quoted step must be followed by a comma or the closing brace." :
					 "The path must end with its closing brace.");
		break;
	}
	pfree(item.data);
	return steps;
}

/* A path element of idem_fingerprint's paths argument, parsed and encoded. */
static FpPath *
parse_path(const char *path)
{
	FpPath	   *fp = palloc(sizeof(FpPath));
	ListCell   *lc;

	fp->steps = NIL;
	if (path[0] == '{')
		fp->steps = parse_braced(path);
	else
	{
		const char *step = path;

		for (;;)
		{
			const char *dot = strchr(step, '.');
			int			len = dot ? (int) (dot - step) : (int) strlen(step);

			fp->steps = add_step(fp->steps, step, len);
			if (dot == NULL)
				break;
			step = dot + 1;
		}
	}
	initStringInfo(&fp->enc);
	foreach(lc, fp->steps)
	{
		PathStep   *step = lfirst(lc);

		put_framed(&fp->enc, 'k', step->name, step->len);
	}
	return fp;
}

/* What a path finds in a document. */
typedef enum PathFound
{
	PATH_VALUE,					/* the value there */
	PATH_MISSING,				/* no such key, or an index past the end */
	PATH_BLOCKED				/* a step into a scalar, or a non-number step
								 * into an array: the value that stopped it */
} PathFound;

static PathFound
find_path(JsonbContainer *root, FpPath *fp, JsonbValue *found)
{
	JsonbValue	here;
	ListCell   *lc;

	/* The document itself, as a value. */
	if (JsonContainerIsScalar(root))
	{
		if (!JsonbExtractScalar(root, &here))
			elog(ERROR, "could not read a scalar jsonb document");
	}
	else
	{
		here.type = jbvBinary;
		here.val.binary.data = root;
		here.val.binary.len = 0;
	}

	foreach(lc, fp->steps)
	{
		PathStep   *step = lfirst(lc);
		JsonbContainer *container = here.type == jbvBinary ? here.val.binary.data : NULL;
		JsonbValue *v;

		if (container != NULL && JsonContainerIsObject(container))
			v = getKeyJsonValueFromContainer(container, step->name, step->len, NULL);
		else if (container != NULL && JsonContainerIsArray(container))
		{
			char	   *end;
			long		index;

			if (step->len == 0 || !isdigit((unsigned char) step->name[0]))
			{
				*found = here;
				return PATH_BLOCKED;
			}
			errno = 0;
			index = strtol(step->name, &end, 10);
			if (end != step->name + step->len)
			{
				*found = here;
				return PATH_BLOCKED;
			}
			v = (errno != 0 || index > PG_INT32_MAX) ? NULL :
				getIthJsonbValueFromContainer(container, (uint32) index);
		}
		else
		{
			*found = here;
			return PATH_BLOCKED;
		}
		if (v == NULL)
			return PATH_MISSING;
		here = *v;
	}
	*found = here;
	return PATH_VALUE;
}

static int
compare_paths(const void *a, const void *b)
{
	const FpPath *pa = *(FpPath *const *) a;
	const FpPath *pb = *(FpPath *const *) b;
	int			cmp = memcmp(pa->enc.data, pb->enc.data, Min(pa->enc.len, pb->enc.len));

	return cmp != 0 ? cmp : (pa->enc.len > pb->enc.len) - (pa->enc.len < pb->enc.len);
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
		FpPath	  **paths;

		deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &n);
		if (n == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("paths must not be empty"),
					 errhint("Name at least one path, or pass NULL to fingerprint the whole document.")));
		paths = palloc(n * sizeof(FpPath *));
		for (int i = 0; i < n; i++)
		{
			char	   *path;

			if (elem_nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("paths must not contain null"),
						 errhint("Write each path as dotted keys, such as 'customer.id'.")));
			path = TextDatumGetCString(elems[i]);
			if (path[0] == '\0')
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("paths must not contain an empty path"),
						 errhint("Write each path as dotted keys, such as 'customer.id'.")));
			paths[i] = parse_path(path);
		}
		/* The order the caller lists paths in does not matter. */
		qsort(paths, n, sizeof(FpPath *), compare_paths);
		for (int i = 0; i < n; i++)
		{
			JsonbValue	v;

			if (i > 0 && compare_paths(&paths[i], &paths[i - 1]) == 0)
				continue;
			put_framed(&buf, 'p', paths[i]->enc.data, paths[i]->enc.len);
			switch (find_path(&payload->root, paths[i], &v))
			{
				case PATH_VALUE:
					put_value(&buf, &v);
					break;
				case PATH_MISSING:
					appendStringInfoChar(&buf, 'x');
					break;
				case PATH_BLOCKED:
					appendStringInfoChar(&buf, 'b');
					put_value(&buf, &v);
					break;
			}
		}
	}

	IdemSha256(buf.data, buf.len, digest);
	result = palloc(VARHDRSZ + sizeof(digest));
	SET_VARSIZE(result, VARHDRSZ + sizeof(digest));
	memcpy(VARDATA(result), digest, sizeof(digest));
	PG_RETURN_BYTEA_P(result);
}
