--
-- Guards of tables altered after idem_guard(): a state or version column
-- retyped, dropped or renamed, a guard trigger attached by hand to columns
-- it cannot read, enum labels renamed or added.  Each is reported at the
-- next write (42804, 42703), by the trigger, the self-checking UPDATE,
-- COPY and idem_transition alike, and a column is never read as the type
-- it used to have.  The same seen from other sessions: specs/guard_schema.spec.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

SELECT idem_machine('parcel', 'pending->paid', 'paid->shipped');
CREATE TABLE parcels (id int PRIMARY KEY, state text NOT NULL, version int, note text);
SELECT idem_guard('parcels', machine => 'parcel', version_column => 'version');
INSERT INTO parcels VALUES (1, 'pending', 0, ''), (2, 'pending', 0, '');

-- The state column retyped to int: refused on every path, nothing changes.
ALTER TABLE parcels ALTER COLUMN state TYPE int USING 0;
SELECT pg_temp.fails($$INSERT INTO parcels VALUES (3, 0, 0, '')$$) AS insert_int_state;
SELECT pg_temp.fails($$UPDATE parcels SET state = 1 WHERE id = 1$$) AS update_int_state;
SET idempotency.guard_rewrite = off;
SELECT pg_temp.fails($$UPDATE parcels SET state = 1 WHERE id = 1$$) AS trigger_int_state;
RESET idempotency.guard_rewrite;
SELECT pg_temp.fails($$COPY parcels FROM PROGRAM 'printf "3\t0\t0\tx\n"'$$) AS copy_int_state;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('parcels', 1, 'paid')$$) AS transition_int_state;
-- A fixed-width type that is no text either.
ALTER TABLE parcels ALTER COLUMN state TYPE name USING 'pending';
SELECT pg_temp.fails($$UPDATE parcels SET state = 'paid' WHERE id = 1$$) AS name_state;
-- Back to text: the guard works again at once.
ALTER TABLE parcels ALTER COLUMN state TYPE text;
UPDATE parcels SET state = 'paid' WHERE id = 1 RETURNING id, state, version;
SELECT * FROM idem_transition('parcels', 2, 'paid');
SELECT id, state, version FROM parcels ORDER BY id;

-- The version column retyped: numeric is refused, bigint is fine.
ALTER TABLE parcels ALTER COLUMN version TYPE numeric;
SELECT pg_temp.fails($$UPDATE parcels SET state = 'shipped' WHERE id = 1$$) AS numeric_version;
SELECT pg_temp.fails($$INSERT INTO parcels VALUES (3, 'pending', 0, '')$$) AS numeric_version_insert;
ALTER TABLE parcels ALTER COLUMN version TYPE bigint;
UPDATE parcels SET state = 'shipped', version = 2 WHERE id = 1 RETURNING id, state, version;

-- Dropped columns are reported; a new column of the old name is checked
-- like any other.
ALTER TABLE parcels DROP COLUMN version;
SELECT pg_temp.fails($$INSERT INTO parcels VALUES (3, 'pending', '')$$) AS dropped_version;
SELECT pg_temp.fails($$UPDATE parcels SET state = 'shipped' WHERE id = 2$$) AS dropped_version_update;
ALTER TABLE parcels ADD COLUMN version text;
SELECT pg_temp.fails($$UPDATE parcels SET state = 'shipped' WHERE id = 2$$) AS text_version;
ALTER TABLE parcels DROP COLUMN version, ADD COLUMN version int;
UPDATE parcels SET state = 'shipped' WHERE id = 2 RETURNING id, state, version;
ALTER TABLE parcels RENAME COLUMN state TO phase;
SELECT pg_temp.fails($$INSERT INTO parcels VALUES (3, 'pending', '')$$) AS renamed_state;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('parcels', 1, 'paid')$$) AS renamed_state_transition;
ALTER TABLE parcels RENAME COLUMN phase TO state;
INSERT INTO parcels VALUES (3, 'pending', '') RETURNING id, state, version;
ALTER TABLE parcels DROP COLUMN state;
SELECT pg_temp.fails($$INSERT INTO parcels VALUES (4, '')$$) AS dropped_state;
SELECT pg_temp.fails($$UPDATE parcels SET note = 'x' WHERE id = 1$$) AS dropped_state_update;

-- Guard triggers attached by hand to columns of other types.
CREATE TABLE counters (id int, n int, label text);
INSERT INTO counters VALUES (1, 0, 'a');
CREATE TRIGGER idem_guard BEFORE INSERT OR UPDATE ON counters FOR EACH ROW
	EXECUTE FUNCTION idempotency.idem_guard_trigger('parcel', 'n', '', 'lenient');
SELECT pg_temp.fails($$INSERT INTO counters VALUES (2, 0, 'b')$$) AS int_state_by_hand;
SELECT pg_temp.fails($$UPDATE counters SET n = 1$$) AS int_state_by_hand_update;
SET idempotency.guard_rewrite = off;
SELECT pg_temp.fails($$UPDATE counters SET n = 1$$) AS int_state_by_hand_trigger;
RESET idempotency.guard_rewrite;
DROP TRIGGER idem_guard ON counters;
CREATE TRIGGER idem_guard BEFORE INSERT OR UPDATE ON counters FOR EACH ROW
	EXECUTE FUNCTION idempotency.idem_guard_trigger('parcel', 'label', 'label', 'lenient');
SELECT pg_temp.fails($$UPDATE counters SET label = 'b'$$) AS text_version_by_hand;
SELECT * FROM counters;

-- Enum states are matched by label.  A label renamed with ALTER TYPE is no
-- state of the machine until the machine is renamed too; rows in other
-- states are not affected.  (This session cached the guard before the
-- rename: the new label must not pass for the old state.)
CREATE TYPE eparcel_state AS ENUM ('pending', 'paid', 'shipped');
SELECT idem_machine('eparcel', 'pending->paid', 'paid->shipped');
CREATE TABLE eparcels (id int PRIMARY KEY, state eparcel_state NOT NULL, version int);
SELECT idem_guard('eparcels', machine => 'eparcel', version_column => 'version');
INSERT INTO eparcels VALUES (1, 'pending'), (2, 'pending');
UPDATE eparcels SET state = 'paid' WHERE id = 2 RETURNING id, state, version;
ALTER TYPE eparcel_state RENAME VALUE 'paid' TO 'settled';
SELECT pg_temp.fails($$UPDATE eparcels SET state = 'shipped' WHERE id = 2$$) AS renamed_label_from;
SELECT pg_temp.fails($$UPDATE eparcels SET state = 'settled' WHERE id = 1$$) AS renamed_label_to;
SET idempotency.guard_rewrite = off;
SELECT pg_temp.fails($$UPDATE eparcels SET state = 'shipped' WHERE id = 2$$) AS renamed_label_trigger;
RESET idempotency.guard_rewrite;
SELECT pg_temp.fails($$INSERT INTO eparcels VALUES (3, 'settled')$$) AS renamed_label_insert;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('eparcels', 1, 'paid')$$) AS transition_to_missing_label;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('eparcels', 1, 'settled')$$) AS transition_to_renamed_label;
INSERT INTO eparcels VALUES (3, 'pending') RETURNING id, state, version;
-- The machine follows the rename: everything moves again.
SELECT idem_machine('eparcel', 'pending->settled', 'settled->shipped');
UPDATE eparcels SET state = 'shipped' WHERE id = 2 RETURNING id, state, version;
SELECT * FROM idem_transition('eparcels', 1, 'settled');
-- A state added to the machine before the type has it: usable once the
-- label is added.
SELECT idem_machine('eparcel', 'pending->settled', 'settled->shipped', 'shipped->returned');
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('eparcels', 2, 'returned')$$) AS label_not_yet_added;
ALTER TYPE eparcel_state ADD VALUE 'returned';
UPDATE eparcels SET state = 'returned' WHERE id = 2 RETURNING id, state, version;
-- The column retyped to another enum that lacks a state.
CREATE TYPE eparcel_state2 AS ENUM ('pending', 'settled', 'shipped', 'lost');
ALTER TABLE eparcels ALTER COLUMN state TYPE eparcel_state2 USING
	(CASE WHEN state = 'returned' THEN 'lost' ELSE state::text END)::eparcel_state2;
SELECT pg_temp.fails($$UPDATE eparcels SET state = 'shipped' WHERE id = 2$$) AS other_enum_lost;
UPDATE eparcels SET state = 'shipped' WHERE id = 1 RETURNING id, state, version;
SELECT id, state, version FROM eparcels ORDER BY id;

DROP TABLE parcels, counters, eparcels;
DROP TYPE eparcel_state, eparcel_state2;
DELETE FROM machines WHERE name IN ('parcel', 'eparcel');
