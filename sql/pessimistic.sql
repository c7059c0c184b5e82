--
-- Pessimistic flows: idem_transition (every outcome and refusal), keyed
-- locks, leases with fencing tokens, one-time tokens.  Races are in
-- specs/transition_race.spec, keyed_lock.spec, lease_race.spec and
-- token_race.spec.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

SELECT idem_machine('payment', 'pending->paid', 'paid->refunded', 'pending->failed') \g /dev/null
CREATE TABLE payments (id bigint PRIMARY KEY, state text NOT NULL, version int NOT NULL, amount numeric);
SELECT idem_guard('payments', machine => 'payment', version_column => 'version') \g /dev/null
INSERT INTO payments VALUES (1, 'pending', 0, 10), (2, 'pending', 0, 20), (3, 'pending', 0, 30);

-- The payment-callback flow: applied, then a duplicate is unchanged.
SELECT * FROM idem_transition('payments', 1, 'paid');
SELECT * FROM idem_transition('payments', 1, 'paid');
-- Illegal (the state stays), stale, not found.
SELECT * FROM idem_transition('payments', 1, 'failed');
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_transition('payments', 1, 'nonsense')$$) AS unknown_state;
SELECT * FROM idem_transition('payments', 2, 'paid', expected_version => 7);
SELECT * FROM idem_transition('payments', 2, 'paid', expected_version => 1);
SELECT * FROM idem_transition('payments', 99, 'paid');
-- A duplicate with an old version is still unchanged, not stale.
SELECT * FROM idem_transition('payments', 2, 'paid', expected_version => 1);
-- Lock modes on a row nobody else holds; the id in any type that reads as the key.
SELECT * FROM idem_transition('payments', 3, 'paid', lock => 'nowait');
SELECT * FROM idem_transition('payments', '3'::text, 'refunded', lock => 'skip');
SELECT * FROM idem_transition('payments', 3::smallint, 'paid', lock => 'wait');
-- An untyped literal or parameter (as many drivers send keys) reads as text.
SELECT * FROM idem_transition('payments', '3', 'paid');
PREPARE untyped(unknown) AS SELECT outcome FROM idem_transition('payments', $1, 'paid');
EXECUTE untyped('2');
DEALLOCATE untyped;
SELECT id, state, version FROM payments ORDER BY id;

-- With the guard switched off, the machine is still followed and the
-- version still bumped.
INSERT INTO payments VALUES (4, 'pending', 0, 40);
ALTER TABLE payments DISABLE TRIGGER idem_guard;
SELECT * FROM idem_transition('payments', 4, 'paid');
SELECT * FROM idem_transition('payments', 4, 'pending');
ALTER TABLE payments ENABLE TRIGGER idem_guard;

-- Only the guarded table itself, not an inheritance child with the same key.
CREATE TABLE payments_archive () INHERITS (payments);
INSERT INTO payments_archive VALUES (5, 'pending', 1, 50);
SELECT * FROM idem_transition('payments', 5, 'paid');
SELECT id, state FROM payments_archive;
DROP TABLE payments_archive;

-- Bad input: clear errors, nothing changed.
SELECT pg_temp.fails($$SELECT idempotency.idem_transition(NULL, 1, 'paid')$$) AS null_table;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('payments', NULL::int, 'paid')$$) AS null_id;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('payments', 1, NULL)$$) AS null_state;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('payments', 1, '')$$) AS empty_state;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('payments', 1, 'paid', lock => 'later')$$) AS bad_lock;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('payments', 1, 'paid', lock => NULL)$$) AS null_lock;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('payments', 'one'::text, 'paid')$$) AS bad_id;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('nosuch', 1, 'paid')$$) AS unknown_table;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition(12345::oid::regclass, 1, 'paid')$$) AS missing_oid;
CREATE TABLE unguarded (id int PRIMARY KEY, state text);
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('unguarded', 1, 'paid')$$) AS no_guard;
CREATE TABLE pairs (a int, b int, state text NOT NULL, PRIMARY KEY (a, b));
SELECT idem_guard('pairs', machine => 'payment') \g /dev/null
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('pairs', 1, 'paid')$$) AS composite_key;
CREATE TABLE keyless (state text NOT NULL);
SELECT idem_guard('keyless', machine => 'payment') \g /dev/null
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('keyless', 1, 'paid')$$) AS no_key;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('pairs', 1, 'paid', expected_version => 1)$$) AS no_version_column;
CREATE VIEW payments_view AS SELECT * FROM payments;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('payments_view', 1, 'paid')$$) AS a_view;
SELECT id, state, version FROM payments ORDER BY id;

-- An enum state, a text key: identifiers that need quoting.
CREATE TYPE "Ticket State" AS ENUM ('open', 'closed');
SELECT idem_machine('Ticket', 'open->closed') \g /dev/null
CREATE TABLE "Odd Tickets" ("Key" text PRIMARY KEY, "State" "Ticket State" NOT NULL);
SELECT idem_guard('"Odd Tickets"', state_column => 'State', machine => 'Ticket') \g /dev/null
INSERT INTO "Odd Tickets" VALUES ('a b', 'open');
SELECT * FROM idem_transition('"Odd Tickets"', 'a b'::text, 'closed');
SELECT * FROM idem_transition('"Odd Tickets"', 'a b'::text, 'open');
-- A plan kept for the table follows a renamed column.
ALTER TABLE "Odd Tickets" RENAME COLUMN "State" TO "Status";
SELECT idem_guard('"Odd Tickets"', state_column => 'Status', machine => 'Ticket') \g /dev/null
SELECT * FROM idem_transition('"Odd Tickets"', 'a b'::text, 'closed');

-- A user without UPDATE on the table is refused before anything is locked.
CREATE ROLE regress_pessimist;
GRANT USAGE ON SCHEMA public TO regress_pessimist;
SET ROLE regress_pessimist;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('payments', 1, 'refunded')$$) AS no_privilege;
RESET ROLE;
GRANT SELECT, UPDATE (amount) ON payments TO regress_pessimist;
SET ROLE regress_pessimist;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('payments', 1, 'refunded')$$) AS no_column_privilege;
RESET ROLE;
GRANT UPDATE (state, version) ON payments TO regress_pessimist;
GRANT EXECUTE ON FUNCTION idem_lease_acquire(text, text, interval, text) TO regress_pessimist;
SET ROLE regress_pessimist;
SELECT * FROM idem_transition('payments', 1, 'refunded');
-- An error inside a lease call (here: not allowed in the scope, as it is
-- not in idempotency_user), caught by a PL/pgSQL block, leaves the session
-- as it was.
SELECT pg_temp.fails($$SELECT idempotency.idem_lease_acquire('x', 'w', '1 hour')$$) AS lease_without_rights;
SELECT current_user AS still_usable, now() = statement_timestamp() AS in_its_own_transaction;
RESET ROLE;

-- Keyed locks.  idem_lock waits; idem_try_lock reports; both hold until
-- the transaction ends, in a lock space apart from pg_advisory_lock.
BEGIN;
SELECT idem_lock('invoice:42');
SELECT idem_try_lock('invoice:42') AS again_in_same_transaction;
SELECT idem_try_lock('invoice:42', scope => 'other') AS other_scope;
SELECT locktype, objsubid, mode, granted,
       (classid::bigint << 32 | objid::bigint) = idem_lock_id('invoice:42') AS is_ours
FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() ORDER BY objsubid, is_ours DESC;
SELECT pg_try_advisory_xact_lock(idem_lock_id('invoice:42')) AS users_own_lock_is_free;
COMMIT;
SELECT count(*) AS locks_after_commit FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
SELECT idem_lock_id('ab', 'c') <> idem_lock_id('a', 'bc') AS scope_and_key_kept_apart;
SELECT pg_temp.fails($$SELECT idempotency.idem_lock(NULL)$$) AS null_key;
SELECT pg_temp.fails($$SELECT idempotency.idem_try_lock('')$$) AS empty_key;
SELECT pg_temp.fails($$SELECT idempotency.idem_lock('k', NULL)$$) AS null_scope;
SELECT pg_temp.fails($$SELECT idempotency.idem_try_lock(repeat('k', 1025))$$) AS long_key;

-- Leases: tokens grow per name, expiry is honoured at acquire time.
SELECT idem_lease_acquire('report', 'worker-a', '1 hour') AS a_token \gset
SELECT idem_lease_acquire('report', 'worker-b', '1 hour') IS NULL AS b_refused_while_live;
SELECT idem_lease_check('report', :a_token) AS a_checks;
SELECT idem_lease_renew('report', :a_token, '2 hours') AS a_renews;
SELECT idem_lease_renew('report', :a_token - 1, '2 hours') AS wrong_token_renews;
SELECT idem_lease_acquire('report', 'worker-a', '1 hour') AS a_again \gset
SELECT :a_again > :a_token AS same_holder_gets_newer_token;
SELECT pg_temp.fails(format('SELECT idempotency.idem_lease_check(%L, %s)', 'report', :a_token)) AS old_token_fenced;
SELECT idem_lease_release('report', :a_token) AS old_token_cannot_release;
SELECT idem_lease_release('report', :a_again) AS released;
SELECT pg_temp.fails(format('SELECT idempotency.idem_lease_check(%L, %s)', 'report', :a_again)) AS check_after_release;
-- An expired lease goes to the next holder with a greater token.
SELECT idem_lease_acquire('batch', 'worker-a', '10 milliseconds') AS short \gset
SELECT pg_sleep(0.05);
SELECT regexp_replace(pg_temp.fails(format('SELECT idempotency.idem_lease_check(%L, %s)', 'batch', :short)),
                      'expired at [^|]*[.]', 'expired at <time>.') AS expired_check;
SELECT idem_lease_renew('batch', :short, '1 hour') AS expired_renews;
SELECT idem_lease_acquire('batch', 'worker-b', '1 hour') AS taken \gset
SELECT :taken > :short AS taken_over_with_greater_token;
SELECT scope, name, holder, token = :taken AS current FROM leases ORDER BY name;
-- A name is a lease of its scope: the same name in another scope is another lease.
SELECT idem_lease_acquire('batch', 'worker-c', '1 hour', 'other') AS other_scope \gset
SELECT :other_scope > :taken AS other_scope_acquired;
SELECT idem_lease_check('batch', :taken) AS first_still_holds;
SELECT pg_temp.fails(format('SELECT idempotency.idem_lease_check(%L, %s, %L)', 'batch', :taken, 'other')) AS token_of_another_scope;
SELECT idem_lease_release('batch', :taken, 'other') AS released_in_wrong_scope;
SELECT idem_lease_release('batch', :other_scope, 'other') AS released_in_own_scope;
SELECT pg_temp.fails($$SELECT idempotency.idem_lease_acquire(NULL, 'w', '1 hour')$$) AS null_name;
SELECT pg_temp.fails($$SELECT idempotency.idem_lease_acquire('n', '', '1 hour')$$) AS empty_holder;
SELECT pg_temp.fails($$SELECT idempotency.idem_lease_acquire('n', 'w', '0 seconds')$$) AS zero_ttl;
SELECT pg_temp.fails($$SELECT idempotency.idem_lease_acquire('n', 'w', '-1 hour')$$) AS negative_ttl;
SELECT pg_temp.fails($$SELECT idempotency.idem_lease_acquire('n', 'w', '400 days')$$) AS long_ttl;
SELECT pg_temp.fails($$SELECT idempotency.idem_lease_renew('n', NULL, '1 hour')$$) AS null_token;
SELECT pg_temp.fails($$SELECT idempotency.idem_lease_acquire('n', 'w', '1 hour', NULL)$$) AS null_scope;
SELECT pg_temp.fails($$SELECT idempotency.idem_lease_check('n', 1, '')$$) AS empty_scope;
SELECT count(*) AS nothing_made FROM leases WHERE name = 'n';

-- One-time tokens: 32 URL-safe characters, true exactly once.
SELECT idem_token_issue() AS tok \gset
SELECT length(:'tok') AS length, :'tok' ~ '^[A-Za-z0-9_-]{32}$' AS url_safe;
SELECT idem_token_issue() <> idem_token_issue() AS distinct_tokens;
SELECT idem_token_consume(:'tok', scope => 'other') AS wrong_scope;
SELECT idem_token_consume(:'tok') AS first;
SELECT idem_token_consume(:'tok') AS second;
SELECT count(*) AS digests, count(*) FILTER (WHERE position(convert_to(:'tok', 'UTF8') IN digest) > 0) AS stored_in_clear FROM tokens;
SELECT idem_token_issue('mail', '10 milliseconds') AS short_tok \gset
SELECT pg_sleep(0.05);
SELECT idem_token_consume(:'short_tok', 'mail') AS expired;
-- A consumption rolled back leaves the token usable.
SELECT idem_token_issue() AS tok2 \gset
BEGIN;
SELECT idem_token_consume(:'tok2') AS in_rolled_back_transaction;
ROLLBACK;
SELECT idem_token_consume(:'tok2') AS after_rollback;
SELECT pg_temp.fails($$SELECT idempotency.idem_token_consume('short')$$) AS wrong_length;
SELECT pg_temp.fails($$SELECT idempotency.idem_token_consume('AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=')$$) AS wrong_alphabet;
SELECT pg_temp.fails($$SELECT idempotency.idem_token_consume(NULL)$$) AS null_token;
SELECT pg_temp.fails($$SELECT idempotency.idem_token_issue('', '1 hour')$$) AS empty_scope;
SELECT pg_temp.fails($$SELECT idempotency.idem_token_issue('s', '0 hours')$$) AS zero_ttl;

DROP TABLE payments, unguarded, pairs, keyless, "Odd Tickets" CASCADE;
DROP TYPE "Ticket State";
REVOKE USAGE ON SCHEMA public FROM regress_pessimist;
REVOKE EXECUTE ON FUNCTION idem_lease_acquire(text, text, interval, text) FROM regress_pessimist;
DROP ROLE regress_pessimist;
DELETE FROM machines WHERE name IN ('payment', 'Ticket');
DELETE FROM leases;
DELETE FROM tokens;
