--
-- idempotency.stats: cluster-wide counters, and their reset.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

SELECT idem_stats_reset();
SELECT claims_claimed, claims_replayed, claims_in_progress, claims_mismatched, claims_reclaimed,
       purged_rows, ids_generated, guard_rejections, stale_versions, clock_regressions,
       stats_reset > now() - interval '1 minute' AS reset_just_now
FROM stats;

-- IDs, claims of every outcome, guard refusals and stale versions.
SELECT count(snowflake_id()) FROM generate_series(1, 25);
SELECT (idem_claim('s1', '1 hour', fingerprint => idem_fingerprint('{"a": 1}'))).token AS t1 \gset
SELECT idem_complete('s1', :t1, '{"ok": true}', 200);
SELECT outcome FROM idem_claim('s1', '1 hour', fingerprint => idem_fingerprint('{"a": 1}'));
SELECT outcome FROM idem_claim('s1', '1 hour', fingerprint => idem_fingerprint('{"a": 2}'));
SELECT outcome FROM idem_claim('s3', '1 hour', lease => '10 milliseconds');
SELECT pg_sleep(0.05);
SELECT outcome FROM idem_claim('s3', '1 hour');
SELECT outcome FROM idem_claim('s2', '1 hour');
SELECT outcome FROM idem_claim('s2', '1 hour');

SELECT idem_machine('stat', 'new->done') \g /dev/null
CREATE TABLE counted (id int PRIMARY KEY, state text NOT NULL, version int NOT NULL);
SELECT idem_guard('counted', machine => 'stat', version_column => 'version') \g /dev/null
INSERT INTO counted VALUES (1, 'new', 0);
SELECT pg_temp.fails($$INSERT INTO counted VALUES (2, 'done', 0)$$) AS not_initial;
SELECT pg_temp.fails($$UPDATE counted SET state = 'done', version = 7 WHERE id = 1$$) AS stale;
UPDATE counted SET state = 'done' WHERE id = 1;
SELECT pg_temp.fails($$UPDATE counted SET state = 'new' WHERE id = 1$$) AS terminal;
SELECT outcome FROM idem_transition('counted', 1, 'new');
SELECT outcome FROM idem_transition('counted', 1, 'done', expected_version => 1);

SELECT claims_claimed, claims_replayed, claims_in_progress, claims_mismatched, claims_reclaimed,
       ids_generated, guard_rejections, stale_versions
FROM stats;

-- Only the owner (and those it grants to) may reset; anyone may read.
CREATE ROLE regress_stats_reader;
SET ROLE regress_stats_reader;
SELECT ids_generated >= 25 AS readable FROM idempotency.stats;
SELECT pg_temp.fails($$SELECT idempotency.idem_stats_reset()$$) AS reset_refused;
RESET ROLE;
DROP ROLE regress_stats_reader;

SELECT idem_stats_reset();
SELECT ids_generated, guard_rejections FROM stats;

DROP TABLE counted;
DELETE FROM machines WHERE name = 'stat';
DELETE FROM claims WHERE key IN ('s1', 's2', 's3');
