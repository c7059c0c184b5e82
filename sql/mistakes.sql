--
-- Mistakes that would otherwise succeed quietly: a misspelt scope
-- (idempotency.require_policy), a lifetime passed as a token's scope, a
-- transition to a state the machine does not have, a row-valued call
-- spread over its columns, and whether the library is preloaded.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

-- The test cluster preloads the library.
SELECT idem_preloaded() AS preloaded;

-- A misspelt scope: used with the defaults while require_policy is off,
-- refused once it is on.  "default" needs no row; a scope with a row is
-- used; every function that takes a scope checks.
INSERT INTO policies (scope) VALUES ('checkout');
SELECT outcome FROM idem_claim('m-1', scope => 'chekout');
SET idempotency.require_policy = on;
SELECT pg_temp.fails($$SELECT * FROM idem_claim('m-2', scope => 'chekout')$$) AS claim_unlisted;
SELECT pg_temp.fails($$SELECT idem_lookup('m-1', 'chekout')$$) AS lookup_unlisted;
SELECT pg_temp.fails($$SELECT idem_token_issue('chekout')$$) AS token_unlisted;
SELECT pg_temp.fails($$SELECT idem_try_lock('x', 'chekout')$$) AS lock_unlisted;
SELECT pg_temp.fails($$SELECT idem_try_lock('x', repeat('s', 300))$$) AS lock_scope_too_long_for_a_policy;
SELECT pg_temp.fails($$SELECT idem_lease_acquire('job', 'me', '1 minute', 'chekout')$$) AS lease_unlisted;
SELECT pg_temp.fails($$SELECT * FROM idem_claim('m-2', scope => 'o''brien')$$) AS quoted_in_hint;
SELECT outcome FROM idem_claim('m-2', scope => 'checkout');
SELECT outcome FROM idem_claim('m-3');
SELECT idem_token_issue() IS NOT NULL AS default_scope_token;
-- Only a superuser (or a role granted SET on it) changes the setting.
CREATE ROLE regress_mistaken IN ROLE idempotency_user;
SET ROLE regress_mistaken;
SELECT pg_temp.fails($$SET idempotency.require_policy = off$$) AS app_cannot_switch_off;
RESET ROLE;
RESET idempotency.require_policy;

-- A lifetime where the scope goes: refused, with the call to make.
SELECT pg_temp.fails($$SELECT idem_token_issue('1 hour')$$) AS lifetime_as_scope;
SELECT pg_temp.fails($$SELECT idem_token_issue('90 minutes')$$) AS minutes_as_scope;
SELECT pg_temp.fails($$SELECT idem_token_issue('01:30')$$) AS time_of_day_as_scope;
SELECT pg_temp.fails($$SELECT idem_token_issue('PT1H')$$) AS iso_as_scope;
-- A number, or a name that is no interval, is a scope as before.
SELECT length(idem_token_issue('42')) AS numeric_scope, length(idem_token_issue('2026')) AS year_scope,
       length(idem_token_issue('tenant-7')) AS named_scope;
SELECT length(idem_token_issue(ttl => '1 hour')) AS by_name;
SELECT length(idem_token_issue('email', '1 hour')) AS scope_first;
-- A scope that reads as an interval but has a row is what it says.
INSERT INTO policies (scope) VALUES ('1 day');
SELECT length(idem_token_issue('1 day')) AS listed_scope;

-- A transition to a state the machine lacks is an error naming its states,
-- before the row is looked at; a known state that the row cannot reach is
-- still an outcome.
SELECT idem_machine('order', 'new->paid', 'paid->shipped', 'new->cancelled') \g /dev/null
CREATE TABLE orders (id bigint PRIMARY KEY, state text NOT NULL, version int NOT NULL DEFAULT 0);
SELECT idem_guard('orders', machine => 'order', version_column => 'version') \g /dev/null
INSERT INTO orders (id, state) VALUES (1, 'new');
SELECT pg_temp.fails($$SELECT * FROM idem_transition('orders', 1, 'payed')$$) AS unknown_state;
SELECT pg_temp.fails($$SELECT * FROM idem_transition('orders', 404, 'payed')$$) AS unknown_state_missing_row;
SELECT pg_temp.fails($$SELECT * FROM idem_transition('orders', 1, repeat('x', 100))$$) AS long_unknown_state_cut;
SELECT outcome, state FROM idem_transition('orders', 1, 'shipped');
SELECT state, version FROM orders;

-- SELECT (f(x)).* calls f once per column.  idem_claim answers every copy
-- of one call alike: the claim's token is there, and idem_complete takes it.
BEGIN;
SELECT (idem_claim('spread-1')).* \gset spread_
SELECT :'spread_outcome' AS outcome, :'spread_token' <> '' AS has_token,
       :'spread_attempts' AS attempts;
SELECT idem_complete('spread-1', :spread_token, '{"ok": true}', 200);
COMMIT;
SELECT (idem_claim('spread-1')).outcome, (idem_claim('spread-1')).response;
-- Spelled out twice in one row, the same call answers once too.
SELECT (idem_claim('spread-2')).outcome AS first, (idem_claim('spread-2')).token IS NOT NULL AS second_has_token;
-- A different key, or another row, is another call.
SELECT k, (idem_claim(k)).outcome FROM (VALUES ('spread-3'), ('spread-3'), ('spread-4')) v(k);
-- Per row: a second row's call of the same key is a second call.
SELECT i, (c).outcome, (c).token IS NOT NULL AS has_token
FROM generate_series(1, 2) i, LATERAL (SELECT idem_claim('spread-5') c WHERE i > 0 OFFSET 0) s;
-- Calls from one call site in a loop run every time: a poll sees changes.
DO $$
DECLARE
	r idem_claim_result;
	outcomes text := '';
BEGIN
	FOR i IN 1..3 LOOP
		r := idem_claim('spread-6', wait => false);
		outcomes := outcomes || r.outcome || ' ';
		IF r.token IS NOT NULL THEN
			PERFORM idem_complete('spread-6', r.token, '{}', 200);
		END IF;
	END LOOP;
	RAISE NOTICE 'loop: %', outcomes;
END $$;
-- Two statements of a function are two calls.
DO $$
DECLARE
	a idem_claim_result;
	b idem_claim_result;
BEGIN
	a := idem_claim('spread-7');
	b := idem_claim('spread-7');
	RAISE NOTICE 'statements: % then %, second token %', a.outcome, b.outcome, coalesce(b.token::text, 'none');
END $$;
-- An owner's call in between: the copies after it ask again.
BEGIN;
SELECT (c).outcome, idem_complete('spread-8', (c).token, '{}', 200) AS completed, (idem_claim('spread-8')).outcome AS after
FROM (SELECT idem_claim('spread-8') c OFFSET 0) s;
ROLLBACK;
-- idem_transition too: spread, it applies once and reports it.
SELECT (idem_transition('orders', 1, 'paid')).*;
SELECT state, version FROM orders;
-- A call that runs for the same row or key makes what earlier copies
-- answered stale: the next copy runs again.
SELECT idem_machine('order', 'new->paid', 'paid->shipped', 'shipped->paid', 'new->cancelled') \g /dev/null
SELECT (idem_transition('orders', 1, 'shipped')).outcome AS to_shipped,
       (idem_transition('orders', 1, 'paid')).outcome AS back_to_paid,
       (idem_transition('orders', 1, 'shipped')).outcome AS shipped_again,
       (idem_transition('orders', 1, 'shipped')).version AS version;
SELECT state, version FROM orders;
BEGIN;
SELECT (idem_claim('spread-9', lease => '1 second')).outcome AS first,
       (idem_claim('spread-9', lease => '2 seconds')).outcome AS other_lease,
       (idem_claim('spread-9', lease => '1 second')).outcome AS first_again;
ROLLBACK;
-- The same key or row written another way is the same object: a key read
-- from a column, the id as another type or as text.
CREATE TEMP TABLE keys (k text);
INSERT INTO keys VALUES ('spread-12');
BEGIN;
SELECT (idem_claim('spread-12', lease => '1 second')).token IS NOT NULL AS first_has_token,
       (idem_claim(k, lease => '2 seconds')).outcome AS from_a_column,
       (idem_claim('spread-12', lease => '1 second')).token IS NOT NULL AS third_has_token
FROM keys;
ROLLBACK;
SELECT (idem_transition('orders', 1, 'paid')).version AS v1,
       (idem_transition('orders', 1::bigint, 'shipped')).version AS v2,
       (idem_transition('orders', '01', 'paid')).version AS v3;
-- An UPDATE the guard judged in between: the next copy runs again.
CREATE FUNCTION pg_temp.ship(id bigint) RETURNS int LANGUAGE sql
	AS $$ UPDATE orders SET state = 'shipped' WHERE orders.id = ship.id RETURNING version $$;
SELECT (idem_transition('orders', 1, 'paid')).version AS before, pg_temp.ship(1) AS shipped_at,
       (idem_transition('orders', 1, 'paid')).version AS after;
SELECT state, version FROM orders;
-- Arguments of other types are other calls, even with the same bits.
CREATE TABLE wide (id bigint PRIMARY KEY, state text NOT NULL, version int NOT NULL DEFAULT 0);
SELECT idem_guard('wide', machine => 'order', version_column => 'version') \g /dev/null
INSERT INTO wide (id, state) VALUES (1, 'new'), (4607182418800017408, 'new');
SELECT (idem_transition('wide', 4607182418800017408::bigint, 'paid')).outcome AS big,
       (idem_transition('wide', 1.0::float8, 'paid')).outcome AS one;
SELECT id, state FROM wide ORDER BY id;
DROP TABLE wide;
-- A rolled-back subtransaction undoes only what ran in it.
CREATE FUNCTION pg_temp.claim_and_fail(k text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	BEGIN
		PERFORM idem_claim(k);
		RAISE EXCEPTION 'undo';
	EXCEPTION WHEN raise_exception THEN
		RETURN 'rolled back';
	END;
END $$;
BEGIN;
SELECT (idem_claim('spread-10')).token IS NOT NULL AS has_token,
       pg_temp.claim_and_fail('spread-11') AS other,
       (idem_claim('spread-10')).token IS NOT NULL AS still_has_token;
ROLLBACK;

DROP TABLE orders;
DELETE FROM machines WHERE name = 'order';
DELETE FROM policies WHERE scope IN ('checkout', '1 day');
DROP ROLE regress_mistaken;

-- A result type a superuser altered is refused, not read past.
BEGIN;
ALTER TYPE idempotency.idem_claim_result ADD ATTRIBUTE extra text;
SELECT pg_temp.fails($$SELECT * FROM idem_claim('altered')$$) AS altered_claim_result;
ROLLBACK;
BEGIN;
SELECT idem_machine('altered', 'a->b') \g /dev/null
CREATE TABLE altered (id int PRIMARY KEY, state text NOT NULL);
SELECT idem_guard('altered', machine => 'altered') \g /dev/null
INSERT INTO altered VALUES (1, 'a');
ALTER TYPE idempotency.idem_transition_result ALTER ATTRIBUTE version TYPE text;
SELECT pg_temp.fails($$SELECT * FROM idem_transition('altered', 1, 'b')$$) AS altered_transition_result;
ROLLBACK;
SELECT outcome FROM idem_claim('altered');
