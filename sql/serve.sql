--
-- idem_serve: one request in one statement (claim, handler, stored
-- answer), the handler a function of the caller's with the caller's rights.
--
SET search_path = public;
\i sql/helpers.psql
\pset null '∅'

CREATE TABLE serve_orders (id serial PRIMARY KEY, key text, amount int);
CREATE FUNCTION place_order(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE plpgsql AS $$
DECLARE
	amount int := (convert_from(request, 'UTF8')::jsonb ->> 'amount')::int;
	id int;
BEGIN
	IF amount IS NULL THEN
		status := 400; body := convert_to('{"error": "amount"}', 'UTF8');
		content_type := 'application/json';
		RETURN;
	END IF;
	IF amount < 0 THEN
		-- A server error: not stored, and the order undone.
		INSERT INTO serve_orders (key, amount) VALUES (key, amount);
		status := 503; body := 'try again'; content_type := 'text/plain';
		RETURN;
	END IF;
	INSERT INTO serve_orders (key, amount) VALUES (key, amount) RETURNING serve_orders.id INTO id;
	status := 201;
	body := convert_to(format('{"id": %s,  "amount": %s}', id, amount), 'UTF8');
	content_type := 'application/json';
	headers := jsonb_build_object('location', '/orders/' || id);
END $$;

-- First time: the handler runs and its answer is stored; again: replayed.
SELECT outcome, status, convert_from(body, 'UTF8') AS body, content_type, headers
FROM idempotency.idem_serve('place_order(text, bytea)', 's-1', '{"amount": 7}');
SELECT outcome, status, convert_from(body, 'UTF8') AS body, content_type, headers
FROM idempotency.idem_serve('place_order(text, bytea)', 's-1', '{"amount": 7}');
SELECT key, amount FROM serve_orders ORDER BY id;

-- A client error is stored like any answer below 500.
SELECT outcome, status, convert_from(body, 'UTF8') AS body
FROM idempotency.idem_serve('place_order(text, bytea)', 's-2', '{}');
SELECT outcome, status FROM idempotency.idem_serve('place_order(text, bytea)', 's-2', '{"amount": 1}');

-- A server error: answered, not stored, its writes undone; a retry runs again.
SELECT outcome, status, convert_from(body, 'UTF8') AS body, content_type
FROM idempotency.idem_serve('place_order(text, bytea)', 's-3', '{"amount": -1}');
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-3';
SELECT count(*) AS orders FROM serve_orders WHERE key = 's-3';

-- A fingerprint: the same key with another request is a mismatch.
SELECT outcome FROM idempotency.idem_serve('place_order(text, bytea)', 's-4', '{"amount": 4}',
	fingerprint => sha256('{"amount": 4}'));
SELECT outcome, status, body FROM idempotency.idem_serve('place_order(text, bytea)', 's-4', '{"amount": 5}',
	fingerprint => sha256('{"amount": 5}'));

-- A handler that raises: the statement fails and leaves nothing.
CREATE FUNCTION failing(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('failing(text, bytea)', 's-5', 'x')$$) AS raises;
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-5';

-- A handler of another shape is refused before anything is claimed.
CREATE FUNCTION wrong(k text) RETURNS int LANGUAGE sql AS 'SELECT 1';
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('wrong(text)', 's-6', 'x')$$) AS wrong_shape;
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-6';

-- Results of other types are refused before the handler runs, so that no
-- cast of anyone's applies to them; so are a procedure and a NULL.
CREATE FUNCTION bigstatus(key text, request bytea,
	OUT status bigint, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'must not run'; END $$;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('bigstatus(text, bytea)', 's-8', 'x')$$) AS other_result_types;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve(NULL, 's-8', 'x')$$) AS null_handler;
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-8';

-- A row of other types than the handler declares (a SQL function may
-- return one: PostgreSQL leaves the check to the caller) is refused, and
-- leaves nothing; its bytes are never read as the declared types.
CREATE FUNCTION liar(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT ROW(200, 1234567::int8, 'x'::text, NULL::jsonb) $$;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('liar(text, bytea)', 's-8b', 'x')$$) AS other_row_types;
CREATE OR REPLACE FUNCTION liar(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT ROW(200, 'x'::bytea, 'x'::text, NULL::jsonb, 1) $$;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('liar(text, bytea)', 's-8b', 'x')$$) AS more_columns;
CREATE OR REPLACE FUNCTION liar(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT ROW(201, 'x'::bytea, 'text/plain'::text, NULL::jsonb) $$;
SELECT outcome, status, body FROM idempotency.idem_serve('liar(text, bytea)', 's-8c', 'x') AS same_types_in_a_row;
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-8b';
DROP FUNCTION liar(text, bytea);

-- A status outside 100 to 599, or NULL, is refused and leaves nothing.
CREATE FUNCTION odd_status(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT convert_from(request, 'UTF8')::int, NULL::bytea, NULL::text, NULL::jsonb $$;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('odd_status(text, bytea)', 's-9', '0')$$) AS status_zero;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('odd_status(text, bytea)', 's-9', '600')$$) AS status_600;
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-9';

-- A server error keeps its headers, and its answer is checked as a
-- stored one would be; a SQLSTATE the handler raises that looks like the
-- one idem_serve uses inside is the handler's error, not an answer.
CREATE FUNCTION busy(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT 503, convert_to('busy', 'UTF8'), convert_from(request, 'UTF8'), '{"retry-after": "7"}'::jsonb $$;
SELECT outcome, status, body, content_type, headers
FROM idempotency.idem_serve('busy(text, bytea)', 's-10', 'text/plain');
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('busy(text, bytea)', 's-10', E'text/plain\r\nset-cookie: a=b')$$) AS bad_type_on_5xx;
CREATE FUNCTION forger(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE plpgsql AS $$ BEGIN RAISE SQLSTATE 'IDEMS' USING MESSAGE = '200'; END $$;
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve('forger(text, bytea)', 's-11', 'x')$$), ' | ', 1) AS forged;
SELECT count(*) AS claims FROM idempotency.claims WHERE key IN ('s-10', 's-11');

-- A search_path with an operator of someone else's ahead of pg_catalog
-- reaches the handler (the caller's), never idem_serve's own body.
CREATE SCHEMA regress_serve_evil;
CREATE FUNCTION regress_serve_evil.eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'an operator of regress_serve_evil ran'; END $$;
CREATE OPERATOR regress_serve_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_serve_evil.eq);
SET search_path = regress_serve_evil, pg_catalog, public;
SELECT outcome, status FROM idempotency.idem_serve('public.busy(text, bytea)', 's-12', 'text/plain');
SELECT outcome, status FROM idempotency.idem_serve('public.place_order(text, bytea)', 's-12', '{"amount": 2}');
SELECT outcome, status FROM idempotency.idem_serve('public.place_order(text, bytea)', 's-12', '{"amount": 2}');
SET search_path = public;
DROP SCHEMA regress_serve_evil CASCADE;

-- The handler runs with the caller's rights: a caller who may not run it,
-- or not write what it writes, is refused, and nothing is claimed.
CREATE ROLE regress_serve_app IN ROLE idempotency_user;
GRANT USAGE ON SCHEMA public TO regress_serve_app;
SET ROLE regress_serve_app;
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve('place_order(text, bytea)', 's-7', '{"amount": 1}')$$), ' | ', 1) AS no_right;
RESET ROLE;
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-7';
-- The checks a call in SQL would make, made before anything is claimed:
-- USAGE on the handler's schema, EXECUTE on the handler, and EXECUTE on
-- idem_claim and idem_complete, which idem_serve calls as a client would.
CREATE SCHEMA regress_serve_hidden;
CREATE FUNCTION regress_serve_hidden.h(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT 200, request, 'text/plain', NULL::jsonb $$;
CREATE FUNCTION mine_only(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT 200, request, 'text/plain', NULL::jsonb $$;
REVOKE EXECUTE ON FUNCTION mine_only(text, bytea) FROM PUBLIC;
CREATE FUNCTION open_door(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT 200, request, 'text/plain', NULL::jsonb $$;
CREATE FUNCTION whoami(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql SECURITY DEFINER AS $$ SELECT 200, convert_to(current_user, 'UTF8'), 'text/plain', NULL::jsonb $$;
-- (by OID: a name would be refused by regprocedure's input already)
SELECT 'regress_serve_hidden.h(text, bytea)'::regprocedure::oid AS hidden \gset
SET ROLE regress_serve_app;
-- (a SECURITY DEFINER handler runs as its owner, as ever)
SELECT outcome, convert_from(body, 'UTF8') = session_user AS as_owner
FROM idempotency.idem_serve('whoami(text, bytea)', 's-16b');
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve($$ || :hidden || $$::oid::regprocedure, 's-13', 'x')$$), ' | ', 1) AS no_schema_usage;
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve('mine_only(text, bytea)', 's-13', 'x')$$), ' | ', 1) AS no_execute;
SELECT outcome, status, body FROM idempotency.idem_serve('open_door(text, bytea)', 's-13', 'x');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION idempotency.idem_complete(text, bigint, jsonb, int, text, bytea, text, jsonb) FROM idempotency_user;
CREATE SEQUENCE serve_calls;
GRANT USAGE ON SEQUENCE serve_calls TO regress_serve_app;
CREATE FUNCTION counted(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT 200, convert_to(nextval('serve_calls')::text, 'UTF8'), 'text/plain', NULL::jsonb $$;
SET ROLE regress_serve_app;
-- (refused before the handler runs: a sequence it would advance is not)
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve('counted(text, bytea)', 's-14', 'x')$$), ' | ', 1) AS no_complete;
RESET ROLE;
SELECT last_value, is_called FROM serve_calls;
DROP FUNCTION counted(text, bytea);
DROP SEQUENCE serve_calls;
SET ROLE regress_serve_app;
-- (a replay needs no completion)
SELECT outcome, status, body FROM idempotency.idem_serve('open_door(text, bytea)', 's-13', 'x');
RESET ROLE;
GRANT EXECUTE ON FUNCTION idempotency.idem_complete(text, bigint, jsonb, int, text, bytea, text, jsonb) TO idempotency_user;
REVOKE EXECUTE ON FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval) FROM idempotency_user;
SET ROLE regress_serve_app;
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve('open_door(text, bytea)', 's-13', 'x')$$), ' | ', 1) AS no_claim;
RESET ROLE;
GRANT EXECUTE ON FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval) TO idempotency_user;
-- A handler checked on a replay too, whatever the claim finds.
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve('wrong(text)', 's-13', 'x')$$), ' | ', 1) AS wrong_on_replay;
SELECT key, state, status FROM idempotency.claims WHERE key IN ('s-13', 's-14') ORDER BY key;
DROP SCHEMA regress_serve_hidden CASCADE;
DROP FUNCTION mine_only(text, bytea), whoami(text, bytea);
REVOKE USAGE ON SCHEMA public FROM regress_serve_app;
DROP ROLE regress_serve_app;

-- A STRICT handler is not called with a NULL request (the executor would
-- not call it): no answer, refused.  A call in a target list, and calls
-- for several keys in one statement, are served like any other.
CREATE FUNCTION strict_one(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE plpgsql STRICT AS $$ BEGIN status := 200; END $$;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('strict_one(text, bytea)', 's-15')$$) AS strict_null;
SELECT (idempotency.idem_serve('open_door(text, bytea)', 's-16')).outcome;
SELECT outcome FROM idempotency.idem_serve('open_door(text, bytea)', 's-16');
SELECT k, s.outcome, s.status FROM (VALUES ('s-17'), ('s-18'), ('s-17')) v(k),
	LATERAL idempotency.idem_serve('place_order(text, bytea)', v.k, '{"amount": 3}') s ORDER BY k, outcome;
-- What idem_serve keeps from statement to statement (the OIDs of
-- idem_claim and idem_complete) follows the catalogs: with the extension
-- dropped and created again in this transaction, and after the rollback.
SELECT outcome FROM idempotency.idem_serve('open_door(text, bytea)', 's-19');
BEGIN;
DROP EXTENSION idempotency;
CREATE EXTENSION idempotency;
SELECT outcome, status FROM idempotency.idem_serve('open_door(text, bytea)', 's-19');
ROLLBACK;
SELECT outcome, status FROM idempotency.idem_serve('open_door(text, bytea)', 's-19');
-- idem_claim's outcome values follow the enum's labels: with two labels
-- swapped, a new key still answers 'claimed' (to idem_claim and to
-- idem_serve, whose handler runs), and so again after the rollback.
SELECT outcome FROM idempotency.idem_claim('s-20');
BEGIN;
ALTER TYPE idempotency.idem_outcome RENAME VALUE 'claimed' TO 'regress_swap';
ALTER TYPE idempotency.idem_outcome RENAME VALUE 'completed' TO 'claimed';
ALTER TYPE idempotency.idem_outcome RENAME VALUE 'regress_swap' TO 'completed';
SELECT outcome FROM idempotency.idem_claim('s-21');
SELECT outcome, status FROM idempotency.idem_serve('place_order(text, bytea)', 's-22', '{"amount": 4}');
ROLLBACK;
SELECT outcome FROM idempotency.idem_claim('s-23');
SELECT outcome, status FROM idempotency.idem_serve('place_order(text, bytea)', 's-24', '{"amount": 5}');
SELECT outcome, status FROM idempotency.idem_serve('place_order(text, bytea)', 's-24', '{"amount": 5}');
-- A change of idem_claim_result's relation that leaves the row as it was
-- (an owner change) keeps the backend's answer instead of adding one:
-- 400 changes, each followed by new call sites of both functions.
CREATE ROLE regress_serve_owner;
DO $$
DECLARE
	before bigint;
	grown bigint;
	owner text;
BEGIN
	PERFORM * FROM idempotency.idem_serve('open_door(text, bytea)', 's-25');
	SELECT used_bytes INTO before FROM pg_backend_memory_contexts WHERE name = 'CacheMemoryContext';
	FOR i IN 1..400 LOOP
		owner := CASE WHEN i % 2 = 1 THEN 'regress_serve_owner' ELSE current_user END;
		EXECUTE format('ALTER TYPE idempotency.idem_claim_result OWNER TO %I', owner);
		EXECUTE 'SELECT idempotency.idem_claim($1)' USING 's-25';
		EXECUTE $q$SELECT * FROM idempotency.idem_serve('open_door(text, bytea)', 's-25')$q$;
	END LOOP;
	SELECT used_bytes - before INTO grown FROM pg_backend_memory_contexts WHERE name = 'CacheMemoryContext';
	RAISE NOTICE 'cache memory grew by less than 256 kB: %', grown < 262144;
END $$;
SELECT pg_catalog.pg_get_userbyid(typowner) = current_user AS owner_back
	FROM pg_type WHERE oid = 'idempotency.idem_claim_result'::regtype;
DROP ROLE regress_serve_owner;
-- In FROM, idem_serve runs as the extension's node (its one row handed
-- over, no tuple store); with the node off, and in a target list, as a
-- set of one row.  The answers are the same.
EXPLAIN (COSTS OFF) SELECT outcome, body FROM idempotency.idem_serve('open_door(text, bytea)', 's-26', 'a');
SELECT outcome, status, convert_from(body, 'UTF8') AS body, content_type
	FROM idempotency.idem_serve('open_door(text, bytea)', 's-26', 'a');
SET idempotency.call_scan = off;
EXPLAIN (COSTS OFF) SELECT outcome, body FROM idempotency.idem_serve('open_door(text, bytea)', 's-26', 'a');
SELECT outcome, status, convert_from(body, 'UTF8') AS body, content_type
	FROM idempotency.idem_serve('open_door(text, bytea)', 's-26', 'a');
RESET idempotency.call_scan;
SELECT (s).outcome, (s).status FROM (SELECT idempotency.idem_serve('open_door(text, bytea)', 's-26', 'a') s) q;
-- Its row type altered by a superuser: refused wherever it is called,
-- before a value is read with the wrong type, and nothing is served.
BEGIN;
ALTER TYPE idempotency.idem_serve_result ALTER ATTRIBUTE status TYPE text;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('open_door(text, bytea)', 's-27')$$) AS altered_from;
SET LOCAL idempotency.call_scan = off;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('open_door(text, bytea)', 's-27')$$) AS altered_scan;
SELECT pg_temp.fails($$SELECT idempotency.idem_serve('open_door(text, bytea)', 's-27')$$) AS altered_list;
SELECT count(*) AS claimed FROM idempotency.claims WHERE key = 's-27';
ROLLBACK;
-- idem_claim given a SET clause, or made SECURITY DEFINER, is called
-- through fmgr's wrapper: idem_serve still tells an owner from a replay.
BEGIN;
ALTER FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval)
	SET work_mem = '8MB';
SELECT outcome, status FROM idempotency.idem_serve('place_order(text, bytea)', 's-28', '{"amount": 6}');
SELECT outcome, status FROM idempotency.idem_serve('place_order(text, bytea)', 's-28', '{"amount": 6}');
ALTER FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval)
	RESET ALL SECURITY DEFINER;
SELECT outcome, status FROM idempotency.idem_serve('place_order(text, bytea)', 's-29', '{"amount": 7}');
SELECT key, state, status FROM idempotency.claims WHERE key IN ('s-28', 's-29') ORDER BY key;
SELECT count(*) AS orders FROM serve_orders WHERE key IN ('s-28', 's-29');
ROLLBACK;
-- What a backend keeps of a handler it called follows the handler's
-- catalog row: made SECURITY DEFINER, its schema's USAGE taken away from
-- the caller, moved to a schema the caller may not use, dropped.  The
-- handler is named by OID throughout.
CREATE ROLE regress_serve_caller IN ROLE idempotency_user;
CREATE SCHEMA regress_serve_open;
GRANT USAGE ON SCHEMA regress_serve_open TO regress_serve_caller;
CREATE FUNCTION regress_serve_open.who(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT 200, convert_to(current_user, 'UTF8'), 'text/plain', NULL::jsonb $$;
SELECT 'regress_serve_open.who(text, bytea)'::regprocedure::oid AS who \gset
SET ROLE regress_serve_caller;
SELECT outcome, convert_from(body, 'UTF8') AS ran_as
	FROM idempotency.idem_serve(:who::oid::regprocedure, 's-30');
RESET ROLE;
ALTER FUNCTION regress_serve_open.who(text, bytea) SECURITY DEFINER;
SET ROLE regress_serve_caller;
SELECT outcome, convert_from(body, 'UTF8') = session_user AS ran_as_owner
	FROM idempotency.idem_serve(:who::oid::regprocedure, 's-31');
RESET ROLE;
REVOKE USAGE ON SCHEMA regress_serve_open FROM regress_serve_caller;
SET ROLE regress_serve_caller;
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve($$ || :who || $$::oid::regprocedure, 's-32')$$), ' | ', 1) AS usage_revoked;
RESET ROLE;
GRANT USAGE ON SCHEMA regress_serve_open TO regress_serve_caller;
CREATE SCHEMA regress_serve_closed;
ALTER FUNCTION regress_serve_open.who(text, bytea) SET SCHEMA regress_serve_closed;
SET ROLE regress_serve_caller;
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve($$ || :who || $$::oid::regprocedure, 's-32')$$), ' | ', 1) AS moved;
RESET ROLE;
DROP FUNCTION regress_serve_closed.who(text, bytea);
SELECT regexp_replace(split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve($$ || :who || $$::oid::regprocedure, 's-32')$$), ' | ', 1), 'handler [0-9]+', 'handler N') AS dropped;
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve(0::oid::regprocedure, 's-32')$$), ' | ', 1) AS no_function;
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-32';
DROP SCHEMA regress_serve_open, regress_serve_closed;
DROP ROLE regress_serve_caller;
-- One statement switching between two SQL handlers keeps one call of
-- each (its plans built once), rather than building a handler's again at
-- every switch: the memory in use grows by less than 4 MB over 1,000
-- calls (by about 29 kB a switch before).
CREATE FUNCTION say_a(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT 200, 'a'::bytea, 'text/plain', NULL::jsonb $$;
CREATE FUNCTION say_b(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE sql AS $$ SELECT 200, 'b'::bytea, 'text/plain', NULL::jsonb $$;
-- (the backend's resident memory, in kB: not all of what a SQL function
-- builds shows in pg_backend_memory_contexts)
CREATE FUNCTION memory_in_use() RETURNS bigint LANGUAGE sql VOLATILE
	AS $$ SELECT substring(pg_read_file('/proc/self/status') FROM 'VmRSS:\s*(\d+)')::bigint $$;
SELECT max(used) - min(used) < 4096 AS little_growth, count(*) AS rows,
	count(*) FILTER (WHERE body = 'a') AS a, count(*) FILTER (WHERE body = 'b') AS b
FROM (SELECT s.body, CASE WHEN g IN (100, 1000) THEN memory_in_use() END AS used
	FROM generate_series(1, 1000) g,
		LATERAL idempotency.idem_serve(CASE WHEN g % 2 = 0 THEN 'say_a(text, bytea)'
			ELSE 'say_b(text, bytea)' END::regprocedure, 's-40-' || g) s) q;
DROP FUNCTION say_a(text, bytea), say_b(text, bytea), memory_in_use();
DROP FUNCTION strict_one(text, bytea), open_door(text, bytea);
-- What a handler sets ends with it: a setting made local or for the
-- session, or a role, is undone when it returns, so that the next call in
-- the same transaction (a client's group commit) or session starts from
-- the caller's, and the completion runs as the caller.
CREATE ROLE regress_serve_other;
GRANT regress_serve_other TO CURRENT_USER;
CREATE FUNCTION settles(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE plpgsql AS $$
BEGIN
	body := convert_to(concat_ws(' ', coalesce(nullif(current_setting('app.user', true), ''), '-'),
		current_setting('work_mem'), current_user = 'regress_serve_other'), 'UTF8');
	PERFORM set_config('app.user', key, true);
	PERFORM set_config('work_mem', '1234kB', false);
	SET LOCAL ROLE regress_serve_other;
	status := 200;
END $$;
BEGIN;
SET LOCAL work_mem = '2MB';
SELECT a.n, convert_from(s.body, 'UTF8') AS seen
FROM unnest(ARRAY['s-41-a', 's-41-b', 's-41-c']) WITH ORDINALITY AS a(k, n),
	LATERAL idempotency.idem_serve('settles(text, bytea)', a.k) s ORDER BY a.n;
SELECT coalesce(nullif(current_setting('app.user', true), ''), '-') AS app_user,
	current_setting('work_mem') AS work_mem, current_user = session_user AS caller;
COMMIT;
SELECT count(*) AS completed FROM idempotency.claims WHERE key LIKE 's-41-%' AND state = 'completed';
DROP FUNCTION settles(text, bytea);
DROP ROLE regress_serve_other;

DROP FUNCTION place_order(text, bytea), failing(text, bytea), wrong(text), bigstatus(text, bytea),
	odd_status(text, bytea), busy(text, bytea), forger(text, bytea);
DROP TABLE serve_orders;
DELETE FROM idempotency.claims WHERE key LIKE 's-%';
