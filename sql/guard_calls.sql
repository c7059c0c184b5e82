--
-- The check functions of a self-checking UPDATE (guard_update.sql) act
-- only for the calls the planner put into that statement's plan.  Called
-- from anywhere else while such an UPDATE runs (its WHERE clause, a
-- subquery, RETURNING, a function in its SET list, a trigger or a foreign
-- key cascade it fires) they refuse with 55000 before looking at a row:
-- no row is locked, no page is touched.  Rows are probed with the row
-- addresses of a temporary table, as an attacker with UPDATE rights on a
-- guarded table and row-level security keeping it from other tenants'
-- rows would; one address is past the last line pointer of the page.
-- Races with another tenant's session: specs/guard_calls.spec.
--
SET search_path = public, idempotency;
\i sql/helpers.psql
\i sql/guard_helpers.psql
CREATE EXTENSION pageinspect;

SELECT idem_machine('call', 'open->working', 'working->done') \g /dev/null
CREATE TABLE calls_t (id int PRIMARY KEY, tenant text NOT NULL, state text NOT NULL,
	version int NOT NULL DEFAULT 0, note text NOT NULL DEFAULT '')
	WITH (autovacuum_enabled = off);
SELECT idem_guard('calls_t', machine => 'call', version_column => 'version') \g /dev/null
-- Block 0 holds rows 2 (tenant a), 3 and 4 (tenant b) at (0,1) .. (0,3),
-- then rows of tenant z up to its last line pointer; row 1, which tenant
-- a's statements below update, is on a later block.
INSERT INTO calls_t (id, tenant, state) VALUES (2, 'a', 'open'), (3, 'b', 'open'), (4, 'b', 'open');
INSERT INTO calls_t (id, tenant, state) SELECT g, 'z', 'open' FROM generate_series(100, 399) g;
INSERT INTO calls_t (id, tenant, state) VALUES (1, 'a', 'open');
SELECT (SELECT max(lp) FROM heap_page_items(get_raw_page('calls_t', 0))) < 250 AS room_past_last_row,
	(SELECT ctid FROM calls_t WHERE id = 1) > '(0,300)' AS row_1_elsewhere;
CREATE TABLE calls_child (id int REFERENCES calls_t ON UPDATE CASCADE);
INSERT INTO calls_child VALUES (1);

-- Tenant a may update only its own rows.
CREATE ROLE regress_calls_a;
GRANT USAGE ON SCHEMA public TO regress_calls_a;
GRANT SELECT, UPDATE ON calls_t TO regress_calls_a;
GRANT SELECT, UPDATE ON calls_child TO regress_calls_a;
ALTER TABLE calls_t ENABLE ROW LEVEL SECURITY;
CREATE POLICY calls_tenant ON calls_t USING (tenant = 'a');

SELECT 'calls_t'::regclass::oid AS rel, oid AS guard FROM pg_trigger
WHERE tgname = 'idem_guard' AND tgrelid = 'calls_t'::regclass \gset

-- The page's header, and each line pointer and tuple header on it (a
-- locked or updated row has a new xmax): nothing below may change them.
CREATE VIEW calls_page AS
	SELECT h::text AS header,
		(SELECT string_agg(i::text, ' ' ORDER BY lp)
		 FROM heap_page_items(get_raw_page('calls_t', 0)) i) AS items
	FROM page_header(get_raw_page('calls_t', 0)) h;
SELECT count(*) FROM calls_t;	-- hint bits set
CREATE TABLE calls_page_before AS SELECT * FROM calls_page;
CREATE VIEW calls_untouched AS
	SELECT p.header = b.header AS same_header, p.items = b.items AS same_rows
	FROM calls_page p, calls_page_before b;
SELECT * FROM calls_untouched;

-- A probe an attacker writes: a temporary table whose row addresses
-- (0,1) .. (0,250) it passes to the check functions, and a function that
-- does so from wherever it is called.
SET ROLE regress_calls_a;
CREATE TEMP TABLE probe AS SELECT FROM generate_series(1, 291);
CREATE FUNCTION pg_temp.probe(at tid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	RETURN (SELECT bool_or(idempotency.idem_guard_differs('calls_t'::regclass::oid, tg.oid,
		p.ctid, 'open'::text, 'open'::text, 1, 1))
		FROM probe p, pg_trigger tg
		WHERE p.ctid = at AND tg.tgrelid = 'calls_t'::regclass AND tg.tgname = 'idem_guard');
END $$;
CREATE FUNCTION pg_temp.probe_check(at tid) RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
	RETURN (SELECT min(idempotency.idem_guard_check('calls_t'::regclass::oid, tg.oid,
		p.ctid, 'done'::text, 'open'::text, false, 1, 1))
		FROM probe p, pg_trigger tg
		WHERE p.ctid = at AND tg.tgrelid = 'calls_t'::regclass AND tg.tgname = 'idem_guard');
END $$;
CREATE FUNCTION pg_temp.probe_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_temp.probe('(0,2)');
	PERFORM pg_temp.probe('(0,250)');
	RETURN NEW;
END $$;

-- In the WHERE clause of the UPDATE itself, and in a subquery there: row
-- (0,2) belongs to tenant b, (0,250) is past the page's line pointers.
SELECT pg_temp.fails(format($$UPDATE calls_t SET note = 'x' WHERE id = 1
	AND idempotency.idem_guard_differs(%s, %s, ctid, 'open'::text, 'open'::text, 1, 1)$$,
	:rel, :guard)) AS in_where;
SELECT pg_temp.fails(format($$UPDATE calls_t SET note = 'x' WHERE id = 1
	AND EXISTS (SELECT FROM probe p WHERE p.ctid IN ('(0,2)', '(0,250)') AND calls_t.id > 0
		AND idempotency.idem_guard_differs(%s, %s, p.ctid, 'open'::text, 'open'::text, 1, 1))$$,
	:rel, :guard)) AS in_subquery;
SELECT pg_temp.fails(format($$UPDATE calls_t SET note = 'x' WHERE id = 1
	AND EXISTS (SELECT FROM probe p WHERE p.ctid IN ('(0,2)', '(0,250)') AND calls_t.id > 0
		AND idempotency.idem_guard_check(%s, %s, p.ctid, 'done'::text, 'open'::text, false, 1, 1) IS NOT NULL)$$,
	:rel, :guard)) AS check_in_subquery;
-- Hidden in a function, so that the statement still checks itself.
SELECT pg_temp.fails($$UPDATE calls_t SET note = 'x' WHERE id = 1 AND pg_temp.probe('(0,2)')$$) AS function_in_where;
SELECT pg_temp.fails($$UPDATE calls_t SET note = 'x' WHERE id = 1 RETURNING pg_temp.probe('(0,2)')$$) AS in_returning;
SELECT pg_temp.fails($$UPDATE calls_t SET note = 'x' WHERE id = 1 RETURNING pg_temp.probe('(0,250)')$$) AS in_returning_past_page;
SELECT pg_temp.fails($$UPDATE calls_t SET note = pg_temp.probe_check('(0,2)') WHERE id = 1$$) AS in_set_function;
RESET ROLE;
SELECT * FROM calls_untouched;

-- From triggers the UPDATE fires: an AFTER row trigger, and a trigger on a
-- table a foreign key cascades the UPDATE into.
CREATE TRIGGER calls_after AFTER UPDATE ON calls_t FOR EACH ROW
	EXECUTE FUNCTION pg_temp.probe_trigger();
SET ROLE regress_calls_a;
SELECT pg_temp.fails($$UPDATE calls_t SET note = 'x' WHERE id = 1$$) AS after_trigger;
RESET ROLE;
DROP TRIGGER calls_after ON calls_t;
CREATE TRIGGER calls_cascaded BEFORE UPDATE ON calls_child FOR EACH ROW
	EXECUTE FUNCTION pg_temp.probe_trigger();
SET ROLE regress_calls_a;
SELECT pg_temp.fails($$UPDATE calls_t SET id = 11 WHERE id = 1$$) AS cascaded_foreign_key;
RESET ROLE;
DROP TRIGGER calls_cascaded ON calls_child;
SELECT * FROM calls_untouched;

-- The statements themselves still check themselves and work.
SET ROLE regress_calls_a;
SELECT pg_temp.trigger_calls($$UPDATE calls_t SET note = 'x' WHERE id = 1$$) AS plain_update;
SELECT pg_temp.fails($$UPDATE calls_t SET state = 'done' WHERE id = 2$$) AS still_refused;
UPDATE calls_t SET state = 'working' WHERE id = 2 RETURNING id, state, version;
UPDATE calls_t SET id = 12 WHERE id = 1 RETURNING id, state, version;
RESET ROLE;
SELECT * FROM calls_child;

DROP VIEW calls_untouched, calls_page;
DROP TABLE calls_page_before, calls_child, calls_t;
DROP TABLE probe;
DROP FUNCTION pg_temp.probe, pg_temp.probe_check, pg_temp.probe_trigger;
REVOKE USAGE ON SCHEMA public FROM regress_calls_a;
DROP ROLE regress_calls_a;
DELETE FROM machines WHERE name = 'call';
DROP EXTENSION pageinspect;
