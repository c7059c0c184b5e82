--
-- A call of idem_claim or idem_transition in FROM runs as a custom scan
-- (call_scan.c) instead of a function scan.  Each query below runs both
-- ways (idempotency.call_scan on and off), in a transaction rolled back
-- afterwards, and the two must agree: the rows, and how many times the
-- function was called (track_functions counts both ways).
--
SET search_path = idempotency, public;
\i sql/helpers.psql
\pset null '∅'
SET track_functions = 'all';

-- One key completed, to be replayed.
SELECT token AS t FROM idem_claim('cs-done', '1 hour') \gset
SELECT idem_complete('cs-done', :t, '{"id": 7}', 201) AS completed;

-- Runs a query with the node on, then off, each in a subtransaction that is
-- rolled back; returns the plan's top node, the rows, and the calls.
CREATE FUNCTION pg_temp.both_ways(q text) RETURNS TABLE (mode text, node text, calls bigint, result text)
LANGUAGE plpgsql AS $$
DECLARE
	plan json;
	before bigint;
	r text;
BEGIN
	FOREACH mode IN ARRAY ARRAY['on', 'off'] LOOP
		BEGIN
			PERFORM set_config('idempotency.call_scan', mode, true);
			EXECUTE 'EXPLAIN (FORMAT JSON, COSTS OFF) ' || q INTO plan;
			node := (SELECT string_agg(DISTINCT n, ', ' ORDER BY n)
					 FROM regexp_matches(plan::text, '"(Function Scan|Custom Scan)"', 'g') m(a),
						  LATERAL unnest(a) n);
			before := coalesce(pg_stat_get_xact_function_calls('idem_claim(text,interval,bytea,text,interval,boolean,interval)'::regprocedure), 0);
			EXECUTE 'SELECT string_agg(x::text, '' | '') FROM (' || q || ') x' INTO r;
			calls := coalesce(pg_stat_get_xact_function_calls('idem_claim(text,interval,bytea,text,interval,boolean,interval)'::regprocedure), 0) - before;
			result := r;
			RETURN NEXT;
			RAISE EXCEPTION 'roll back' USING ERRCODE = 'P0001';
		EXCEPTION WHEN raise_exception THEN
			NULL;
		END;
	END LOOP;
END $$;

-- The form applications use: a replay, a new key, expressions and filters.
SELECT * FROM pg_temp.both_ways($$SELECT outcome, response, status FROM idem_claim('cs-done', '1 hour')$$);
SELECT * FROM pg_temp.both_ways($$SELECT outcome, token IS NOT NULL AS has_token, attempts FROM idem_claim('cs-new', '1 hour')$$);
SELECT * FROM pg_temp.both_ways($$SELECT status + 1 AS s, outcome::text || '!' AS o FROM idem_claim('cs-done', '1 hour') WHERE status = 201$$);
SELECT * FROM pg_temp.both_ways($$SELECT status FROM idem_claim('cs-done', '1 hour') WHERE status = 500$$);
SELECT * FROM pg_temp.both_ways($$SELECT outcome, token, response, status, recovery_point, attempts, body, content_type, headers FROM idem_claim('cs-done', '1 hour', scope => 'default', wait => false)$$);
SELECT * FROM pg_temp.both_ways($$SELECT c.outcome FROM idem_claim('cs-done', '1 hour') AS c(outcome, tok)$$);

-- Joined with other rows: called once, whichever side the call is on.
SELECT * FROM pg_temp.both_ways($$SELECT g, c.outcome, c.status FROM generate_series(1, 3) g, idem_claim('cs-done', '1 hour') c ORDER BY g$$);
SELECT * FROM pg_temp.both_ways($$SELECT g, c.outcome FROM generate_series(1, 3) g JOIN idem_claim('cs-once', '1 hour') c ON c.attempts <= g ORDER BY g$$);
SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_material = off;
SELECT * FROM pg_temp.both_ways($$SELECT g, c.outcome FROM (VALUES (1), (2), (3)) v(g) JOIN idem_claim('cs-inner', '1 hour') c ON c.attempts <= v.g ORDER BY g$$);
-- A correlated condition that does not reach the arguments: still once.
SELECT * FROM pg_temp.both_ways($$SELECT g FROM generate_series(1, 3) g WHERE EXISTS (SELECT 1 FROM idem_claim('cs-corr', '1 hour') c WHERE c.attempts = g)$$);
-- A subquery run again for each row, its condition reading the row: the
-- call's arguments do not change, so it is not called again.
SELECT * FROM pg_temp.both_ways($$SELECT g, (SELECT c.attempts FROM idem_claim('cs-sub', '1 hour') c WHERE c.attempts <> g) AS a FROM generate_series(1, 3) g ORDER BY g$$);
RESET enable_hashjoin; RESET enable_mergejoin; RESET enable_material;
-- Arguments from each row (LATERAL): called once per row.
SELECT * FROM pg_temp.both_ways($$SELECT g, c.outcome FROM generate_series(1, 3) g, LATERAL idem_claim('cs-lat-' || g, '1 hour') c ORDER BY g$$);
SELECT * FROM pg_temp.both_ways($$SELECT g, c.outcome FROM generate_series(1, 3) g, LATERAL idem_claim('cs-lat-' || (g % 2), '1 hour') c ORDER BY g$$);
-- A join condition on both sides, checked at the call (a parameterized scan).
SELECT * FROM pg_temp.both_ways($$SELECT g, c.outcome FROM generate_series(1, 2) g, LATERAL idem_claim('cs-done' || left(g::text, 0), '1 hour') c WHERE c.attempts = g$$);

-- A subquery that is not correlated runs once, before (an init plan).
SELECT * FROM pg_temp.both_ways($$SELECT outcome FROM idem_claim((SELECT 'cs-done'), '1 hour')$$);

-- Where the node does not apply, the function scan stays: the whole row,
-- ORDINALITY, a correlated subquery in the arguments, row marks, an
-- UPDATE's FROM.
SELECT * FROM pg_temp.both_ways($$SELECT c.outcome, c IS NOT NULL AS whole FROM idem_claim('cs-done', '1 hour') c$$);
SELECT * FROM pg_temp.both_ways($$SELECT outcome, n FROM idem_claim('cs-done', '1 hour') WITH ORDINALITY AS c(outcome, tok, r, s, rp, a, e, b, ct, h, n)$$);
SELECT * FROM pg_temp.both_ways($$SELECT g, c.outcome FROM generate_series(1, 2) g, LATERAL idem_claim((SELECT 'cs-sub-' || g), '1 hour') c ORDER BY g$$);
SELECT * FROM pg_temp.both_ways($$SELECT c.outcome FROM idem_claim('cs-done', '1 hour') c, pg_class r WHERE r.relname = 'claims' FOR SHARE OF r$$);
CREATE TEMP TABLE cs_t (id int PRIMARY KEY, status int);
INSERT INTO cs_t VALUES (1, 0);
SET idempotency.call_scan = on;
EXPLAIN (COSTS OFF) UPDATE cs_t SET status = c.status FROM idem_claim('cs-done', '1 hour') c WHERE cs_t.id = 1;
UPDATE cs_t SET status = c.status FROM idem_claim('cs-done', '1 hour') c WHERE cs_t.id = 1 RETURNING cs_t.status;
-- INSERT from a call in FROM (no rows are locked, so the node runs).
EXPLAIN (COSTS OFF) INSERT INTO cs_t SELECT 2, status FROM idem_claim('cs-done', '1 hour');
INSERT INTO cs_t SELECT 2, status FROM idem_claim('cs-done', '1 hour') RETURNING *;

-- EXPLAIN names the call.
EXPLAIN (VERBOSE, COSTS OFF) SELECT outcome, response, status FROM idem_claim('cs-done', '1 hour');
EXPLAIN (COSTS OFF) SELECT outcome FROM idem_claim('cs-done', '1 hour');

-- A scrollable cursor reads the one row back and forth; one call.
SELECT coalesce(pg_stat_get_xact_function_calls('idem_claim(text,interval,bytea,text,interval,boolean,interval)'::regprocedure), 0) AS calls0 \gset
BEGIN;
DECLARE cs_cur SCROLL CURSOR FOR SELECT outcome, status FROM idem_claim('cs-scroll', '1 hour');
FETCH NEXT cs_cur;
FETCH PRIOR cs_cur;
FETCH ABSOLUTE 1 cs_cur;
FETCH NEXT cs_cur;
FETCH PRIOR cs_cur;
SELECT pg_stat_get_xact_function_calls('idem_claim(text,interval,bytea,text,interval,boolean,interval)'::regprocedure) - :calls0 AS calls;
COMMIT;
-- A cursor without SCROLL may still go back over a plan that can, as over
-- a function scan.
BEGIN;
DECLARE cs_cur2 CURSOR FOR SELECT outcome, status FROM idem_claim('cs-done', '1 hour');
FETCH NEXT cs_cur2;
FETCH BACKWARD 1 FROM cs_cur2;
FETCH NEXT cs_cur2;
COMMIT;

-- A row a condition turned away is passed over, as a scan passes it: read
-- backward, the condition is asked again.
SELECT token AS t FROM idem_claim('cs-done2', '1 hour') \gset
SELECT idem_complete('cs-done2', :t, '{"id": 8}', 202) AS completed;
CREATE TEMP SEQUENCE cs_flip;
CREATE FUNCTION pg_temp.flip() RETURNS boolean LANGUAGE sql VOLATILE AS $$SELECT nextval('cs_flip') % 2 = 0$$;
\set flip_reads 'BEGIN; DECLARE cs_u SCROLL CURSOR FOR SELECT status FROM idem_claim(''cs-done'', ''1 hour'') UNION ALL SELECT status FROM idem_claim(''cs-done2'', ''1 hour'') WHERE pg_temp.flip() UNION ALL SELECT status FROM idem_claim(''cs-done2'', ''1 hour''); FETCH ALL cs_u; FETCH BACKWARD ALL cs_u; FETCH ALL cs_u; COMMIT; SELECT currval(''cs_flip'') AS conditions_asked;'
SET idempotency.call_scan = on;
:flip_reads
ALTER SEQUENCE cs_flip RESTART;
SET idempotency.call_scan = off;
:flip_reads
RESET idempotency.call_scan;

-- idem_transition in FROM runs as the node too.
SELECT idem_machine('cs_order', 'new->paid') \g /dev/null
CREATE TABLE cs_orders (id bigint PRIMARY KEY, state text NOT NULL, version int NOT NULL DEFAULT 0);
SELECT idem_guard('cs_orders', machine => 'cs_order', version_column => 'version') \g /dev/null
INSERT INTO cs_orders VALUES (1, 'new');
EXPLAIN (COSTS OFF) SELECT outcome, state FROM idem_transition('cs_orders', 1, 'paid');
SELECT outcome, state, version FROM idem_transition('cs_orders', 1, 'paid');
SELECT outcome, state, version FROM idem_transition('cs_orders', 1, 'paid');

-- Rights are checked at every execution, as for a function scan: a plan
-- made by a caller who may run idem_claim does not run for one who may not.
CREATE ROLE cs_nobody;
GRANT USAGE ON SCHEMA idempotency TO cs_nobody;
PREPARE cs_p AS SELECT outcome, status FROM idem_claim('cs-done', '1 hour');
EXECUTE cs_p;
SET ROLE cs_nobody;
SELECT pg_temp.fails('EXECUTE cs_p') AS not_allowed;
RESET ROLE;

-- A result type changed under a kept plan is refused, not misread (here
-- by the function, which checks the type it fills before it runs).
BEGIN;
SET LOCAL idempotency.call_scan = on;
PREPARE cs_q AS SELECT outcome, status FROM idem_claim('cs-done', '1 hour');
EXECUTE cs_q;
ALTER TYPE idem_claim_result ALTER ATTRIBUTE status TYPE bigint;
SELECT pg_temp.fails('EXECUTE cs_q') AS retyped;
ROLLBACK;
-- A change the function accepts (a typmod) but the kept plan does not: the
-- node refuses it before the call does anything (a claim would be rolled
-- back with the statement, but not the counters or the token sequence).
BEGIN;
SET LOCAL idempotency.call_scan = on;
PREPARE cs_t AS SELECT outcome, expires_at FROM idem_claim('cs-t' || random(), '1 hour');
EXECUTE cs_t \g /dev/null
SELECT claims_claimed AS claimed_before FROM stats \gset
ALTER TYPE idem_claim_result ALTER ATTRIBUTE expires_at TYPE timestamptz(0);
SELECT pg_temp.fails('EXECUTE cs_t') AS retyped_typmod;
SELECT claims_claimed - :claimed_before AS claimed_meanwhile FROM stats;
ROLLBACK;
DEALLOCATE cs_t;
-- An attribute added: the columns the plan reads are still there, and the
-- function itself refuses the altered type.
BEGIN;
PREPARE cs_r AS SELECT outcome, status FROM idem_claim('cs-done', '1 hour');
EXECUTE cs_r;
ALTER TYPE idem_claim_result ADD ATTRIBUTE extra int;
SELECT pg_temp.fails('EXECUTE cs_r') AS added;
ROLLBACK;
-- The type changed in the middle of a statement, between two calls: the
-- node refuses the row rather than read it with the old type (a function
-- scan errors too on PostgreSQL 15, and reads on where the new type is
-- binary-compatible on 17 and 18).
CREATE FUNCTION pg_temp.retype_at(i bigint) RETURNS bigint LANGUAGE plpgsql AS $f$
BEGIN
	IF i = 2 THEN
		EXECUTE 'ALTER TYPE idempotency.idem_transition_result ALTER ATTRIBUTE state TYPE varchar';
	END IF;
	RETURN 1;
END $f$;
BEGIN;
SET LOCAL idempotency.call_scan = on;
SELECT pg_temp.fails($q$SELECT g, c.outcome, c.state FROM generate_series(1, 3) g, LATERAL idempotency.idem_transition('cs_orders', pg_temp.retype_at(g), 'paid') c$q$) AS retyped_midway;
ROLLBACK;

DEALLOCATE ALL;
DROP TABLE cs_orders;
REVOKE USAGE ON SCHEMA idempotency FROM cs_nobody;
DROP ROLE cs_nobody;
DELETE FROM claims WHERE key LIKE 'cs-%';
