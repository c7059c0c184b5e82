--
-- idem_claim's wait_for: its argument, and where it does not wait.  The
-- waits themselves, between sessions, are in t/016_claim_wait.pl.
--
SET search_path = idempotency, public;
\i sql/helpers.psql
-- Were a wait to go wrong here, the test would stop rather than hang.
SET statement_timeout = '20s';

-- The bound: positive, at most an hour.
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('w-1', wait_for => '0')$$) AS zero;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('w-1', wait_for => '-1 s')$$) AS negative;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('w-1', wait_for => '61 min')$$) AS too_long;
SELECT count(*) AS nothing_claimed FROM claims WHERE key = 'w-1';

-- Nothing to wait for: a new key is claimed, a completed one replayed.
SELECT outcome FROM idem_claim('w-2', '1 hour', wait_for => '10 s');
SELECT idem_complete('w-2', (SELECT token FROM claims WHERE key = 'w-2'), status => 200) AS completed;
SELECT outcome, status FROM idem_claim('w-2', '1 hour', wait_for => '10 s');

-- A claim of this transaction's own is not waited for: in_progress at once.
BEGIN;
SELECT outcome FROM idem_claim('w-3', '1 hour', lease => '1 hour');
SELECT outcome FROM idem_claim('w-3', '1 hour', wait_for => '30 s');
ROLLBACK;

-- A mismatch is answered at once too.
SELECT outcome FROM idem_claim('w-4', '1 hour', idem_fingerprint('{"a": 1}'), lease => '1 hour');
SELECT outcome FROM idem_claim('w-4', '1 hour', idem_fingerprint('{"a": 2}'), wait_for => '30 s');

-- A transaction that keeps one snapshot would never see the answer.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('w-5', wait_for => '1 s')$$) AS repeatable_read;
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('w-5', wait_for => '1 s')$$) AS serializable;
ROLLBACK;
RESET statement_timeout;
