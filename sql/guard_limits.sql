--
-- Guards at their limits: a machine of 600 transitions loaded by a new
-- session; refusals of a machine of many long states kept short; a version column at the end of its range (int and bigint),
-- refused rather than wrapped, on every path; a row left in a state the
-- machine no longer has, which may still be updated as long as it keeps
-- that state; machine names of 128 bytes and more, refused up front.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

-- A large machine, loaded afresh by a session that has never seen it.
SELECT idem_machine('big', VARIADIC ARRAY(SELECT format('s%s->s%s', g, g + 1)
	FROM generate_series(0, 599) g)) \g /dev/null
CREATE TABLE big_t (id int PRIMARY KEY, state text NOT NULL);
SELECT idem_guard('big_t', machine => 'big') \g /dev/null
\c -
SET search_path = public, idempotency;
\i sql/helpers.psql
INSERT INTO big_t VALUES (1, 's0'), (2, 's0');
UPDATE big_t SET state = 's1' WHERE id = 1;
SELECT pg_temp.fails($$UPDATE big_t SET state = 's600' WHERE id = 2$$) AS big_illegal;
SELECT id, state FROM big_t ORDER BY id;
DROP TABLE big_t;

-- A machine of many long states: a refusal lists ten of them, each cut
-- to 64 bytes, and says how many more there are.
SELECT idem_machine('wide', VARIADIC ARRAY(SELECT format('%s->%s', repeat('a', 100) || g, 'end' || g)
	FROM generate_series(10, 39) g)) \g /dev/null
CREATE TABLE wide_t (id int PRIMARY KEY, state text NOT NULL);
SELECT idem_guard('wide_t', machine => 'wide') \g /dev/null
SELECT pg_temp.fails($$INSERT INTO wide_t VALUES (1, 'end10')$$) AS many_initial_states;
INSERT INTO wide_t VALUES (1, repeat('a', 100) || '10');
SELECT length(pg_temp.fails($$UPDATE wide_t SET state = 'end11' WHERE id = 1$$)) < 500 AS short_detail;
DROP TABLE wide_t;

-- Versions at the end of their range.
SELECT idem_machine('lim', 'a->b', 'b->c') \g /dev/null
CREATE TABLE v8 (id int PRIMARY KEY, state text NOT NULL, version bigint NOT NULL DEFAULT 0);
CREATE TABLE v4 (id int PRIMARY KEY, state text NOT NULL, version int NOT NULL DEFAULT 0);
SELECT idem_guard('v8', machine => 'lim', version_column => 'version') \g /dev/null
SELECT idem_guard('v4', machine => 'lim', version_column => 'version') \g /dev/null
INSERT INTO v8 (id, state) VALUES (1, 'a');
INSERT INTO v4 (id, state) VALUES (1, 'a');
ALTER TABLE v8 DISABLE TRIGGER idem_guard;
ALTER TABLE v4 DISABLE TRIGGER idem_guard;
UPDATE v8 SET version = 9223372036854775807;
UPDATE v4 SET version = 2147483647;
ALTER TABLE v8 ENABLE TRIGGER idem_guard;
ALTER TABLE v4 ENABLE TRIGGER idem_guard;
SELECT pg_temp.fails($$UPDATE v8 SET state = 'b' WHERE id = 1$$) AS bigint_self_checking;
SELECT pg_temp.fails($$UPDATE v8 SET state = 'b', version = 9223372036854775807 WHERE id = 1$$) AS bigint_version_set;
SET idempotency.guard_rewrite = off;
SELECT pg_temp.fails($$UPDATE v8 SET state = 'b' WHERE id = 1$$) AS bigint_trigger;
RESET idempotency.guard_rewrite;
SELECT pg_temp.fails($$SELECT idem_transition('v8', 1, 'b')$$) AS bigint_transition;
SELECT pg_temp.fails($$UPDATE v4 SET state = 'b' WHERE id = 1$$) AS int_self_checking;
SELECT pg_temp.fails($$SELECT idem_transition('v4', 1, 'b')$$) AS int_transition;
SELECT 'v8' AS t, state, version FROM v8 UNION ALL SELECT 'v4', state, version FROM v4 ORDER BY 1;
-- One below the end is the last step.
ALTER TABLE v8 DISABLE TRIGGER idem_guard;
UPDATE v8 SET version = 9223372036854775806;
ALTER TABLE v8 ENABLE TRIGGER idem_guard;
UPDATE v8 SET state = 'b' WHERE id = 1 RETURNING state, version;
DROP TABLE v8, v4;

-- A row in a state the machine lost: it keeps working while it keeps the
-- state; a change of state is refused, saying the state is gone.
CREATE TABLE flow (id int PRIMARY KEY, state text NOT NULL, version int NOT NULL DEFAULT 0, note text);
SELECT idem_guard('flow', machine => 'lim', version_column => 'version') \g /dev/null
INSERT INTO flow (id, state) VALUES (1, 'a');
UPDATE flow SET state = 'b' WHERE id = 1;
SELECT idem_machine('lim', 'a->c') \g /dev/null
UPDATE flow SET note = 'self-checking' WHERE id = 1 RETURNING state, version, note;
UPDATE flow SET note = 'self-checking' WHERE id = 1 RETURNING state, version, note;
UPDATE flow SET state = 'b', note = 'same state' WHERE id = 1 RETURNING state, version, note;
SET idempotency.guard_rewrite = off;
UPDATE flow SET note = 'trigger' WHERE id = 1 RETURNING state, version, note;
RESET idempotency.guard_rewrite;
SELECT pg_temp.fails($$UPDATE flow SET state = 'c' WHERE id = 1$$) AS from_lost_state;
SELECT pg_temp.fails($$UPDATE flow SET state = 'a' WHERE id = 1$$) AS back_to_known;
-- idem_transition names only the machine's states, even the one the row is in.
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('flow', 1, 'b')$$) AS to_lost_state;
SELECT outcome, state, version FROM idem_transition('flow', 1, 'c');
DROP TABLE flow;
DELETE FROM machines WHERE name IN ('big', 'lim', 'wide');

-- Machine names: 127 bytes are fine, 128 are refused up front.
SELECT length(idem_machine(repeat('m', 127), 'a->b')) AS name_127;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine(repeat('m', 128), 'a->b')$$) AS name_128;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine(repeat('é', 64), 'a->b')$$) AS name_128_bytes;
SELECT split_part(pg_temp.fails($$INSERT INTO idempotency.machines (name) VALUES (repeat('m', 128))$$),
	' | ', 1) AS direct_insert;
CREATE TABLE named (id int PRIMARY KEY, state text NOT NULL);
SELECT pg_temp.fails($$SELECT idempotency.idem_guard('named', machine => repeat('m', 128))$$) AS guard_128;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'named'::regclass;
DROP TABLE named;
DELETE FROM machines WHERE name = repeat('m', 127);
