--
-- One of the extension's own tables gone missing (renamed here, inside a
-- transaction that is rolled back): the error says what repairs it, and
-- that dropping and recreating the extension does not.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

BEGIN;
ALTER TABLE idempotency.claims RENAME TO claims_elsewhere;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('repair', '1 hour')$$) AS claims_missing;
ROLLBACK;
BEGIN;
ALTER TABLE idempotency.policies RENAME TO policies_elsewhere;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('repair', '1 hour')$$) AS policies_missing;
ROLLBACK;
SELECT outcome FROM idempotency.idem_claim('repair', '1 hour');
DELETE FROM idempotency.claims WHERE key = 'repair';
