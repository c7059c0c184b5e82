--
-- Guarded UPDATEs that check themselves (idempotency.guard_rewrite): which
-- statements do, that they do without the row trigger, and that every
-- other statement still goes through the trigger with the same outcome.
-- The rules themselves are in guard.sql; races in specs/guard_race.spec.
--
SET search_path = public, idempotency;
\i sql/helpers.psql
\i sql/guard_helpers.psql

SELECT idem_machine('ticket', 'open->working', 'working->done', 'open->dropped') \g /dev/null
CREATE TABLE tickets (id int PRIMARY KEY, state text NOT NULL, version int NOT NULL, note text);
SELECT idem_guard('tickets', machine => 'ticket', version_column => 'version') \g /dev/null
INSERT INTO tickets SELECT g, 'open', 0, '' FROM generate_series(1, 6) g;

-- A plain UPDATE checks itself: the plan carries the checks, no trigger
-- runs, and the version is bumped all the same.
SELECT pg_temp.plan($$UPDATE tickets SET state = 'working' WHERE id = 1$$);
SELECT pg_temp.trigger_calls($$UPDATE tickets SET state = 'working' WHERE id = 1$$) AS plain;
SELECT pg_temp.trigger_calls($$UPDATE tickets SET state = 'done', version = 2 WHERE id = 1 RETURNING *$$) AS with_version;
SELECT pg_temp.trigger_calls($$UPDATE tickets SET note = 'x' WHERE id <= 2$$) AS other_column;
SELECT id, state, version, note FROM tickets WHERE id <= 2 ORDER BY id;

-- Its refusals are the trigger's, and change nothing.
SELECT pg_temp.fails($$UPDATE tickets SET state = 'open' WHERE id = 1$$) AS terminal;
SELECT pg_temp.fails($$UPDATE tickets SET state = 'done' WHERE id = 2$$) AS illegal;
SELECT pg_temp.fails($$UPDATE tickets SET state = 'working', version = 1 WHERE id = 2$$) AS stale;
SELECT pg_temp.fails($$UPDATE tickets SET state = NULL WHERE id = 2$$) AS no_state;
-- A repeat is skipped: UPDATE 0, version unchanged.
UPDATE tickets SET state = 'open', note = 'x' WHERE id = 2;
SELECT id, state, version, note FROM tickets WHERE id <= 2 ORDER BY id;

-- Statements that cannot check themselves go through the trigger, with
-- the same outcomes: a join, a volatile SET expression, a subquery in SET,
-- a subquery turned into a join, INSERT ... ON CONFLICT DO UPDATE.
SELECT pg_temp.trigger_calls($$UPDATE tickets t SET state = 'working' FROM (VALUES (3)) v(id) WHERE t.id = v.id$$) AS join_update;
SELECT pg_temp.fails($$UPDATE tickets t SET state = 'done' FROM (VALUES (4)) v(id) WHERE t.id = v.id$$) AS join_illegal;
SELECT pg_temp.trigger_calls($$UPDATE tickets SET note = random()::text WHERE id = 4$$) AS volatile_set;
SELECT pg_temp.trigger_calls($$UPDATE tickets SET note = (SELECT 'y') WHERE id = 4$$) AS subquery_set;
SELECT pg_temp.trigger_calls($$UPDATE tickets SET state = 'working' WHERE id IN (SELECT g FROM generate_series(4, 4) g)$$) AS semi_join;
SELECT pg_temp.fails($$INSERT INTO tickets VALUES (3, 'open', 0, '') ON CONFLICT (id) DO UPDATE SET state = 'open'$$) AS upsert_illegal;
SELECT id, state, version FROM tickets WHERE id IN (3, 4) ORDER BY id;

-- With idempotency.guard_rewrite off every UPDATE uses the trigger.
SET idempotency.guard_rewrite = off;
SELECT pg_temp.trigger_calls($$UPDATE tickets SET state = 'working' WHERE id = 5$$) AS rewrite_off;
SELECT pg_temp.fails($$UPDATE tickets SET state = 'open' WHERE id = 5$$) AS rewrite_off_illegal;
RESET idempotency.guard_rewrite;

-- Another BEFORE UPDATE row trigger could change the row after a check in
-- the statement: then the guard's trigger runs, after it (by name order).
CREATE FUNCTION pg_temp.shout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	NEW.note := upper(NEW.note);
	RETURN NEW;
END $$;
CREATE TRIGGER aaa_shout BEFORE UPDATE ON tickets FOR EACH ROW EXECUTE FUNCTION pg_temp.shout();
SELECT pg_temp.trigger_calls($$UPDATE tickets SET note = 'quiet' WHERE id = 6$$) AS other_trigger;
DROP TRIGGER aaa_shout ON tickets;
SELECT pg_temp.trigger_calls($$UPDATE tickets SET note = 'quiet' WHERE id = 6$$) AS other_trigger_dropped;

-- A plan kept from before the guard was disabled, or from before
-- session_replication_role = replica, behaves as the trigger would: no
-- checks, the statement's own version.
PREPARE reopen(int) AS UPDATE tickets SET state = 'open', version = 7 WHERE id = $1;
SELECT pg_temp.fails($$EXECUTE reopen(5)$$) AS enabled;
SET session_replication_role = replica;
EXECUTE reopen(5);
RESET session_replication_role;
ALTER TABLE tickets DISABLE TRIGGER idem_guard;
EXECUTE reopen(1);
ALTER TABLE tickets ENABLE TRIGGER idem_guard;
SELECT id, state, version FROM tickets WHERE id IN (1, 5) ORDER BY id;
DEALLOCATE reopen;

-- A user who may update only the state column still gets a new version
-- (the guard writes it, not the user), either way.
CREATE ROLE regress_guard_clerk;
GRANT USAGE ON SCHEMA public TO regress_guard_clerk;
GRANT SELECT, UPDATE (state) ON tickets TO regress_guard_clerk;
SET ROLE regress_guard_clerk;
UPDATE tickets SET state = 'dropped' WHERE id = 6 RETURNING id, state, version;
SELECT pg_temp.fails($$UPDATE tickets SET version = 1 WHERE id = 6$$) AS no_version_privilege;
RESET ROLE;

-- Through an updatable view, by a user allowed to update only the view:
-- repeats are skipped and refusals are the guard's, as with the trigger.
CREATE VIEW ticket_desk AS SELECT id, state, version FROM tickets;
GRANT SELECT, UPDATE ON ticket_desk TO regress_guard_clerk;
REVOKE ALL ON tickets FROM regress_guard_clerk;
SET ROLE regress_guard_clerk;
UPDATE ticket_desk SET state = 'dropped' WHERE id = 6;
SELECT pg_temp.fails($$UPDATE ticket_desk SET state = 'working' WHERE id = 6$$) AS through_view_illegal;
RESET ROLE;
DROP VIEW ticket_desk;

-- A statement that sets too many columns to compare in one call goes
-- through the trigger.
SELECT format('CREATE TABLE wide (id int PRIMARY KEY, state text NOT NULL, %s)',
              string_agg(format('c%s int DEFAULT 0', g), ', ')) FROM generate_series(1, 60) g \gexec
SELECT idem_guard('wide', machine => 'ticket') \g /dev/null
INSERT INTO wide (id, state) VALUES (1, 'open');
SELECT format('UPDATE wide SET state = %L, %s WHERE id = 1', 'working',
              string_agg(format('c%s = 1', g), ', ')) AS wide_update FROM generate_series(1, 60) g \gset
SELECT pg_temp.trigger_calls(:'wide_update') AS sixty_columns;
SELECT state, c60 FROM wide;
DROP TABLE wide;

-- Turning the setting off reaches plans kept before (prepared statements,
-- PL/pgSQL).
PREPARE note(int) AS UPDATE tickets SET note = 'kept' WHERE id = $1;
SELECT pg_temp.trigger_calls($$EXECUTE note(6)$$) AS kept_plan;
SET idempotency.guard_rewrite = off;
SELECT pg_temp.trigger_calls($$EXECUTE note(6)$$) AS kept_plan_after_off;
RESET idempotency.guard_rewrite;
DEALLOCATE note;

-- The check functions are for the planner.  Called any other way they
-- refuse, whatever the arguments, before looking at any row.
SELECT 'tickets'::regclass::oid AS rel, oid AS guard FROM pg_trigger
WHERE tgname = 'idem_guard' AND tgrelid = 'tickets'::regclass \gset
SELECT pg_temp.fails(format($$SELECT idempotency.idem_guard_check(%s, %s, '(0,1)', 'done'::text, 'open'::text, false, 0, 0)$$, :rel, :guard)) AS direct_check;
SELECT pg_temp.fails(format($$SELECT idempotency.idem_guard_check(%s, %s, '(0,1)', 1, 2, false, 0, 0)$$, :rel, :guard)) AS wrong_types;
SELECT pg_temp.fails(format($$SELECT idempotency.idem_guard_differs(%s, %s, NULL, 'open'::text, 'open'::text, 1, 1)$$, :rel, :guard)) AS direct_differs;
SELECT pg_temp.fails(format($$SELECT idempotency.idem_guard_bump(%s, %s, 1, false, 1)$$, :rel, :guard)) AS direct_bump;
-- Not even inside an UPDATE of the table, with a made-up row address.
SELECT pg_temp.fails(format($$UPDATE tickets SET note = 'x' WHERE id = 6 AND idempotency.idem_guard_differs(%s, %s, '(0,1)', 'open'::text, 'open'::text, 1, 1)$$, :rel, :guard)) AS made_up_ctid;

DROP TABLE tickets;
REVOKE USAGE ON SCHEMA public FROM regress_guard_clerk;
DROP ROLE regress_guard_clerk;
DELETE FROM machines WHERE name = 'ticket';
