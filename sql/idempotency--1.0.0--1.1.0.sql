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
-- OUT content_type text, OUT headers jsonb).  An answer of status 500 or
-- more is not stored, and what the handler wrote is undone with the claim,
-- so that a retry runs again.  No search_path is pinned, so that the
-- handler runs under the caller's; every object and operator of the body
-- is named with its schema, and the handler's result types are checked
-- before it runs, so that no cast or operator of anyone else's is applied
-- to what it returns.
CREATE FUNCTION idempotency.idem_serve(
	handler regprocedure,
	key text,
	request bytea DEFAULT NULL,
	fingerprint bytea DEFAULT NULL,
	scope text DEFAULT 'default',
	ttl interval DEFAULT NULL,
	wait_for interval DEFAULT NULL)
RETURNS TABLE (outcome idempotency.idem_outcome, status int, body bytea,
	content_type text, headers jsonb)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $serve$
DECLARE
	c idempotency.idem_claim_result;
	fn pg_catalog.text;
	r record;
	-- A server error's answer: kept across the rollback that undoes it.
	failed pg_catalog.bool := false;
	f_outcome idempotency.idem_outcome;
	f_status pg_catalog.int4;
	f_body pg_catalog.bytea;
	f_type pg_catalog.text;
	f_headers pg_catalog.jsonb;
BEGIN
	IF handler IS NULL THEN
		RAISE SQLSTATE '22004' USING MESSAGE = 'handler must not be null',
			HINT = 'Pass the handler as a regprocedure, such as ''place_order(text, bytea)''.';
	END IF;
	SELECT pg_catalog.format('%I.%I', n.nspname, p.proname) INTO fn
	FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
	WHERE p.oid OPERATOR(pg_catalog.=) handler
	AND p.prokind OPERATOR(pg_catalog.=) 'f' AND NOT p.proretset
	AND p.proallargtypes OPERATOR(pg_catalog.=) ARRAY[
		'pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.bytea'::pg_catalog.regtype,
		'pg_catalog.int4'::pg_catalog.regtype, 'pg_catalog.bytea'::pg_catalog.regtype,
		'pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.jsonb'::pg_catalog.regtype]::pg_catalog.oid[]
	AND p.proargmodes OPERATOR(pg_catalog.=) ARRAY['i', 'i', 'o', 'o', 'o', 'o']::pg_catalog."char"[];
	IF fn IS NULL THEN
		RAISE SQLSTATE '42883' USING MESSAGE = pg_catalog.format('handler %s is not a function of the form idem_serve calls', handler),
			DETAIL = 'It must be a plain function (key text, request bytea, OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb).',
			HINT = 'Declare it with those arguments and OUT parameters, in that order.';
	END IF;
	BEGIN
		SELECT * INTO STRICT c FROM idempotency.idem_claim(key, ttl, fingerprint, scope,
			wait => wait_for IS NOT NULL, wait_for => wait_for);
		IF c.outcome OPERATOR(pg_catalog.<>) ALL (ARRAY['claimed', 'reclaimed']::idempotency.idem_outcome[]) THEN
			RETURN QUERY SELECT c.outcome, c.status, c.body, c.content_type, c.headers;
			RETURN;
		END IF;
		EXECUTE pg_catalog.format('SELECT status, body, content_type, headers FROM %s($1, $2)', fn)
			INTO STRICT r USING key, request;
		IF r.status IS NULL OR r.status OPERATOR(pg_catalog.<) 100 OR r.status OPERATOR(pg_catalog.>) 599 THEN
			RAISE SQLSTATE '22023' USING MESSAGE = pg_catalog.format('handler %s returned status %s', handler, COALESCE(r.status::pg_catalog.text, 'NULL')),
				HINT = 'Return an HTTP status, 100 to 599.';
		END IF;
		-- The answer is checked (and, below 500, stored) by idem_complete.
		PERFORM idempotency.idem_complete(key, c.token, NULL, r.status, scope,
			r.body, r.content_type, r.headers);
		IF r.status OPERATOR(pg_catalog.>=) 500 THEN
			failed := true;
			f_outcome := c.outcome;
			f_status := r.status;
			f_body := r.body;
			f_type := r.content_type;
			f_headers := r.headers;
			RAISE SQLSTATE 'IDEMS' USING MESSAGE = 'server error answer: undone';
		END IF;
		RETURN QUERY SELECT c.outcome, r.status, r.body, r.content_type, r.headers;
	EXCEPTION WHEN SQLSTATE 'IDEMS' THEN
		IF NOT failed THEN
			RAISE;				-- the handler's own, not ours
		END IF;
		-- A server error: the claim, the completion and the handler's
		-- writes are undone; the answer is given, not stored.
		RETURN QUERY SELECT f_outcome, f_status, f_body, f_type, f_headers;
	END;
END
$serve$;
COMMENT ON FUNCTION idempotency.idem_serve(regprocedure, text, bytea, bytea, text, interval, interval) IS
	'one request in one statement: claim the key, run handler(key, request) with the caller''s rights, store its answer (status below 500); replays, in_progress and mismatch as idem_claim';
REVOKE ALL ON FUNCTION idempotency.idem_serve(regprocedure, text, bytea, bytea, text, interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_serve(regprocedure, text, bytea, bytea, text, interval, interval) TO idempotency_user;
