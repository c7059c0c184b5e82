--
-- Guarded partitioned tables.  idem_guard() on the parent guards every
-- partition, those created or attached later too.  An UPDATE that moves a
-- row to another partition (PostgreSQL deletes it from one and inserts it
-- into the other) is judged once, by the guard of the partition it leaves,
-- and its version is bumped exactly once; a move caused by the state and
-- one caused by another partition key alike.  No plain INSERT is ever
-- taken for the second half of a move.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

SELECT idem_machine('shipment', 'pending->paid', 'paid->shipped', 'pending->cancelled');

-- Partitioned by state: every transition moves the row.
CREATE TABLE shipments (id int NOT NULL, state text NOT NULL, region text NOT NULL,
						version int, note text NOT NULL DEFAULT '')
	PARTITION BY LIST (state);
CREATE TABLE shipments_open PARTITION OF shipments FOR VALUES IN ('pending');
CREATE TABLE shipments_paid PARTITION OF shipments FOR VALUES IN ('paid');
SELECT idem_guard('shipments', machine => 'shipment', version_column => 'version');
-- A partition created later, and one attached later (with its columns in
-- another order, and a dropped one), get the guard too.
CREATE TABLE shipments_closed (note text NOT NULL DEFAULT '', gone int, version int,
							   region text NOT NULL, state text NOT NULL, id int NOT NULL);
ALTER TABLE shipments_closed DROP COLUMN gone;
ALTER TABLE shipments ATTACH PARTITION shipments_closed FOR VALUES IN ('shipped', 'cancelled');
CREATE TABLE shipments_other PARTITION OF shipments DEFAULT;
SELECT tgrelid::regclass AS guarded, tgparentid <> 0 AS cloned
FROM pg_trigger WHERE tgname = 'idem_guard' AND tgrelid::regclass::text LIKE 'shipments%'
ORDER BY 1::text COLLATE "C";

INSERT INTO shipments (id, state, region, version) VALUES
	(1, 'pending', 'eu', 7), (2, 'pending', 'us', NULL), (3, 'pending', 'eu', 0), (4, 'pending', 'us', 0);
SELECT pg_temp.fails($$INSERT INTO shipments (id, state, region) VALUES (9, 'paid', 'eu')$$) AS insert_not_initial;

-- A legal move: judged once, version 1 -> 2.
UPDATE shipments SET state = 'paid' WHERE id = 1
RETURNING tableoid::regclass AS part, id, state, version;
-- An illegal one is refused by the partition the row would leave.
SELECT pg_temp.fails($$UPDATE shipments SET state = 'pending' WHERE id = 1$$) AS illegal_move;
SELECT pg_temp.fails($$UPDATE shipments SET state = 'cancelled' WHERE id = 1$$) AS illegal_move_too;
-- The version survives the move: a writer holding version 1 is stale.
SELECT pg_temp.fails($$UPDATE shipments SET state = 'shipped', version = 1 WHERE id = 1$$) AS stale_after_move;
UPDATE shipments SET state = 'shipped', version = 2 WHERE id = 1
RETURNING tableoid::regclass AS part, id, state, version;
-- Out of a terminal state, even into a partition with a default.
SELECT pg_temp.fails($$UPDATE shipments SET state = 'lost' WHERE id = 1$$) AS from_terminal;
-- Several rows in one statement, in different partitions afterwards.
UPDATE shipments SET state = CASE id WHEN 2 THEN 'paid' ELSE 'cancelled' END WHERE id IN (2, 3)
RETURNING tableoid::regclass AS part, id, state, version;
-- The same through MERGE.
MERGE INTO shipments s USING (VALUES (4)) AS v(id) ON s.id = v.id
WHEN MATCHED THEN UPDATE SET state = 'paid';
SELECT tableoid::regclass AS part, id, state, version FROM shipments ORDER BY id;

-- No plain INSERT passes for a move: not right after one in the same
-- transaction, not in the same statement (a data-modifying WITH), not in
-- a trigger on the partition the row enters.
BEGIN;
UPDATE shipments SET state = 'shipped' WHERE id = 2;
SELECT pg_temp.fails($$INSERT INTO shipments VALUES (2, 'shipped', 'us', 3)$$) AS insert_after_move;
ROLLBACK;
SELECT pg_temp.fails($$WITH moved AS (UPDATE shipments SET state = 'shipped' WHERE id = 4 RETURNING *)
	INSERT INTO shipments SELECT id + 100, state, region, version, note FROM moved$$) AS insert_beside_move;
CREATE FUNCTION copy_shipment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.id < 100 THEN
		INSERT INTO shipments (id, state, region, version) VALUES (NEW.id + 100, NEW.state, NEW.region, NEW.version);
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER a_copy BEFORE INSERT ON shipments_closed FOR EACH ROW EXECUTE FUNCTION copy_shipment();
SELECT pg_temp.fails($$UPDATE shipments SET state = 'shipped' WHERE id = 4$$) AS insert_within_move;
DROP TRIGGER a_copy ON shipments_closed;
-- A row another trigger drops on its way in leaves nothing for a later INSERT.
CREATE FUNCTION drop_shipment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RETURN CASE WHEN current_setting('regress.drop_shipments', true) = 'on' THEN NULL ELSE NEW END;
END $$;
CREATE TRIGGER a_drop BEFORE INSERT ON shipments_closed FOR EACH ROW EXECUTE FUNCTION drop_shipment();
BEGIN;
SET LOCAL regress.drop_shipments = on;
UPDATE shipments SET state = 'shipped' WHERE id = 4;
SET LOCAL regress.drop_shipments = off;
SELECT count(*) AS left_after_drop FROM shipments WHERE id = 4;
SELECT pg_temp.fails($$INSERT INTO shipments VALUES (4, 'shipped', 'us', 3, '')$$) AS insert_after_dropped_move;
ROLLBACK;
DROP TRIGGER a_drop ON shipments_closed;
SELECT tableoid::regclass AS part, id, state, version FROM shipments ORDER BY id;

-- Partitioned by another key: moving a row between regions changes no
-- state (the version is still bumped once); a move with a transition is
-- judged as one.  A trigger that routes a row (sets the partition key)
-- after the guard has judged it does not make the move a new row.
CREATE TABLE consignments (id int NOT NULL, state text NOT NULL, region text NOT NULL,
						   archived boolean NOT NULL DEFAULT false, version bigint)
	PARTITION BY LIST (region);
CREATE TABLE consignments_eu PARTITION OF consignments FOR VALUES IN ('eu')
	PARTITION BY LIST (archived);
CREATE TABLE consignments_eu_live PARTITION OF consignments_eu FOR VALUES IN (false);
CREATE TABLE consignments_eu_archive PARTITION OF consignments_eu FOR VALUES IN (true);
CREATE TABLE consignments_us PARTITION OF consignments FOR VALUES IN ('us');
SELECT idem_guard('consignments', machine => 'shipment', version_column => 'version');
INSERT INTO consignments (id, state, region) VALUES (1, 'pending', 'eu'), (2, 'pending', 'eu');
UPDATE consignments SET region = 'us' WHERE id = 1
RETURNING tableoid::regclass AS part, id, state, version;
UPDATE consignments SET region = 'eu', state = 'paid' WHERE id = 1
RETURNING tableoid::regclass AS part, id, state, version;
SELECT pg_temp.fails($$UPDATE consignments SET region = 'us', state = 'pending' WHERE id = 1$$) AS illegal_region_move;
SELECT pg_temp.fails($$UPDATE consignments SET region = 'us', version = 2 WHERE id = 1$$) AS stale_region_move;
CREATE FUNCTION archive_consignment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	NEW.archived := NEW.state IN ('shipped', 'cancelled');
	RETURN NEW;
END $$;
CREATE TRIGGER route BEFORE UPDATE ON consignments FOR EACH ROW EXECUTE FUNCTION archive_consignment();
UPDATE consignments SET state = 'shipped' WHERE id = 1
RETURNING tableoid::regclass AS part, id, state, version;
UPDATE consignments SET state = 'cancelled' WHERE id = 2
RETURNING tableoid::regclass AS part, id, state, version;
-- The same through the trigger path setting (partitioned tables always
-- use the trigger).
SET idempotency.guard_rewrite = off;
INSERT INTO consignments (id, state, region) VALUES (3, 'pending', 'us');
UPDATE consignments SET state = 'paid', region = 'eu' WHERE id = 3
RETURNING tableoid::regclass AS part, id, state, version;
RESET idempotency.guard_rewrite;
-- An UPDATE of a partition itself cannot move a row (PostgreSQL refuses);
-- without the routing trigger, it checks itself.
SELECT pg_temp.fails($$UPDATE consignments_eu_live SET state = 'shipped' WHERE id = 3$$) AS partition_constraint;
DROP TRIGGER route ON consignments;
UPDATE consignments_eu_live SET state = 'shipped' WHERE id = 3 RETURNING id, state, version;
SELECT pg_temp.fails($$UPDATE consignments_eu_live SET state = 'cancelled' WHERE id = 3$$) AS partition_illegal;
SELECT tableoid::regclass AS part, id, state, archived, version FROM consignments ORDER BY id;

-- A partition detached loses the guard it had from its parent (PostgreSQL
-- drops cloned triggers); a table with a guard of its own must lose it
-- before it is attached to a guarded parent.
ALTER TABLE consignments DETACH PARTITION consignments_us;
SELECT count(*) AS guards_left FROM pg_trigger
WHERE tgname = 'idem_guard' AND tgrelid = 'consignments_us'::regclass;
INSERT INTO consignments_us (id, state, region) VALUES (9, 'paid', 'us');
SELECT idem_guard('consignments_us', machine => 'shipment', version_column => 'version');
SELECT pg_temp.fails($$ALTER TABLE consignments ATTACH PARTITION consignments_us FOR VALUES IN ('us')$$) AS attach_guarded;
SELECT idem_unguard('consignments_us');
ALTER TABLE consignments ATTACH PARTITION consignments_us FOR VALUES IN ('us');
SELECT pg_temp.fails($$INSERT INTO consignments (id, state, region) VALUES (10, 'paid', 'us')$$) AS attached_guarded;
UPDATE consignments SET state = 'shipped', region = 'eu' WHERE id = 9
RETURNING tableoid::regclass AS part, id, state, version;

DROP TABLE shipments, consignments;
DROP FUNCTION copy_shipment(), drop_shipment(), archive_consignment();
DELETE FROM machines WHERE name = 'shipment';
