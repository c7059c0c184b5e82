--
-- What a guard's refusal shows of a row.  Like PostgreSQL's own constraint
-- errors, it leaves out what the role may not read: the row's state and
-- version, unless the role may SELECT them (on the table, or the column,
-- or through a partition's parent) and no row-level security is in force
-- for it.  The statement's own values (the state it sets, the version it
-- expects) are shown.  The self-checking UPDATE and the trigger alike.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

SELECT idem_machine('memo', 'draft->review', 'review->published', 'draft->deleted');
CREATE TABLE memos (id int PRIMARY KEY, state text NOT NULL, version int, note text);
INSERT INTO memos VALUES (4, 'legacy', 0, '');
SELECT idem_guard('memos', machine => 'memo', version_column => 'version');
INSERT INTO memos VALUES (1, 'draft', 0, ''), (2, 'draft', 0, ''), (3, 'draft', 0, '');
UPDATE memos SET state = 'review' WHERE id = 1;
UPDATE memos SET state = 'deleted' WHERE id = 2;

CREATE ROLE regress_memo_writer;
GRANT SELECT (id), INSERT, UPDATE ON memos TO regress_memo_writer;
SET ROLE regress_memo_writer;
-- The old state and version are left out; the new state is the writer's own.
SELECT pg_temp.fails($$UPDATE memos SET state = 'draft' WHERE id = 1$$) AS illegal;
SELECT pg_temp.fails($$UPDATE memos SET state = 'review' WHERE id = 2$$) AS from_terminal;
SELECT pg_temp.fails($$UPDATE memos SET state = 'published', version = 1 WHERE id = 1$$) AS stale;
-- A row in a state the machine lacks, moved to another state: its state
-- is not shown, the writer's own is.
SELECT pg_temp.fails($$UPDATE memos SET state = 'published' WHERE id = 4$$) AS unknown_old_state;
SELECT pg_temp.fails($$INSERT INTO memos VALUES (5, 'review', 0, '')$$) AS insert_not_initial;
-- Through the trigger: the same.
SET idempotency.guard_rewrite = off;
SELECT pg_temp.fails($$UPDATE memos SET state = 'draft' WHERE id = 1$$) AS illegal_trigger;
SELECT pg_temp.fails($$UPDATE memos SET state = 'review' WHERE id = 2$$) AS from_terminal_trigger;
SELECT pg_temp.fails($$UPDATE memos SET state = 'published', version = 1 WHERE id = 1$$) AS stale_trigger;
SELECT pg_temp.fails($$UPDATE memos SET state = 'published' WHERE id = 4$$) AS unknown_old_state_trigger;
RESET idempotency.guard_rewrite;
RESET ROLE;

-- Allowed to read the state column, the writer sees the state, not the version.
GRANT SELECT (state) ON memos TO regress_memo_writer;
SET ROLE regress_memo_writer;
SELECT pg_temp.fails($$UPDATE memos SET state = 'draft' WHERE id = 1$$) AS illegal_state_readable;
SELECT pg_temp.fails($$UPDATE memos SET state = 'published', version = 1 WHERE id = 1$$) AS stale_state_readable;
SELECT pg_temp.fails($$INSERT INTO memos VALUES (5, 'review', 0, '')$$) AS insert_state_readable;
RESET ROLE;

-- Row-level security in force for the role: nothing of the row, even with SELECT.
GRANT SELECT ON memos TO regress_memo_writer;
CREATE POLICY everything ON memos USING (true);
ALTER TABLE memos ENABLE ROW LEVEL SECURITY;
SET ROLE regress_memo_writer;
SELECT pg_temp.fails($$UPDATE memos SET state = 'draft' WHERE id = 1$$) AS illegal_under_rls;
SELECT pg_temp.fails($$UPDATE memos SET state = 'published', version = 1 WHERE id = 1$$) AS stale_under_rls;
RESET ROLE;
ALTER TABLE memos DISABLE ROW LEVEL SECURITY;
SET ROLE regress_memo_writer;
SELECT pg_temp.fails($$UPDATE memos SET state = 'published', version = 1 WHERE id = 1$$) AS stale_with_select;
RESET ROLE;

-- A partition's row, with rights on the parent only.
CREATE TABLE pmemos (id int NOT NULL, region text NOT NULL, state text NOT NULL, version int)
	PARTITION BY LIST (region);
CREATE TABLE pmemos_eu PARTITION OF pmemos FOR VALUES IN ('eu');
SELECT idem_guard('pmemos', machine => 'memo', version_column => 'version');
INSERT INTO pmemos VALUES (1, 'eu', 'draft', 0);
UPDATE pmemos SET state = 'deleted';
GRANT SELECT (id), UPDATE ON pmemos TO regress_memo_writer;
SET ROLE regress_memo_writer;
SELECT pg_temp.fails($$UPDATE pmemos SET state = 'review' WHERE id = 1$$) AS partition_hidden;
RESET ROLE;
GRANT SELECT ON pmemos TO regress_memo_writer;
SET ROLE regress_memo_writer;
SELECT pg_temp.fails($$UPDATE pmemos SET state = 'review' WHERE id = 1$$) AS partition_readable_through_parent;
RESET ROLE;

DROP TABLE memos, pmemos;
DROP ROLE regress_memo_writer;
DELETE FROM machines WHERE name = 'memo';
