--
-- Per-scope policies, the extension's roles, idem_purge() and search_path.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

-- A scope without a row gets the column defaults: a claim without a ttl
-- lives 24 hours, with a 60-second lease.
SELECT count(*) AS policies FROM policies;
SELECT outcome, expires_at - clock_timestamp() BETWEEN '23 hours 59 minutes' AND '24 hours' AS lives_a_day
FROM idem_claim('p-default');
SELECT lease_until - created_at BETWEEN '59 seconds' AND '61 seconds' AS leased_a_minute
FROM claims WHERE key = 'p-default';

-- A DBA inserts just what differs.
INSERT INTO policies (scope, default_ttl, max_ttl, lease, max_key_length, require_fingerprint)
VALUES ('payments', '10 minutes', '1 hour', '5 seconds', 16, true);
INSERT INTO policies (scope, max_ttl) VALUES ('mail', '2 hours');
SELECT scope, default_ttl, max_ttl, lease, max_key_length, require_fingerprint
FROM policies ORDER BY scope;

-- Policies bind, with the same session seeing its own change at once.
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('pay-1', scope => 'payments')$$) AS no_fingerprint;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim(repeat('k', 17), fingerprint => idempotency.idem_fingerprint('{}'), scope => 'payments')$$) AS key_over_max;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('pay-1', '2 hours', idempotency.idem_fingerprint('{}'), 'payments')$$) AS ttl_over_max;
SELECT count(*) AS nothing_written FROM claims WHERE scope = 'payments';
SELECT outcome, expires_at - clock_timestamp() BETWEEN '9 minutes' AND '10 minutes' AS ten_minutes
FROM idem_claim(repeat('k', 16), fingerprint => idem_fingerprint('{}'), scope => 'payments');
SELECT lease_until - created_at BETWEEN '4 seconds' AND '6 seconds' AS leased_five_seconds
FROM claims WHERE scope = 'payments';
SELECT (idem_claim('pay-2', '1 hour', idem_fingerprint('{}'), 'payments')).token AS pay2 \gset
SELECT pg_temp.fails($$SELECT idempotency.idem_extend('pay-2', $$ || :pay2 || $$, '3 hours', 'payments')$$) AS extend_over_max;
SELECT pg_temp.fails($$SELECT idempotency.idem_token_issue('mail', '3 hours')$$) AS token_over_max;
SELECT length(idem_token_issue('mail', '2 hours')) AS token_within_max;
-- A token's default ttl (an hour) is cut to a shorter max_ttl.
INSERT INTO policies (scope, max_ttl) VALUES ('brief', '10 minutes');
SELECT length(idem_token_issue('brief')) AS default_token;
SELECT expires_at - created_at BETWEEN '9 minutes 59 seconds' AND '10 minutes 1 second' AS ten_minutes
FROM tokens WHERE scope = 'brief';
DELETE FROM policies WHERE scope = 'brief';
-- The default ttl never exceeds max_ttl: 'mail' gave only max_ttl.
SELECT expires_at - clock_timestamp() BETWEEN '1 hour 59 minutes' AND '2 hours' AS two_hours
FROM idem_claim('mail-1', scope => 'mail');

-- A change is seen by the next call; a deleted row gives the defaults back.
UPDATE policies SET max_key_length = 20, require_fingerprint = false WHERE scope = 'payments';
SELECT outcome FROM idem_claim(repeat('k', 20), scope => 'payments');
BEGIN;
DELETE FROM policies WHERE scope = 'payments';
SELECT outcome FROM idem_claim(repeat('k', 200), '20 days', scope => 'payments');
ROLLBACK;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim(repeat('k', 200), scope => 'payments')$$) AS policy_back_after_rollback;

-- The table's constraints keep every policy sane.
SELECT pg_temp.fails($$INSERT INTO idempotency.policies (scope, max_ttl) VALUES ('x', '400 days')$$) AS max_over_limit;
SELECT pg_temp.fails($$INSERT INTO idempotency.policies (scope, max_key_length) VALUES ('x', 0)$$) AS zero_key_length;
SELECT pg_temp.fails($$INSERT INTO idempotency.policies (scope, default_ttl) VALUES ('x', '-1 hour')$$) AS negative_ttl;
SELECT pg_temp.fails($$INSERT INTO idempotency.policies (scope) VALUES ('')$$) AS empty_scope;
SELECT pg_temp.fails($$INSERT INTO idempotency.policies (scope, lease) VALUES ('x', '1 day -23 hours')$$) AS mixed_signs;
SELECT pg_temp.fails($$INSERT INTO idempotency.policies (scope, max_ttl) VALUES ('x', '1 month -29 days')$$) AS mixed_months;
SELECT i, idem_interval_forward(i) AS forward
FROM (VALUES (interval '2 days 3 hours'), ('1 year -1 month'), ('00:00:01'), ('-1 day 25 hours'),
	('1 day -1 microsecond'), ('1 mon -1 day'), ('0')) v(i);

-- Roles.  A plain role may read policies, machines and counters, and
-- nothing else: no claim, lock, lease or token function, no change to
-- policies, machines or guards, no purge.
CREATE ROLE regress_plain;
CREATE ROLE regress_app IN ROLE idempotency_user;
CREATE ROLE regress_dba IN ROLE idempotency_admin;
GRANT CREATE ON SCHEMA public TO regress_plain, regress_dba;
CREATE TABLE guarded (id int PRIMARY KEY, state text NOT NULL);
ALTER TABLE guarded OWNER TO regress_dba;
SET ROLE regress_plain;
SELECT count(*) >= 2 AS reads_policies FROM idempotency.policies;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k')$$) AS claim;
SELECT pg_temp.fails($$SELECT idempotency.idem_lock('k')$$) AS lock;
SELECT pg_temp.fails($$SELECT idempotency.idem_lease_acquire('n', 'w', '1 minute')$$) AS lease;
SELECT pg_temp.fails($$SELECT idempotency.idem_token_issue()$$) AS token;
SELECT pg_temp.fails($$INSERT INTO idempotency.policies (scope) VALUES ('mine')$$) AS insert_policy;
SELECT pg_temp.fails($$UPDATE idempotency.policies SET max_ttl = '366 days'$$) AS update_policy;
SELECT pg_temp.fails($$DELETE FROM idempotency.machines$$) AS delete_machines;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('m', 'a->b')$$) AS define_machine;
SELECT pg_temp.fails($$SELECT idempotency.idem_unguard('guarded')$$) AS unguard;
CREATE TABLE own (id int PRIMARY KEY, state text NOT NULL);
SELECT pg_temp.fails($$SELECT idempotency.idem_guard('own', machine => 'm')$$) AS guard_own_table;
SELECT pg_temp.fails($$CREATE TRIGGER g BEFORE INSERT OR UPDATE ON own FOR EACH ROW EXECUTE FUNCTION idempotency.idem_guard_trigger('m', 'state')$$) AS hand_made_guard;
SELECT pg_temp.fails($$SELECT idempotency.idem_purge()$$) AS purge;
SELECT pg_temp.fails($$SELECT idempotency.idem_stats_reset()$$) AS reset_counters;
DROP TABLE own;
RESET ROLE;

-- idempotency_user: claims, locks, leases and tokens, but no policies.
SET ROLE regress_app;
SELECT outcome FROM idempotency.idem_claim('app-1', scope => 'mail');
SELECT idempotency.idem_try_lock('app-1') AS locked;
SELECT idempotency.idem_lease_acquire('app-lease', 'w', '1 minute') IS NOT NULL AS leased;
SELECT idempotency.idem_token_consume(idempotency.idem_token_issue('mail'), 'mail') AS consumed;
SELECT pg_temp.fails($$INSERT INTO idempotency.policies (scope) VALUES ('mine')$$) AS insert_policy;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('m', 'a->b')$$) AS define_machine;
RESET ROLE;

-- idempotency_admin: policies, machines, guards, counters, purging; no claims.
SET ROLE regress_dba;
INSERT INTO idempotency.policies (scope, default_ttl) VALUES ('dba', '1 hour');
SELECT idempotency.idem_machine('regress_m', 'new->done');
SELECT idempotency.idem_guard('guarded', machine => 'regress_m');
INSERT INTO guarded VALUES (1, 'new');
SELECT pg_temp.fails($$UPDATE guarded SET state = 'new' || '!' WHERE id = 1$$) AS guard_works;
SELECT idempotency.idem_unguard('guarded');
SELECT idempotency.idem_purge() >= 0 AS purged;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k')$$) AS claim;
DELETE FROM idempotency.policies WHERE scope = 'dba';
DELETE FROM idempotency.machines WHERE name = 'regress_m';
RESET ROLE;
DROP TABLE guarded;
REVOKE CREATE ON SCHEMA public FROM regress_plain, regress_dba;
DROP ROLE regress_plain, regress_app, regress_dba;

-- idem_purge() deletes expired claims, tokens and leases, in batches,
-- and nothing live.
DELETE FROM claims;
DELETE FROM leases;
DELETE FROM tokens;
SELECT idem_stats_reset();
INSERT INTO claims (scope, key, state, token, created_at, expires_at)
SELECT 'old', 'k' || g, 'completed', g, now() - interval '2 days', now() - interval '1 day'
FROM generate_series(1, 2500) g;
INSERT INTO claims (scope, key, state, token, expires_at)
SELECT 'live', 'k' || g, 'completed', g, now() + interval '1 day' FROM generate_series(1, 10) g;
INSERT INTO tokens (scope, digest, created_at, expires_at)
SELECT 'old', sha256(g::text::bytea), now() - interval '2 hours', now() - interval '1 hour'
FROM generate_series(1, 30) g;
INSERT INTO leases (name, holder, token, acquired_at, expires_at)
VALUES ('gone', 'w', 1, now() - interval '1 hour', now() - interval '1 minute'),
	('held', 'w', 2, now(), now() + interval '1 hour');
SELECT idem_purge() AS purged;
SELECT scope, count(*) FROM claims GROUP BY scope;
SELECT count(*) AS tokens_left FROM tokens;
SELECT name FROM leases;
SELECT purged_rows FROM stats;
SELECT idem_purge() AS nothing_more;
DELETE FROM claims;
DELETE FROM leases;

-- search_path: functions resolve nothing through it.  A role that may
-- call the functions puts a schema of its own first on its search_path,
-- with functions, operators and types named like every one the
-- extension's statements use; the functions switch to the extension
-- owner's rights, so any of them called would run as the owner.  None is
-- ever called (each would say "hijacked"), neither when a kept plan is
-- analysed again under the new search_path nor when it is first prepared
-- under it (in a new session, below).
CREATE ROLE regress_mallory IN ROLE idempotency_user;
CREATE SCHEMA regress_evil AUTHORIZATION regress_mallory;
SET ROLE regress_mallory;
CREATE FUNCTION regress_evil.seen(what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'hijacked: %', what; RETURN true; END $$;
DO $$
DECLARE
	o record;
	t text;
	n int := 0;
BEGIN
	FOR o IN SELECT * FROM (VALUES
		('=', 'text', 'text', 'boolean'), ('=', 'bigint', 'bigint', 'boolean'),
		('=', 'integer', 'integer', 'boolean'), ('=', 'bytea', 'bytea', 'boolean'),
		('=', 'tid', 'tid', 'boolean'), ('=', 'oid', 'oid', 'boolean'),
		('=', 'idempotency.idem_claim_state', 'idempotency.idem_claim_state', 'boolean'),
		('<', 'timestamptz', 'timestamptz', 'boolean'), ('<=', 'timestamptz', 'timestamptz', 'boolean'),
		('>', 'timestamptz', 'timestamptz', 'boolean'), ('>=', 'timestamptz', 'timestamptz', 'boolean'),
		('+', 'timestamptz', 'interval', 'timestamptz'), ('+', 'integer', 'integer', 'integer'),
		('+', 'bigint', 'bigint', 'bigint')) AS v(op, l, r, res)
	LOOP
		n := n + 1;
		EXECUTE format('CREATE FUNCTION regress_evil.op%s(%s, %s) RETURNS %s LANGUAGE plpgsql AS %L',
			n, o.l, o.r, o.res, format('BEGIN PERFORM regress_evil.seen(%L); RETURN $1 OPERATOR(pg_catalog.%s) $2; END',
				o.op || ' ' || o.l, o.op));
		EXECUTE format('CREATE OPERATOR regress_evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = regress_evil.op%s)',
			o.op, o.l, o.r, n);
	END LOOP;
	FOREACH t IN ARRAY ARRAY['text', 'int8', 'int4', 'bool', 'interval', 'timestamptz', 'bytea', 'jsonb',
		'regclass', 'tid', 'oid', 'name'] LOOP
		EXECUTE format('CREATE DOMAIN regress_evil.%I AS pg_catalog.%I CHECK (regress_evil.seen(%L))',
			t, t, 'type ' || t);
	END LOOP;
	FOREACH t IN ARRAY ARRAY['idem_claim_state', 'idem_outcome'] LOOP
		EXECUTE format('CREATE DOMAIN regress_evil.%I AS idempotency.%I CHECK (regress_evil.seen(%L))',
			t, t, 'type ' || t);
	END LOOP;
END $$;
CREATE FUNCTION regress_evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM regress_evil.seen('now'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION regress_evil.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM regress_evil.seen('clock_timestamp'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION regress_evil.nextval(regclass) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM regress_evil.seen('nextval'); RETURN pg_catalog.nextval($1); END $$;
CREATE FUNCTION regress_evil.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN PERFORM regress_evil.seen('unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
RESET ROLE;
-- Every path of every claim, lock, lease and token function.  Written
-- with qualified names only and no operator, so that it resolves nothing
-- through the search_path itself; it runs with its caller's.
CREATE FUNCTION public.regress_call_everything(k text, sc text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	c idempotency.idem_claim_result;
	k2 pg_catalog.text := pg_catalog.concat(k, '-2');
	k3 pg_catalog.text := pg_catalog.concat(k, '-3');
	l pg_catalog.int8;
	r pg_catalog.text;
BEGIN
	c := idempotency.idem_claim(k, '1 hour', idempotency.idem_fingerprint('{"a": 1}', '{a}'), sc);
	r := c.outcome;
	PERFORM idempotency.idem_checkpoint(k, c.token, 'half', sc);
	PERFORM idempotency.idem_extend(k, c.token, '1 minute', sc);
	PERFORM idempotency.idem_complete(k, c.token, '{"done": true}', 200, sc);
	PERFORM idempotency.idem_complete(k, c.token, '{"done": true}', 200, sc);
	r := pg_catalog.concat_ws(' ', r, (idempotency.idem_claim(k, '1 hour', idempotency.idem_fingerprint('{"a": 1, "b": 2}', '{a}'), sc)).outcome);
	r := pg_catalog.concat_ws(' ', r, (idempotency.idem_claim(k, '1 hour', idempotency.idem_fingerprint('{"a": 2}'), sc)).outcome);
	r := pg_catalog.concat_ws(' ', r, (idempotency.idem_lookup(k, sc)).state);
	c := idempotency.idem_claim(k2, '1 hour', NULL, sc, wait => false);
	PERFORM idempotency.idem_fail(k2, c.token, true, NULL, NULL, sc);
	c := idempotency.idem_claim(k2, '1 hour', NULL, sc);
	r := pg_catalog.concat_ws(' ', r, c.outcome, idempotency.idem_release(k2, c.token, sc));
	PERFORM idempotency.idem_claim(k3, '10 milliseconds', NULL, sc);
	PERFORM pg_catalog.pg_sleep(0.02);
	r := pg_catalog.concat_ws(' ', r, (idempotency.idem_claim(k3, '1 hour', NULL, sc, wait => false)).outcome);
	PERFORM idempotency.idem_lock(k, sc);
	r := pg_catalog.concat_ws(' ', r, idempotency.idem_try_lock(k, sc));
	PERFORM idempotency.idem_lock_id(k, sc);
	l := idempotency.idem_lease_acquire(k, 'w', '1 minute', sc);
	r := pg_catalog.concat_ws(' ', r, idempotency.idem_lease_renew(k, l, '1 minute', sc),
		idempotency.idem_lease_check(k, l, sc), idempotency.idem_lease_release(k, l, sc));
	r := pg_catalog.concat_ws(' ', r, idempotency.idem_token_consume(idempotency.idem_token_issue(sc, '1 minute'), sc));
	RETURN r;
END $$;
INSERT INTO idempotency.policies (scope, allowed_roles) VALUES ('evil', '{regress_mallory}');
SET search_path = regress_evil, pg_catalog, idempotency, public;
SELECT 'a' = 'a' AS shadowing_works;
SELECT public.regress_call_everything('evil-1', 'evil') AS as_superuser;
SET ROLE regress_mallory;
SELECT public.regress_call_everything('evil-2', 'evil') AS as_caller;
RESET ROLE;
SELECT idem_machine('regress_evil_m', 'a->b', 'b->c');
CREATE TABLE regress_evil.t (id pg_catalog.int4 PRIMARY KEY, state pg_catalog.text NOT NULL);
SELECT idem_guard('regress_evil.t', machine => 'regress_evil_m');
INSERT INTO regress_evil.t VALUES (1, 'a');
UPDATE regress_evil.t SET state = 'b';
SELECT outcome FROM idem_transition('regress_evil.t', 1, 'c');
SELECT idem_purge() AS purged;
SELECT claims_claimed IS NOT NULL AS counters FROM stats;
-- A new session: every plan is prepared under the hostile search_path.
\c -
SET search_path = regress_evil, pg_catalog, idempotency, public;
SET ROLE regress_mallory;
SELECT public.regress_call_everything('evil-3', 'evil') AS fresh_as_caller;
RESET ROLE;
SELECT public.regress_call_everything('evil-4', 'evil') AS fresh_as_superuser;
SELECT outcome FROM idem_transition('regress_evil.t', 1, 'c');
SELECT idem_purge() AS purged;
SET search_path = public, idempotency;
-- Every function of the extension written in SQL or PL/pgSQL pins its
-- search_path.  (idem_serve, whose handler runs under the caller's, is C.)
SELECT p.proname, p.prosecdef FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
JOIN pg_language l ON l.oid = p.prolang
WHERE e.extname = 'idempotency' AND d.deptype = 'e' AND l.lanname NOT IN ('c', 'internal')
	AND NOT coalesce(p.proconfig @> '{"search_path=pg_catalog, pg_temp"}', false)
ORDER BY 1;
SET client_min_messages = warning;
DROP SCHEMA regress_evil CASCADE;
RESET client_min_messages;
DROP FUNCTION public.regress_call_everything(text, text);
DROP ROLE regress_mallory;
DELETE FROM machines WHERE name = 'regress_evil_m';
DELETE FROM policies;
DELETE FROM claims;
DELETE FROM leases;
DELETE FROM tokens;
