--
-- Idempotency-key claims: every outcome of idem_claim, the owner's calls
-- (complete, fail, checkpoint, extend, release), lookup, fingerprints, and
-- every refusal with its SQLSTATE.  Races between sessions are in specs/.
--
SET search_path = idempotency, public;
\i sql/helpers.psql
\pset null '∅'

-- Tokens come from one sequence shared by all keys.  The tests keep each
-- owner's token in a psql variable (\gset) and print only comparisons.

-- claimed, then in_progress while the owner's lease is live.
SELECT outcome, token IS NOT NULL AS has_token, response, status, recovery_point, attempts,
       expires_at > now() + interval '59 min' AS expires_in_an_hour
FROM idem_claim('order-1', '1 hour');
SELECT token AS order1 FROM claims WHERE key = 'order-1' \gset
SELECT outcome, token, attempts FROM idem_claim('order-1', '1 hour');
SELECT state, token = :order1 AS same_token, attempts, lease_until > clock_timestamp() AS leased
FROM claims WHERE key = 'order-1';

-- completed: the response and status are replayed.
SELECT idem_complete('order-1', :order1, '{"order": 1, "total": 9.50}', 201) AS completed;
SELECT outcome, token, response, status, attempts FROM idem_claim('order-1', '1 hour');
SELECT outcome, response FROM idem_claim('order-1', '1 minute', wait => false);
-- The same completion again (a retry after a lost reply) changes nothing;
-- another response would be lost, so it is refused.
SELECT idem_complete('order-1', :order1, '{"total": 9.50, "order": 1}', 201) AS completed_again;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('order-1', $$ || :order1 || $$, '{"other": true}', 500)$$) AS other_response;
SELECT pg_temp.fails($$SELECT idempotency.idem_fail('order-1', $$ || :order1 || $$, false, '{"error": 1}', 500)$$) AS final_failure_after_completion;
SELECT response, status FROM claims WHERE key = 'order-1';

-- Scopes are separate key spaces.
SELECT outcome, token > :order1 AS higher_token FROM idem_claim('order-1', '1 hour', scope => 'refunds');

-- In one transaction with the business write: a rollback leaves nothing.
BEGIN;
SELECT outcome FROM idem_claim('order-2', '1 hour');
ROLLBACK;
SELECT count(*) AS left_behind FROM claims WHERE key = 'order-2';
SELECT outcome, token AS order2 FROM idem_claim('order-2', '1 hour') \gset
\echo :outcome

-- Fingerprints: the same payload written differently matches; another
-- payload is a mismatch, whatever the state, and reveals nothing.
SELECT outcome FROM idem_claim('pay-1', '1 hour',
	idem_fingerprint('{"amount": 10, "currency": "EUR", "tags": [1, 2.0]}'));
SELECT outcome FROM idem_claim('pay-1', '1 hour',
	idem_fingerprint('{ "tags":[1,2],"currency":"EUR","amount":10.00 }'));
SELECT outcome, token, response, attempts, expires_at
FROM idem_claim('pay-1', '1 hour', idem_fingerprint('{"amount": 11, "currency": "EUR"}'));
-- Without a fingerprint there is nothing to compare.
SELECT outcome FROM idem_claim('pay-1', '1 hour');

-- reclaimed: the lease ran out; the next caller takes over with a higher
-- token and the last recovery point.
SELECT token AS job1 FROM idem_claim('job-1', '1 hour', lease => '50 ms') \gset
SELECT idem_checkpoint('job-1', :job1, 'charged card') AS checkpointed;
SELECT pg_sleep(0.1);
SELECT outcome, token > :job1 AS higher_token, recovery_point, attempts FROM idem_claim('job-1', '1 hour');
SELECT token AS job1b FROM claims WHERE key = 'job-1' \gset
-- The old owner is fenced out, and nothing changes.
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('job-1', $$ || :job1 || $$, '{}', 200)$$) AS stale_complete;
SELECT pg_temp.fails($$SELECT idempotency.idem_checkpoint('job-1', $$ || :job1 || $$, 'x')$$) AS stale_checkpoint;
SELECT pg_temp.fails($$SELECT idempotency.idem_release('job-1', $$ || :job1 || $$)$$) AS stale_release;
SELECT pg_temp.fails($$SELECT idempotency.idem_extend('job-1', $$ || :job1 || $$, '1 min')$$) AS stale_extend;
SELECT state, token = :job1b AS new_owner, recovery_point, response FROM claims WHERE key = 'job-1';
-- The new owner extends its lease and checkpoints again.
SELECT idem_extend('job-1', :job1b, '10 min') > clock_timestamp() + interval '9 min' AS extended;
SELECT idem_checkpoint('job-1', :job1b, 'shipped') AS checkpointed;
SELECT outcome, attempts FROM idem_claim('job-1', '1 hour');

-- A lease that ran out is lost only when someone takes over: until then
-- the owner can still complete.
SELECT token AS job2 FROM idem_claim('job-2', '1 hour', lease => '10 ms') \gset
SELECT pg_sleep(0.05);
SELECT idem_complete('job-2', :job2, '"late but fine"', 200) AS completed;

-- idem_fail, retryable: the next caller takes over at once.
SELECT token AS job3 FROM idem_claim('job-3', '1 hour') \gset
SELECT idem_checkpoint('job-3', :job3, 'step 1');
SELECT idem_fail('job-3', :job3, retryable => true) AS failed;
SELECT idem_fail('job-3', :job3, retryable => true) AS failed_again;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('job-3', $$ || :job3 || $$, '{}', 200)$$) AS complete_after_fail;
SELECT outcome, token > :job3 AS higher_token, recovery_point, attempts FROM idem_claim('job-3', '1 hour');

-- idem_fail, final: the error response is what later callers replay.
SELECT token AS job4 FROM idem_claim('job-4', '1 hour') \gset
SELECT idem_fail('job-4', :job4, false, '{"error": "card declined"}', 402) AS failed;
SELECT outcome, response, status FROM idem_claim('job-4', '1 hour');
SELECT idem_fail('job-4', :job4, false, '{"error": "card declined"}', 402) AS failed_again;
SELECT pg_temp.fails($$SELECT idempotency.idem_fail('job-4', $$ || :job4 || $$, true)$$) AS retryable_after_final;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('job-4', $$ || :job4 || $$, '{"ok": 1}', 200)$$) AS complete_after_final;

-- idem_release: the key is free again, and its next token is higher.
SELECT token AS job5 FROM idem_claim('job-5', '1 hour') \gset
SELECT idem_release('job-5', :job5) AS released;
SELECT idem_release('job-5', :job5) AS released_again;
SELECT outcome, token > :job5 AS higher_token, attempts FROM idem_claim('job-5', '1 hour');
SELECT pg_temp.fails($$SELECT idempotency.idem_release('order-1', $$ || :order1 || $$)$$) AS release_completed;

-- An expired claim counts as absent, purged or not: the key is claimed
-- afresh, with a new token and nothing of the old claim.
SELECT token AS old1 FROM idem_claim('old-1', '10 ms') \gset
SELECT idem_complete('old-1', :old1, '"old"', 200);
SELECT pg_sleep(0.05);
SELECT (idem_lookup('old-1')).key IS NULL AS absent;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('old-1', $$ || :old1 || $$, '{}', 200)$$) AS complete_expired;
SELECT outcome, token > :old1 AS higher_token, response, attempts FROM idem_claim('old-1', '1 hour');

-- idem_lookup changes nothing.
SELECT key, state, token = :order1 AS same_token, response, status FROM idem_lookup('order-1');
SELECT (idem_lookup('never-claimed')).key IS NULL AS absent;

-- Tokens strictly increase per key and are never reused.
SELECT count(*) = count(DISTINCT token) AS unique_tokens FROM claims;

-- Fingerprints.
SELECT encode(idem_fingerprint('{"a": 1}'), 'hex') AS sha256;
SELECT idem_fingerprint('{"b": [1, {"c": null}], "a": "x"}')
     = idem_fingerprint('{"a":"x","b":[1.0,{"c":null}]}') AS same_document,
       idem_fingerprint('{"a": 1}') <> idem_fingerprint('{"a": "1"}') AS number_is_not_string,
       idem_fingerprint('{"a": null}') <> idem_fingerprint('{}') AS null_is_not_absent,
       idem_fingerprint('[1, 2]') <> idem_fingerprint('[2, 1]') AS arrays_keep_order,
       idem_fingerprint('"ab"') <> idem_fingerprint('["a", "b"]') AS framed,
       octet_length(idem_fingerprint('42')) AS bytes;
SELECT idem_fingerprint('{"amount": 10, "customer": {"id": 7}, "note": "x"}', ARRAY['customer.id', 'amount'])
     = idem_fingerprint('{"note": "y", "amount": 10.0, "customer": {"id": 7, "name": "z"}}', ARRAY['amount', 'customer.id'])
       AS selected_paths_only,
       idem_fingerprint('{"items": [{"sku": "a"}]}', ARRAY['items.0.sku'])
     <> idem_fingerprint('{"items": [{"sku": "b"}]}', ARRAY['items.0.sku']) AS array_index,
       idem_fingerprint('{"a": null}', ARRAY['a']) <> idem_fingerprint('{}', ARRAY['a']) AS missing_path,
       idem_fingerprint(NULL) IS NULL AS null_payload;
SELECT pg_temp.fails($$SELECT idempotency.idem_fingerprint('{}', '{}')$$) AS no_paths;
SELECT pg_temp.fails($$SELECT idempotency.idem_fingerprint('{}', ARRAY[NULL])$$) AS null_path;
SELECT pg_temp.fails($$SELECT idempotency.idem_fingerprint('{}', ARRAY[''])$$) AS empty_path;

-- Bad input: each refused with a SQLSTATE and a hint, nothing written.
SELECT count(*) AS claims_before FROM claims \gset
SELECT pg_temp.fails($$SELECT idempotency.idem_claim(NULL, '1 hour')$$) AS null_key;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('', '1 hour')$$) AS empty_key;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim(repeat('k', 256), '1 hour')$$) AS long_key;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', '0')$$) AS zero_ttl;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', '-1 hour')$$) AS negative_ttl;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', '1 month -1 day')$$) AS mixed_signs_ttl;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', '1000 years')$$) AS absurd_ttl;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', '1 hour', lease => '0')$$) AS zero_lease;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', '1 hour', lease => '2 hours')$$) AS lease_over_ttl;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', '1 hour', '\x0102')$$) AS short_fingerprint;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', '1 hour', scope => NULL)$$) AS null_scope;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', '1 hour', scope => '')$$) AS empty_scope;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('k', '1 hour', wait => NULL)$$) AS null_wait;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('nope', 1, '{}', 200)$$) AS unknown_key;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('order-2', NULL, '{}', 200)$$) AS null_token;
SELECT pg_temp.fails($$SELECT idempotency.idem_complete('order-2', $$ || :order2 + 1000000 || $$, '{}', 200)$$) AS unknown_token;
SELECT pg_temp.fails($$SELECT idempotency.idem_fail('order-2', $$ || :order2 || $$, NULL)$$) AS null_retryable;
SELECT pg_temp.fails($$SELECT idempotency.idem_checkpoint('order-2', $$ || :order2 || $$, NULL)$$) AS null_recovery_point;
SELECT pg_temp.fails($$SELECT idempotency.idem_extend('order-2', $$ || :order2 || $$, '-1 min')$$) AS negative_extend;
SELECT pg_temp.fails($$SELECT idempotency.idem_checkpoint('order-1', $$ || :order1 || $$, 'x')$$) AS checkpoint_completed;
SELECT count(*) = :claims_before AS nothing_written FROM claims;
SELECT state, token = :order2 AS same_token FROM claims WHERE key = 'order-2';

-- Claims take no lock of their own (the rows are the locks), so one
-- transaction can claim any number of keys: more than the shared lock
-- table could hold.
BEGIN;
SELECT count(*) FILTER (WHERE (c).outcome = 'claimed') AS claimed
FROM (SELECT idem_claim('bulk-' || g, '1 hour') AS c FROM generate_series(1, 20000) g) s;
SELECT count(*) AS advisory_locks FROM pg_locks WHERE locktype = 'advisory';
COMMIT;

-- A role that is not a member of idempotency_user may not call the claim
-- functions at all.
CREATE ROLE regress_claims_plain;
SET ROLE regress_claims_plain;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('order-1', '1 hour')$$) AS not_a_member;
RESET ROLE;
-- Given the function, it is still refused the scope, before it sees
-- anything; nor does a right on the table let it in (the functions use
-- the extension owner's rights, and check the scope first).
GRANT EXECUTE ON FUNCTION idem_claim(text, interval, bytea, text, interval, boolean, interval)
	TO regress_claims_plain;
SET ROLE regress_claims_plain;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('order-1', '1 hour')$$) AS no_scope;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('order-1', '1 hour', wait => false)$$) AS no_scope_nowait;
RESET ROLE;
GRANT SELECT ON claims TO regress_claims_plain;
SET ROLE regress_claims_plain;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('order-1', '1 hour')$$) AS select_only;
RESET ROLE;
REVOKE ALL ON claims FROM regress_claims_plain;
REVOKE ALL ON FUNCTION idem_claim(text, interval, bytea, text, interval, boolean, interval)
	FROM regress_claims_plain;
-- Membership in idempotency_user is all it takes, and no right on the
-- table comes with it.
GRANT idempotency_user TO regress_claims_plain;
SET ROLE regress_claims_plain;
SELECT outcome, response FROM idem_claim('order-1', '1 hour');
SELECT pg_temp.fails($$SELECT count(*) FROM idempotency.claims$$) AS no_table_rights;
RESET ROLE;
-- Row-level security could filter nothing the functions read: refused.
ALTER TABLE claims ENABLE ROW LEVEL SECURITY;
SET ROLE regress_claims_plain;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('order-1', '1 hour')$$) AS row_level_security;
RESET ROLE;
ALTER TABLE claims DISABLE ROW LEVEL SECURITY;
REVOKE idempotency_user FROM regress_claims_plain;
DROP ROLE regress_claims_plain;

DELETE FROM claims;

-- A replay of a response too large to stay in the row (toasted, out of
-- line) carries the whole document, in a later transaction and in the
-- same one.
SELECT token AS big_token FROM idem_claim('big-response') \gset
SELECT idem_complete('big-response', :big_token,
	jsonb_build_object('blob', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 20000) i)), 200);
SELECT pg_column_size(response) > 8192 AS larger_than_a_page_so_out_of_line
FROM idempotency.claims WHERE key = 'big-response';
SELECT outcome, md5(response::text) = (SELECT md5(jsonb_build_object('blob', string_agg(md5(i::text), ''))::text)
	FROM generate_series(1, 20000) i) AS whole_document, length(response->>'blob') AS blob_length
FROM idem_claim('big-response');
SELECT (idem_claim('big-response')).outcome, length((idem_claim('big-response')).response->>'blob') AS spread;

-- A call sees what its own statement did before it, as a call in a
-- statement of its own would: a row deleted earlier in the statement is
-- gone, and one completed earlier in it is replayed.
SELECT token AS same1 FROM idem_claim('same-statement-1') \gset
SELECT idem_complete('same-statement-1', :same1, '"first"', 200);
WITH gone AS (DELETE FROM claims WHERE key = 'same-statement-1' RETURNING key)
SELECT c.outcome, c.token > :same1 AS higher_token, c.response
FROM gone, LATERAL idem_claim(gone.key, '1 hour') c;
SELECT token AS same2 FROM idem_claim('same-statement-2') \gset
WITH done AS (SELECT idem_complete('same-statement-2', :same2, '"done"', 200) AS ok)
SELECT c.outcome, c.response, c.status
FROM done, LATERAL idem_claim('same-statement-2' || left(done.ok::text, 0), '1 hour') c;
