--
-- Scopes as trust boundaries: allowed_roles in idempotency.policies, no
-- table rights for idempotency_user (the functions use the extension
-- owner's), and refusals (42501, with a hint) that tell nothing about the
-- scope's claims, tokens and leases.  Races of access changes between
-- sessions are in specs/scope_access.spec.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

-- Two tenants in scopes of their own; an admin who also calls the
-- functions; an auditor (admin only); a role given a function but not
-- idempotency_user.
CREATE ROLE regress_alice IN ROLE idempotency_user;
CREATE ROLE regress_bob IN ROLE idempotency_user;
CREATE ROLE regress_boss IN ROLE idempotency_admin, idempotency_user;
CREATE ROLE regress_auditor IN ROLE idempotency_admin;
CREATE ROLE regress_outsider;
GRANT EXECUTE ON FUNCTION idem_lookup(text, text), idem_try_lock(text, text) TO regress_outsider;
INSERT INTO policies (scope, allowed_roles) VALUES
	('alice', '{regress_alice}'), ('bob', '{regress_bob}'), ('open', NULL), ('closed', '{}');
SELECT scope, allowed_roles FROM policies ORDER BY scope COLLATE "C";

-- Every call on a scope, with the arguments a thief would pass: key,
-- claim token, lease token, one-time token.  Each result is the refusal
-- (SQLSTATE: message | detail | hint) or what the call returned.
CREATE FUNCTION pg_temp.every_call(sc text, claim_token bigint, lease_token bigint, one_time text)
RETURNS TABLE (call text, result text) LANGUAGE sql AS $$
	SELECT c, pg_temp.fails(format(s, sc, claim_token, lease_token, one_time))
	FROM (VALUES
		('claim done key', $q$SELECT idempotency.idem_claim('k-done', scope => %1$L)$q$),
		('claim new key', $q$SELECT idempotency.idem_claim('k-never', scope => %1$L)$q$),
		('complete', $q$SELECT idempotency.idem_complete('k-open', %2$s, '{"forged": true}', 200, %1$L)$q$),
		('fail', $q$SELECT idempotency.idem_fail('k-open', %2$s, false, '{"forged": true}', 500, %1$L)$q$),
		('checkpoint', $q$SELECT idempotency.idem_checkpoint('k-open', %2$s, 'forged', %1$L)$q$),
		('extend', $q$SELECT idempotency.idem_extend('k-open', %2$s, '1 hour', %1$L)$q$),
		('release', $q$SELECT idempotency.idem_release('k-open', %2$s, %1$L)$q$),
		('lookup done key', $q$SELECT idempotency.idem_lookup('k-done', %1$L)$q$),
		('lookup new key', $q$SELECT idempotency.idem_lookup('k-never', %1$L)$q$),
		('token issue', $q$SELECT idempotency.idem_token_issue(%1$L) IS NOT NULL$q$),
		('token consume', $q$SELECT idempotency.idem_token_consume(%4$L, %1$L)$q$),
		('lease acquire', $q$SELECT idempotency.idem_lease_acquire('nightly', 'thief', '1 hour', %1$L)$q$),
		('lease renew', $q$SELECT idempotency.idem_lease_renew('nightly', %3$s, '1 hour', %1$L)$q$),
		('lease check', $q$SELECT idempotency.idem_lease_check('nightly', %3$s, %1$L)$q$),
		('lease release', $q$SELECT idempotency.idem_lease_release('nightly', %3$s, %1$L)$q$),
		('lock', $q$SELECT idempotency.idem_lock('k-done', %1$L)$q$),
		('try lock', $q$SELECT idempotency.idem_try_lock('k-done', %1$L)$q$)) v(c, s)
$$;

-- What a tenant keeps in its scope: a completed claim, a claim in
-- progress, a one-time token, a lease.
CREATE FUNCTION pg_temp.fill(sc text) RETURNS TABLE (claim_token bigint, lease_token bigint, one_time text)
LANGUAGE plpgsql AS $$
DECLARE
	t bigint;
BEGIN
	t := (idempotency.idem_claim('k-done', scope => sc)).token;
	PERFORM idempotency.idem_complete('k-done', t, jsonb_build_object('secret', sc), 201, sc);
	claim_token := (idempotency.idem_claim('k-open', scope => sc)).token;
	one_time := idempotency.idem_token_issue(sc);
	lease_token := idempotency.idem_lease_acquire('nightly', sc || '-worker', '1 hour', sc);
	RETURN NEXT;
END $$;

SET ROLE regress_alice;
SELECT claim_token AS a_claim, lease_token AS a_lease, one_time AS a_token FROM pg_temp.fill('alice') \gset
SET ROLE regress_bob;
SELECT claim_token AS b_claim, lease_token AS b_lease, one_time AS b_token FROM pg_temp.fill('bob') \gset
RESET ROLE;

-- Everything each tenant keeps, to show below that a refused call
-- changed none of it.
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
	SELECT md5(concat(
		(SELECT string_agg(c::text, ';' ORDER BY c.scope COLLATE "C", c.key COLLATE "C") FROM idempotency.claims c),
		(SELECT string_agg(t::text, ';' ORDER BY t.scope COLLATE "C", t.digest) FROM idempotency.tokens t),
		(SELECT string_agg(l::text, ';' ORDER BY l.scope COLLATE "C", l.name COLLATE "C") FROM idempotency.leases l)))
$$;
SELECT pg_temp.state() AS before \gset

-- Bob, with alice's own tokens in hand, can do nothing in her scope: every
-- call is refused the same way, whether the key exists or not.
SET ROLE regress_bob;
SELECT * FROM pg_temp.every_call('alice', :a_claim, :a_lease, :'a_token');
RESET ROLE;
-- And alice nothing in bob's.
SET ROLE regress_alice;
SELECT call, result LIKE '42501: permission denied for idempotency scope "bob" | %' AS refused
FROM pg_temp.every_call('bob', :b_claim, :b_lease, :'b_token');
RESET ROLE;
SELECT pg_temp.state() = :'before' AS nothing_changed;

-- Nor through the tables or their sequences.
SET ROLE regress_bob;
SELECT pg_temp.fails($$SELECT response FROM idempotency.claims WHERE scope = 'alice'$$) AS read_claims;
SELECT pg_temp.fails($$UPDATE idempotency.claims SET response = '{"forged": true}' WHERE scope = 'alice'$$) AS forge_claim;
SELECT pg_temp.fails($$INSERT INTO idempotency.claims (scope, key, state, token, expires_at) VALUES ('alice', 'k-planted', 'completed', 1, 'infinity')$$) AS plant_claim;
SELECT pg_temp.fails($$DELETE FROM idempotency.claims WHERE scope = 'alice'$$) AS delete_claims;
SELECT pg_temp.fails($$SELECT count(*) FROM idempotency.tokens$$) AS read_tokens;
SELECT pg_temp.fails($$INSERT INTO idempotency.tokens VALUES ('alice', sha256('x'), now(), 'infinity')$$) AS plant_token;
SELECT pg_temp.fails($$DELETE FROM idempotency.tokens$$) AS delete_tokens;
SELECT pg_temp.fails($$SELECT holder, token FROM idempotency.leases$$) AS read_leases;
SELECT pg_temp.fails($$UPDATE idempotency.leases SET holder = 'thief', token = 0$$) AS steal_lease;
SELECT pg_temp.fails($$INSERT INTO idempotency.leases VALUES ('alice', 'other', 'thief', 0, now(), 'infinity')$$) AS plant_lease;
SELECT pg_temp.fails($$DELETE FROM idempotency.leases$$) AS delete_leases;
SELECT pg_temp.fails($$SELECT nextval('idempotency.claim_tokens')$$) AS claim_sequence;
SELECT pg_temp.fails($$SELECT setval('idempotency.lease_tokens', 1)$$) AS lease_sequence;
RESET ROLE;
SELECT pg_temp.state() = :'before' AS nothing_changed;

-- Each tenant still works in its own scope, and in scopes open to every
-- idempotency_user: 'default' (no row) and 'open' (allowed_roles NULL).
SET ROLE regress_alice;
SELECT (idem_lookup('k-done', 'alice')).response AS own_response;
SELECT idem_complete('k-open', :a_claim, '{"ok": true}', 200, 'alice') AS completes_own;
SELECT idem_token_consume(:'a_token', 'alice') AS consumes_own;
SELECT idem_lease_check('nightly', :a_lease, 'alice') AS checks_own;
SELECT outcome FROM idem_claim('k-shared', scope => 'open');
SELECT idem_try_lock('k', 'default') AS locks_default;
SELECT current_user AS back_to_caller;
RESET ROLE;
SET ROLE regress_bob;
SELECT outcome, response FROM idem_claim('k-shared', scope => 'open');
-- Only roles with the privileges of idempotency_admin use a scope whose
-- allowed_roles is empty.
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', scope => 'closed')$$) AS closed;
RESET ROLE;

-- A role without idempotency_user is refused an open scope even when
-- given the function; the hint says which grant it lacks.
SET ROLE regress_outsider;
SELECT pg_temp.fails($$SELECT idempotency.idem_lookup('k-shared', 'open')$$) AS outsider_open;
SELECT pg_temp.fails($$SELECT idempotency.idem_lookup('k-shared')$$) AS outsider_default;
SELECT pg_temp.fails($$SELECT idempotency.idem_lookup('k-done', 'alice')$$) AS outsider_alice;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k')$$) AS outsider_no_execute;
RESET ROLE;

-- Inside its own scope a caller is refused with its own token only: no
-- refusal names the current token or holder (the caller's token, shown
-- as N, is the only number).
SET ROLE regress_bob;
SELECT regexp_replace(pg_temp.fails(format('SELECT idempotency.idem_complete(%L, %s, NULL, NULL, %L)',
	'k-open', :b_claim - 1, 'bob')), '[0-9]+', 'N', 'g') AS stale_claim_token;
SELECT regexp_replace(pg_temp.fails(format('SELECT idempotency.idem_complete(%L, %s, NULL, NULL, %L)',
	'k-open', :b_claim + 1000000, 'bob')), '[0-9]+', 'N', 'g') AS future_claim_token;
SELECT regexp_replace(pg_temp.fails(format('SELECT idempotency.idem_lease_check(%L, %s, %L)',
	'nightly', :b_lease - 1, 'bob')), '[0-9]+', 'N', 'g') AS old_lease_token;
-- An error raised while the function works with the owner's rights,
-- caught by a PL/pgSQL block, leaves the caller's identity and security
-- context as they were (a temporary table is refused inside a
-- security-restricted operation).
SELECT current_user AS still_bob;
CREATE TEMP TABLE regress_after_error (i int);
DROP TABLE regress_after_error;
-- The same for an error that ends the transaction.
SELECT idem_lease_check('never-acquired', 1, 'bob');
SELECT current_user AS still_bob;
CREATE TEMP TABLE regress_after_error (i int);
DROP TABLE regress_after_error;
RESET ROLE;

-- The caller is the current user: a SECURITY DEFINER function of alice's
-- reads alice's scope for whoever may call it.
CREATE FUNCTION public.alice_reads(k text) RETURNS jsonb LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT (idempotency.idem_lookup(k, 'alice')).response $$;
ALTER FUNCTION public.alice_reads(text) OWNER TO regress_alice;
SET ROLE regress_bob;
SELECT public.alice_reads('k-done') AS through_alice;
RESET ROLE;
DROP FUNCTION public.alice_reads(text);

-- An admin may read every table and, also a member of idempotency_user,
-- use every scope; it may not write the tables directly.
SET ROLE regress_auditor;
SELECT scope, key, state, response FROM idempotency.claims ORDER BY scope COLLATE "C", key COLLATE "C";
SELECT scope, count(*) AS tokens FROM idempotency.tokens GROUP BY scope ORDER BY scope COLLATE "C";
SELECT scope, name, holder FROM idempotency.leases ORDER BY scope COLLATE "C";
SELECT pg_temp.fails($$DELETE FROM idempotency.claims$$) AS auditor_deletes;
SELECT pg_temp.fails($$SELECT idempotency.idem_lookup('k-done', 'alice')$$) AS auditor_calls;
RESET ROLE;
SET ROLE regress_boss;
SELECT (idem_lookup('k-done', 'alice')).response AS boss_reads_alice;
SELECT (idem_lookup('k-done', 'bob')).response AS boss_reads_bob;
SELECT outcome FROM idem_claim('k-boss', scope => 'closed');
SELECT idem_lease_check('nightly', :b_lease, 'bob') AS boss_checks_bob;
SELECT idem_token_consume(:'b_token', 'bob') AS boss_consumes_bob;
SELECT idem_try_lock('k', 'alice') AS boss_locks_alice;
RESET ROLE;

-- Changes count at once, also in the session that cached the check.
-- A role added to allowed_roles, then taken out:
SET ROLE regress_alice;
SELECT pg_temp.fails($$SELECT idempotency.idem_lookup('k-done', 'bob') IS NULL$$) AS before_added;
RESET ROLE;
UPDATE policies SET allowed_roles = '{regress_bob, regress_alice}' WHERE scope = 'bob';
SET ROLE regress_alice;
SELECT (idem_lookup('k-done', 'bob')).response AS once_added;
RESET ROLE;
UPDATE policies SET allowed_roles = '{regress_bob}' WHERE scope = 'bob';
SET ROLE regress_alice;
SELECT pg_temp.fails($$SELECT idempotency.idem_lookup('k-done', 'bob') IS NULL$$) AS once_removed;
RESET ROLE;
-- A role granted, then revoked, membership in a listed role:
CREATE ROLE regress_team;
UPDATE policies SET allowed_roles = '{regress_team}' WHERE scope = 'closed';
SET ROLE regress_alice;
SELECT pg_temp.fails($$SELECT idempotency.idem_try_lock('k', 'closed')$$) AS before_granted;
RESET ROLE;
GRANT regress_team TO regress_alice;
SET ROLE regress_alice;
SELECT idem_try_lock('k', 'closed') AS once_granted;
RESET ROLE;
REVOKE regress_team FROM regress_alice;
SET ROLE regress_alice;
SELECT pg_temp.fails($$SELECT idempotency.idem_try_lock('k', 'closed')$$) AS once_revoked;
RESET ROLE;
-- A whole policy row deleted: the scope is open to idempotency_user again.
DELETE FROM policies WHERE scope = 'alice';
SET ROLE regress_bob;
SELECT (idem_lookup('k-done', 'alice')).response AS row_deleted;
RESET ROLE;
-- A scope too long for a policy (keyed locks allow 1,024 bytes) is open
-- to idempotency_user, and to nobody else.
SET ROLE regress_bob;
SELECT idem_try_lock('k', repeat('s', 1000)) AS long_scope;
RESET ROLE;
SET ROLE regress_outsider;
SELECT regexp_replace(pg_temp.fails(format('SELECT idempotency.idem_try_lock(%L, %L)', 'k', repeat('s', 300))),
	'"s+"', '"s..."') AS outsider_long_scope;
RESET ROLE;
-- idem_lock_id only computes a hash: anyone may call it.
SET ROLE regress_outsider;
SELECT idem_lock_id('k-done', 'alice') = idem_lock_id('k-done', 'alice') AS lock_id_public;
RESET ROLE;

DROP ROLE regress_alice, regress_bob, regress_boss, regress_auditor, regress_team;
REVOKE EXECUTE ON FUNCTION idem_lookup(text, text), idem_try_lock(text, text) FROM regress_outsider;
DROP ROLE regress_outsider;
DELETE FROM policies;
DELETE FROM claims;
DELETE FROM tokens;
DELETE FROM leases;
