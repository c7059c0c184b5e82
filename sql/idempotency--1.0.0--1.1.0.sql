/* idempotency--1.0.0--1.1.0.sql: from the first release to 1.1.0 */

\echo Use "ALTER EXTENSION idempotency UPDATE TO '1.1.0'" to load this file. \quit

-- Preloading: whether the server preloads the library.
CREATE FUNCTION idempotency.idem_preloaded()
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_preloaded'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.idem_preloaded() IS
	'whether the server preloads the library (shared_preload_libraries), which snowflake IDs, the counters and the purge worker need';

-- Stored responses as bytes: the body as the client sent it, its content
-- type and the headers to replay, beside response jsonb for SQL callers.
ALTER TABLE idempotency.claims
	ADD COLUMN body bytea,
	ADD COLUMN content_type text,
	ADD COLUMN headers jsonb;
COMMENT ON COLUMN idempotency.claims.body IS 'stored response body as the client sent it, replayed byte for byte';
COMMENT ON COLUMN idempotency.claims.content_type IS 'content type of the stored body';
COMMENT ON COLUMN idempotency.claims.headers IS 'response headers kept with the body: a JSON object of strings or arrays of strings';
ALTER TYPE idempotency.idem_claim_result
	ADD ATTRIBUTE body bytea,
	ADD ATTRIBUTE content_type text,
	ADD ATTRIBUTE headers jsonb;

-- The functions dropped below lose the grants made on them directly;
-- idempotency_user is granted them again, any other role is named here.
DO $grants$
DECLARE
	g record;
BEGIN
	FOR g IN
		SELECT p.oid::pg_catalog.regprocedure AS fn,
			CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
				ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END AS grantee
		FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
		WHERE p.oid OPERATOR(pg_catalog.=) ANY (ARRAY[
			'idempotency.idem_claim(text, interval, bytea, text, interval, boolean)'::pg_catalog.regprocedure,
			'idempotency.idem_complete(text, bigint, jsonb, integer, text)'::pg_catalog.regprocedure,
			'idempotency.idem_fail(text, bigint, boolean, jsonb, integer, text)'::pg_catalog.regprocedure]::pg_catalog.oid[])
		AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
		AND (a.grantee OPERATOR(pg_catalog.=) 0
			OR pg_catalog.pg_get_userbyid(a.grantee) OPERATOR(pg_catalog.<>) 'idempotency_user')
	LOOP
		RAISE WARNING '% loses its EXECUTE grant on %', g.grantee, g.fn
			USING DETAIL = 'The update recreates the function with new arguments.',
				  HINT = 'Grant it again after the update, or grant the role idempotency_user.';
	END LOOP;
END
$grants$;

-- idem_complete and idem_fail take the body, its content type and the
-- headers after the scope (and idem_complete's response and status may be
-- left out).  A function's arguments cannot be added in place: the old
-- declarations go, with their grants, and the new ones are granted again.
DROP FUNCTION idempotency.idem_complete(text, bigint, jsonb, int, text);
DROP FUNCTION idempotency.idem_fail(text, bigint, boolean, jsonb, int, text);
CREATE FUNCTION idempotency.idem_complete(
	key text, token bigint, response jsonb DEFAULT NULL, status int DEFAULT NULL,
	scope text DEFAULT 'default',
	body bytea DEFAULT NULL, content_type text DEFAULT NULL, headers jsonb DEFAULT NULL)
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_complete'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_complete(text, bigint, jsonb, int, text, bytea, text, jsonb) IS
	'store the response of a claim (a jsonb response, or a body as bytes with its content type and headers); true if completed now, false if this token had already completed it';
REVOKE ALL ON FUNCTION idempotency.idem_complete(text, bigint, jsonb, int, text, bytea, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_complete(text, bigint, jsonb, int, text, bytea, text, jsonb) TO idempotency_user;

CREATE FUNCTION idempotency.idem_fail(
	key text, token bigint, retryable boolean,
	response jsonb DEFAULT NULL, status int DEFAULT NULL, scope text DEFAULT 'default',
	body bytea DEFAULT NULL, content_type text DEFAULT NULL, headers jsonb DEFAULT NULL)
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_fail'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_fail(text, bigint, boolean, jsonb, int, text, bytea, text, jsonb) IS
	'record a failed attempt: retryable frees the key for the next caller (reclaimed), otherwise the response is replayed like a completion';
REVOKE ALL ON FUNCTION idempotency.idem_fail(text, bigint, boolean, jsonb, int, text, bytea, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_fail(text, bigint, boolean, jsonb, int, text, bytea, text, jsonb) TO idempotency_user;

-- idem_claim's wait_for: a duplicate waits, up to that long, for the claim
-- in progress to end, woken when it does.
DROP FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean);
CREATE FUNCTION idempotency.idem_claim(
	key text,
	ttl interval DEFAULT NULL,
	fingerprint bytea DEFAULT NULL,
	scope text DEFAULT 'default',
	lease interval DEFAULT NULL,
	wait boolean DEFAULT true,
	wait_for interval DEFAULT NULL)
RETURNS idempotency.idem_claim_result
	AS 'MODULE_PATHNAME', 'idem_claim'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval) IS
	'claim an idempotency key: claimed, completed (replay), in_progress, mismatch or reclaimed; ttl and lease default to the scope''s policy; wait_for waits up to that long for a claim in progress to end';
REVOKE ALL ON FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval) TO idempotency_user;

-- One request in one statement: claim the key, run the handler, store its
-- answer, in the caller's transaction (or the statement's own), with the
-- caller's rights.  The handler is a function of the caller's:
-- handler(key text, request bytea, OUT status int, OUT body bytea,
-- OUT content_type text, OUT headers jsonb), checked in its catalog row
-- before it runs, so that no cast of anyone else's applies to its result;
-- it runs under the caller's search_path.  An answer of status 500 or more
-- is not stored, and what the handler wrote is undone with the claim, so
-- that a retry runs again (src/serve.c).
CREATE TYPE idempotency.idem_serve_result AS (
	outcome idempotency.idem_outcome,
	status int,
	body bytea,
	content_type text,
	headers jsonb
);
COMMENT ON TYPE idempotency.idem_serve_result IS 'result of idem_serve: the outcome and the answer';

CREATE FUNCTION idempotency.idem_serve(
	handler regprocedure,
	key text,
	request bytea DEFAULT NULL,
	fingerprint bytea DEFAULT NULL,
	scope text DEFAULT 'default',
	ttl interval DEFAULT NULL,
	wait_for interval DEFAULT NULL)
RETURNS SETOF idempotency.idem_serve_result
	AS 'MODULE_PATHNAME', 'idem_serve'
	LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1;
COMMENT ON FUNCTION idempotency.idem_serve(regprocedure, text, bytea, bytea, text, interval, interval) IS
	'one request in one statement: claim the key, run handler(key, request) with the caller''s rights, store its answer (status below 500); replays, in_progress and mismatch as idem_claim';
REVOKE ALL ON FUNCTION idempotency.idem_serve(regprocedure, text, bytea, bytea, text, interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_serve(regprocedure, text, bytea, bytea, text, interval, interval) TO idempotency_user;
