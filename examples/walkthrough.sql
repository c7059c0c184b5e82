-- examples/walkthrough.sql: what idempotency does, in five minutes of psql.
-- Run by scripts/demo.sh against a throwaway cluster; safe to run by hand
-- in any database where you may create the extension.

\set ON_ERROR_STOP 1
\pset footer off
-- Sections 18 and 20 start a second session with psql
-- (second_session.psql): it connects where this one did, as the same user.
\setenv PGHOST :HOST
\setenv PGPORT :PORT
\setenv PGUSER :USER
\setenv PGDATABASE :DBNAME
CREATE EXTENSION IF NOT EXISTS idempotency;
-- Your own tables first, then the extension's functions, types and operators:
-- CREATE TABLE keeps creating tables where it did.
SET search_path = public, idempotency;

\echo
\echo '== 1. Snowflake IDs: 64-bit, time-ordered, unique across every session.'
SELECT snowflake_id() AS id, snowflake_id() AS next_id;

\echo
\echo '== 2. Each ID decodes into the millisecond, node and sequence it was made from.'
SELECT id, snowflake_timestamp(id) AS generated_at, snowflake_node(id) AS node,
       snowflake_sequence(id) AS seq
FROM (SELECT snowflake_id() AS id FROM generate_series(1, 3)) ids;

\echo
\echo '== 3. As a primary key.  IDs sort in creation order, like a sequence, but'
\echo '      need no sequence, no WAL and no lock per call.'
CREATE TABLE demo_orders (
	id snowflake PRIMARY KEY DEFAULT snowflake_id(),
	item text NOT NULL
);
INSERT INTO demo_orders (item) VALUES ('coffee'), ('tea'), ('cake');
SELECT id, item, snowflake_timestamp(id) AS created FROM demo_orders ORDER BY id;

\echo
\echo '== 4. Time-range scans need no created_at column: snowflake_at() gives the'
\echo '      smallest ID of an instant, and the primary key index does the rest.'
EXPLAIN (COSTS OFF)
SELECT * FROM demo_orders
WHERE id >= snowflake_at(now() - interval '1 hour') AND id < snowflake_at(now() + interval '1 second');
SELECT count(*) AS orders_in_the_last_hour FROM demo_orders
WHERE id >= snowflake_at(now() - interval '1 hour');

\echo
\echo '== 5. In JSON an ID is a string, so JavaScript cannot round it off.'
SELECT json_agg(json_build_object('id', id, 'item', item) ORDER BY id) AS api_response FROM demo_orders;

\echo
\echo '== 6. A million IDs in one statement: all distinct, all increasing.'
SELECT count(*) AS ids, count(DISTINCT id) AS distinct_ids,
       count(*) FILTER (WHERE id <= prev) AS out_of_order
FROM (SELECT id, lag(id) OVER (ORDER BY n) AS prev
      FROM (SELECT n, snowflake_id() AS id FROM generate_series(1, 1000000) n) g) s;

\echo
\echo '== 7. The clock steps back an hour (simulated with a superuser-only test'
\echo '      setting).  IDs do not follow it back: they keep increasing.'
SELECT snowflake_id() AS before_the_step \gset
SET idempotency.test_clock_shift = '-1h';
SELECT snowflake_id() AS after_the_step,
       snowflake_id() > :'before_the_step'::snowflake AS still_increasing;
RESET idempotency.test_clock_shift;

\echo
\echo '== 8. Bad input is refused with a clear error and a SQLSTATE.'
\set ON_ERROR_STOP 0
\set VERBOSITY default
SELECT '-42'::snowflake;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT snowflake_at('1999-01-01');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP 1

DROP TABLE demo_orders;

\echo
\echo '== 9. Idempotency keys.  A client retries POST /payments with the same'
\echo '      Idempotency-Key.  The claim, the payment and the stored response'
\echo '      commit together, in one transaction:'
CREATE TABLE demo_payments (id snowflake PRIMARY KEY DEFAULT snowflake_id(), amount numeric);
BEGIN;
SELECT outcome, token FROM idem_claim('key-123', '24 hours',
	fingerprint => idem_fingerprint('{"amount": 42.00}')) \gset
\echo first request: :outcome
INSERT INTO demo_payments (amount) VALUES (42.00) RETURNING id AS payment_id \gset
SELECT idem_complete('key-123', :token, jsonb_build_object('payment', :'payment_id'), 201);
COMMIT;

\echo
\echo '== 10. The retry replays the stored response; no second payment.  The same'
\echo '       payload written differently has the same fingerprint.'
SELECT outcome, response, status
FROM idem_claim('key-123', '24 hours', fingerprint => idem_fingerprint('{ "amount" : 42 }'));
SELECT count(*) AS payments FROM demo_payments;

\echo
\echo '== 11. The same key with another payload is refused (HTTP 422).'
SELECT outcome FROM idem_claim('key-123', '24 hours', fingerprint => idem_fingerprint('{"amount": 99}'));

\echo
\echo '== 12. A request still in flight (HTTP 409): the first claim has committed'
\echo '       and is calling a payment provider under a lease.'
SELECT outcome, token AS slow_token FROM idem_claim('key-456', '24 hours', lease => '30 seconds') \gset
SELECT outcome, attempts FROM idem_claim('key-456', '24 hours');
\echo '     ... with wait => false, even a claim not yet committed reports'
\echo '     in_progress at once instead of waiting for it.'

\echo
\echo '== 13. The owner crashed; its lease runs out and the next caller takes'
\echo '       over with a higher fencing token and the last recovery point.'
SELECT idem_checkpoint('key-456', :slow_token, 'card authorised');
UPDATE idempotency.claims SET lease_until = clock_timestamp() WHERE key = 'key-456';  -- fast-forward
SELECT outcome, token > :slow_token AS higher_token, recovery_point, attempts
FROM idem_claim('key-456', '24 hours');
\echo '     The old owner comes back and is fenced out (SQLSTATE 40001):'
\set ON_ERROR_STOP 0
SELECT idem_complete('key-456', :slow_token, '{"late": true}', 200);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP 1

DROP TABLE demo_payments;
DELETE FROM idempotency.claims WHERE key IN ('key-123', 'key-456');

\echo
\echo '== 14. State machines.  An order may only move along these transitions,'
\echo '       whoever writes: the application, psql, a bulk UPDATE or COPY.'
SELECT idem_machine('demo_order', 'pending->paid', 'paid->shipped', 'pending->cancelled', 'paid->refunded');
CREATE TABLE demo_orders (id int PRIMARY KEY, state text NOT NULL, version int NOT NULL DEFAULT 0);
SELECT idem_guard('demo_orders', machine => 'demo_order', version_column => 'version');
INSERT INTO demo_orders (id, state) VALUES (1, 'pending');
UPDATE demo_orders SET state = 'paid' WHERE id = 1;
SELECT id, state, version FROM demo_orders;

\echo
\echo '== 15. A refused jump: paid orders cannot go back to pending (SQLSTATE 23514).'
\set ON_ERROR_STOP 0
UPDATE demo_orders SET state = 'pending' WHERE id = 1;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP 1

\echo
\echo '== 16. The payment provider calls back twice.  The repeat changes nothing'
\echo '       and is skipped (UPDATE 0): the version stays.'
\set QUIET off
UPDATE demo_orders SET state = 'paid' WHERE id = 1;
\set QUIET on
SELECT id, state, version FROM demo_orders;

\echo
\echo '== 17. Optimistic locking: two clients read version 2; the first ships,'
\echo '       the second, still at version 2, is refused as stale (SQLSTATE 40001).'
UPDATE demo_orders SET state = 'shipped', version = 2 WHERE id = 1;
\set ON_ERROR_STOP 0
UPDATE demo_orders SET state = 'refunded', version = 2 WHERE id = 1;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP 1
SELECT id, state, version FROM demo_orders;

DROP TABLE demo_orders;
DELETE FROM idempotency.machines WHERE name = 'demo_order';

\echo
\echo '== 18. Pessimistic flow: a payment callback locks the row (FOR UPDATE),'
\echo '       is judged on the locked row, and is applied.'
SELECT idem_machine('demo_payment', 'pending->paid', 'paid->refunded', 'pending->failed');
CREATE TABLE demo_payments (id bigint PRIMARY KEY, state text NOT NULL, version int NOT NULL DEFAULT 0);
SELECT idem_guard('demo_payments', machine => 'demo_payment', version_column => 'version');
INSERT INTO demo_payments (id, state) VALUES (7, 'pending');
BEGIN;
SELECT * FROM idem_transition('demo_payments', 7, 'paid');
\echo '   Meanwhile the provider retries the callback from another session, with'
\echo '   lock => ''nowait'': it is locked out at once instead of queueing.'
\set second_sql 'SELECT * FROM idempotency.idem_transition(''demo_payments'', 7, ''paid'', lock => ''nowait'')'
\ir second_session.psql
COMMIT;
\echo '   A third copy after the commit is a duplicate: unchanged.'
SELECT * FROM idem_transition('demo_payments', 7, 'paid');
\echo '   And a failure notice for a paid payment is illegal; nothing changes.'
SELECT * FROM idem_transition('demo_payments', 7, 'failed');
\echo '   A callback naming a state the machine does not have is an error that'
\echo '   lists the states it does have (SQLSTATE 22023).'
\set ON_ERROR_STOP 0
SELECT * FROM idem_transition('demo_payments', 7, 'payed');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP 1

\echo
\echo '== 19. A fenced lease handover.  Worker a holds the nightly job; worker b'
\echo '       must wait.  Worker a stalls past its lease; b takes over with a'
\echo '       greater fencing token, and a, checking before it writes, is refused.'
SELECT idem_lease_acquire('demo-nightly', 'worker-a', '300 milliseconds') AS a_token \gset
SELECT idem_lease_acquire('demo-nightly', 'worker-b', '1 minute') IS NULL AS b_must_wait;
SELECT pg_sleep(0.5) \g /dev/null
SELECT idem_lease_acquire('demo-nightly', 'worker-b', '1 minute') AS b_token \gset
SELECT :a_token AS a_token, :b_token AS b_token, :b_token > :a_token AS b_is_newer;
\set ON_ERROR_STOP 0
SELECT idem_lease_check('demo-nightly', :a_token);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP 1
SELECT idem_lease_check('demo-nightly', :b_token) AS b_may_write;
SELECT idem_lease_release('demo-nightly', :b_token) AS b_released;

\echo
\echo '== 20. A keyed lock for the length of a transaction, and a one-time token.'
BEGIN;
SELECT idem_lock('invoice:42');
\set second_sql 'SELECT idempotency.idem_try_lock(''invoice:42'') AS another_session_gets_it'
\ir second_session.psql
COMMIT;
SELECT idem_token_issue('demo-confirm', '15 minutes') AS tok \gset
SELECT idem_token_consume(:'tok', 'demo-confirm') AS first_click;
SELECT idem_token_consume(:'tok', 'demo-confirm') AS second_click;

DROP TABLE demo_payments;
DELETE FROM idempotency.machines WHERE name = 'demo_payment';

\echo
\echo '== 21. A DBA policy for one scope: payments must carry a fingerprint and'
\echo '       keep keys short; a claim without a ttl gets the scope''s default.'
INSERT INTO idempotency.policies (scope, default_ttl, max_ttl, max_key_length, require_fingerprint)
VALUES ('demo-payments', '2 hours', '48 hours', 64, true);
\set ON_ERROR_STOP 0
SELECT idem_claim('order-1001', scope => 'demo-payments');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP 1
SELECT outcome, expires_at - now() < interval '2 hours 1 minute' AS lives_two_hours
FROM idem_claim('order-1001', fingerprint => idem_fingerprint('{"amount": 10}'), scope => 'demo-payments');
\echo '     With idempotency.require_policy on, a misspelt scope is refused'
\echo '     instead of quietly getting the default limits (SQLSTATE 42704).'
SET idempotency.require_policy = on;
\set ON_ERROR_STOP 0
SELECT outcome FROM idem_claim('order-1002', fingerprint => idem_fingerprint('{"amount": 10}'), scope => 'demo-paymnets');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP 1
RESET idempotency.require_policy;

\echo
\echo '== 22. Expired rows go by themselves (the purge worker, every minute by'
\echo '       default) or on demand; the counters show what happened.'
SELECT backend_type, datname FROM pg_stat_activity WHERE backend_type = 'idempotency purge worker';
SELECT outcome AS claimed_briefly FROM idem_claim('demo-short', '100 milliseconds');
SELECT pg_sleep(0.2) \g /dev/null
SELECT idem_purge() AS purged_now;
SELECT claims_claimed, claims_replayed, claims_in_progress, claims_mismatched, purged_rows FROM idempotency.stats;

DELETE FROM idempotency.policies WHERE scope = 'demo-payments';
\echo
\echo 'Done.  See README.md for the full reference.'
