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

--
-- The claims table changed by hand.  A new claim is inserted directly,
-- not through SQL, while the table is as the extension made it; whatever
-- a DBA added that an insert meets is still applied (claims_table.c).
--
-- A CHECK constraint: a claim that breaks it is refused by it, one that
-- keeps it goes in.
BEGIN;
ALTER TABLE idempotency.claims ADD CONSTRAINT no_test_keys CHECK (key NOT LIKE 'test-%');
SELECT split_part(pg_temp.fails($$SELECT idempotency.idem_claim('test-1', '1 hour')$$), ' | ', 1) AS check_added;
SELECT outcome FROM idempotency.idem_claim('live-1', '1 hour');
ROLLBACK;
-- A CHECK calling a SQL function, which is then replaced: the new body
-- applies at once (the constraint is planned at each insert).
BEGIN;
CREATE FUNCTION key_allowed(k text) RETURNS boolean LANGUAGE sql IMMUTABLE
	AS $$ SELECT k <> 'banned-1' $$;
ALTER TABLE idempotency.claims ADD CONSTRAINT allowed_keys CHECK (key_allowed(key));
SELECT outcome FROM idempotency.idem_claim('banned-2', '1 hour');
CREATE OR REPLACE FUNCTION key_allowed(k text) RETURNS boolean LANGUAGE sql IMMUTABLE
	AS $$ SELECT k NOT LIKE 'banned-%' $$;
SELECT split_part(pg_temp.fails($$SELECT idempotency.idem_claim('banned-3', '1 hour')$$), ' | ', 1) AS function_replaced;
ROLLBACK;
-- A CHECK reading tableoid sees the table's.
BEGIN;
ALTER TABLE idempotency.claims ADD CONSTRAINT own_table
	CHECK (key <> 'elsewhere' OR tableoid = 0);
SELECT split_part(pg_temp.fails($$SELECT idempotency.idem_claim('elsewhere', '1 hour')$$), ' | ', 1) AS tableoid_check;
ROLLBACK;
-- A trigger: it sees every new claim.
BEGIN;
CREATE TABLE claim_audit (key text);
CREATE FUNCTION audit_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO claim_audit VALUES (NEW.key);
	RETURN NEW;
END $$;
CREATE TRIGGER audit AFTER INSERT ON idempotency.claims
	FOR EACH ROW EXECUTE FUNCTION audit_claim();
SELECT outcome FROM idempotency.idem_claim('audited', '1 hour');
SELECT key FROM claim_audit;
ROLLBACK;
-- A completion is written directly too, on the same terms: a CHECK it
-- breaks refuses it (and the claim stays open), a trigger sees it.
BEGIN;
ALTER TABLE idempotency.claims ADD CONSTRAINT no_teapots CHECK (status IS DISTINCT FROM 418);
SELECT token AS t FROM idempotency.idem_claim('teapot', '1 hour') \gset
SELECT split_part(pg_temp.fails(format('SELECT idempotency.idem_complete(''teapot'', %s, ''{}'', 418)', :t)),
	' | ', 1) AS check_on_completion;
SELECT state, status FROM idempotency.claims WHERE key = 'teapot';
SELECT idempotency.idem_complete('teapot', :t, '{}', 200) AS completed_within_check;
ROLLBACK;
BEGIN;
CREATE TABLE finish_audit (key text, state text);
CREATE FUNCTION audit_finish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO finish_audit VALUES (NEW.key, NEW.state);
	RETURN NEW;
END $$;
CREATE TRIGGER audit_finish AFTER UPDATE ON idempotency.claims
	FOR EACH ROW EXECUTE FUNCTION audit_finish();
SELECT token AS t FROM idempotency.idem_claim('audited-end', '1 hour') \gset
SELECT idempotency.idem_fail('audited-end', :t, true, '{"error": "x"}', 409);
SELECT key, state FROM finish_audit;
ROLLBACK;
-- A NOT NULL on a column a completion empties: it is refused by it.
BEGIN;
ALTER TABLE idempotency.claims ALTER COLUMN lease_until SET NOT NULL;
SELECT token AS t FROM idempotency.idem_claim('lease-kept', '1 hour') \gset
SELECT split_part(pg_temp.fails(format('SELECT idempotency.idem_complete(''lease-kept'', %s, ''{}'', 200)', :t)),
	' | ', 1) AS not_null_on_completion;
SELECT state FROM idempotency.claims WHERE key = 'lease-kept';
ROLLBACK;
-- A publication of updates on a table without a replica identity: the
-- completion is refused, as the UPDATE would be.
BEGIN;
SET LOCAL client_min_messages = error;
CREATE PUBLICATION claims_pub FOR TABLE idempotency.claims;
ALTER TABLE idempotency.claims REPLICA IDENTITY NOTHING;
SELECT token AS t FROM idempotency.idem_claim('published', '1 hour') \gset
SELECT split_part(pg_temp.fails(format('SELECT idempotency.idem_complete(''published'', %s, ''{}'', 200)', :t)),
	' | ', 1) AS no_replica_identity;
ROLLBACK;
-- A default on a column a new claim leaves empty: applied.
BEGIN;
ALTER TABLE idempotency.claims ALTER COLUMN recovery_point SET DEFAULT 'start';
SELECT outcome FROM idempotency.idem_claim('defaulted', '1 hour');
SELECT recovery_point FROM idempotency.claims WHERE key = 'defaulted';
ROLLBACK;
-- A NOT NULL on one: the claim is refused by it.
BEGIN;
ALTER TABLE idempotency.claims ALTER COLUMN response SET NOT NULL;
SELECT split_part(pg_temp.fails($$SELECT idempotency.idem_claim('not-null', '1 hour')$$), ' | ', 1) AS not_null_added;
ROLLBACK;
-- A column of another type: refused before anything is read through it
-- (idem_lookup returns the table's own row type, and still answers).
BEGIN;
ALTER TABLE idempotency.claims ALTER COLUMN status TYPE bigint;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('retyped', '1 hour')$$) AS column_retyped;
SELECT pg_temp.fails($$SELECT idempotency.idem_lookup('retyped')$$) AS column_retyped_lookup;
ROLLBACK;
BEGIN;
ALTER TABLE idempotency.claims DROP COLUMN recovery_point;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('dropped', '1 hour')$$) AS column_dropped;
ROLLBACK;
-- The columns 1.1.0 added, one or all dropped: refused too (only a table
-- of 1.0.0, not yet updated, goes without them).
BEGIN;
ALTER TABLE idempotency.claims DROP COLUMN headers;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('dropped', '1 hour')$$) AS headers_dropped;
ROLLBACK;
BEGIN;
ALTER TABLE idempotency.claims DROP COLUMN body, DROP COLUMN content_type, DROP COLUMN headers;
SELECT pg_temp.fails($$SELECT idempotency.idem_claim('dropped', '1 hour')$$) AS body_columns_dropped;
ROLLBACK;
-- The table as it was: new claims go in directly again, and a second
-- call finds them.
SELECT outcome, token > 0 AS has_token, attempts, expires_at > now() AS expires
  FROM idempotency.idem_claim('direct', '1 hour');
SELECT outcome FROM idempotency.idem_claim('direct', '1 hour');
SELECT state, attempts, lease_until > created_at AS leased, recovery_point, response
  FROM idempotency.claims WHERE key = 'direct';
-- Completed directly: every column the completion sets, the others kept.
SELECT idempotency.idem_complete('direct', token, '{"id": 7}', 201,
	body => '\x7b7d', content_type => 'application/json', headers => '{"location": "/orders/7"}')
  FROM idempotency.claims WHERE key = 'direct';
SELECT state, attempts, lease_until, recovery_point, response, status, body, content_type, headers,
	expires_at > created_at AS expires
  FROM idempotency.claims WHERE key = 'direct';
SELECT outcome, status, body FROM idempotency.idem_claim('direct', '1 hour');
DELETE FROM idempotency.claims WHERE key = 'direct';
