--
-- State-transition guards: machines as data, the guard trigger on INSERT,
-- UPDATE and COPY, no-op repeats, version checks, and every refusal with
-- its SQLSTATE.  Concurrent transitions are in specs/guard_race.spec.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

-- Machines.
SELECT idem_machine('order', 'pending->paid', 'paid->shipped', 'pending->cancelled',
                    'paid->refunded', ' shipped -> delivered ');
SELECT machine, from_state, to_state FROM transitions WHERE machine = 'order'
ORDER BY from_state COLLATE "C", to_state COLLATE "C";
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('', 'a->b')$$) AS empty_name;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine(NULL, 'a->b')$$) AS null_name;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('m', VARIADIC '{}')$$) AS no_transitions;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('m', 'a-b')$$) AS no_arrow;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('m', 'a->')$$) AS no_target;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('m', 'a->b->c')$$) AS two_arrows;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('m', 'a->b', NULL)$$) AS null_transition;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('m', 'a->a')$$) AS self_loop;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('m', 'a->b', 'a -> b')$$) AS duplicate;
SELECT pg_temp.fails($$SELECT idempotency.idem_machine('m', 'a->b', 'b->a')$$) AS no_initial_state;
SELECT count(*) AS half_made FROM machines WHERE name = 'm';

-- A guarded table with a text state and an int version, indexed (the guard
-- writes the new version into the row; indexes must see it).  Row 8 was
-- there before the guard, with no version.
CREATE TABLE orders (id int PRIMARY KEY, state text NOT NULL, version int, note text);
CREATE INDEX orders_version ON orders (version);
INSERT INTO orders VALUES (8, 'pending', NULL, 'old');
SELECT idem_guard('orders', machine => 'order', version_column => 'version');
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'orders'::regclass;

-- INSERT: an initial state only; the version starts at 1 whatever is given.
INSERT INTO orders VALUES (1, 'pending', 42, 'a'), (2, 'pending', NULL, 'b'), (3, 'pending', 7, 'c');
SELECT id, state, version FROM orders ORDER BY id;
SELECT pg_temp.fails($$INSERT INTO orders VALUES (9, 'paid', 1, 'x')$$) AS not_initial;
SELECT pg_temp.fails($$INSERT INTO orders VALUES (9, 'lost', 1, 'x')$$) AS unknown_state;

-- UPDATE along the machine; the trigger bumps the version.
UPDATE orders SET state = 'paid' WHERE id = 1;
SELECT id, state, version FROM orders WHERE id = 1;
-- A repeat (the same state, nothing else changed) is skipped: UPDATE 0, the
-- version stays.  Duplicate callbacks succeed without effect.
UPDATE orders SET state = 'paid' WHERE id = 1;
UPDATE orders SET state = 'paid', note = 'a' WHERE id = 1;
SELECT id, state, version FROM orders WHERE id = 1;
-- The same state with another change is an ordinary update.
UPDATE orders SET note = 'gift' WHERE id = 1;
SELECT id, state, version, note FROM orders WHERE id = 1;
-- Refused transitions name table, machine, from and to; nothing changes.
SELECT pg_temp.fails($$UPDATE orders SET state = 'pending' WHERE id = 1$$) AS backwards;
SELECT pg_temp.fails($$UPDATE orders SET state = 'delivered' WHERE id = 1$$) AS skipping_a_state;
SELECT pg_temp.fails($$UPDATE orders SET state = 'lost' WHERE id = 1$$) AS unknown_target;
UPDATE orders SET state = 'cancelled' WHERE id = 2;
SELECT pg_temp.fails($$UPDATE orders SET state = 'paid' WHERE id = 2$$) AS out_of_terminal;
SELECT pg_temp.fails($$UPDATE orders SET state = NULL WHERE id = 3$$) AS null_state;
-- One illegal row fails the whole statement.
SELECT pg_temp.fails($$UPDATE orders SET state = 'paid'$$) AS bulk_with_one_illegal;
SELECT id, state, version FROM orders ORDER BY id;

-- Optimistic locking: a version set by the statement must be the stored one.
UPDATE orders SET state = 'shipped', version = 3 WHERE id = 1;
SELECT id, state, version FROM orders WHERE id = 1;
SELECT pg_temp.fails($$UPDATE orders SET state = 'delivered', version = 3 WHERE id = 1$$) AS stale_version;
-- Stale and illegal at once: staleness is reported, since the writer must
-- read the row again before anything else.
SELECT pg_temp.fails($$UPDATE orders SET state = 'pending', version = 3 WHERE id = 1$$) AS stale_before_illegal;
SELECT id, state, version FROM orders WHERE id = 1;
-- A repeat with an old version is still a harmless repeat.
UPDATE orders SET state = 'shipped', version = 1 WHERE id = 1;

-- COPY goes through the guard too.
COPY orders FROM stdin;
4	pending	99	copied
\.
SELECT id, state, version, note FROM orders WHERE id = 4;
SELECT pg_temp.fails($$COPY orders FROM PROGRAM 'printf "5\tshipped\t1\tx\n"'$$) AS copy_not_initial;

-- A DBA edits the machine directly: the effect is immediate (and, at
-- commit, in every other session).
INSERT INTO transitions VALUES ('order', 'shipped', 'returned');
UPDATE orders SET state = 'returned' WHERE id = 1;
SELECT id, state, version FROM orders WHERE id = 1;
UPDATE machines SET initial_states = '{pending,paid}' WHERE name = 'order';
INSERT INTO orders VALUES (6, 'paid', 0, 'imported');
UPDATE machines SET initial_states = NULL WHERE name = 'order';
SELECT pg_temp.fails($$INSERT INTO orders VALUES (7, 'paid', 0, 'x')$$) AS initial_again;

-- The row without a version gets one; and the version index agrees with
-- the table on every row.
UPDATE orders SET state = 'paid' WHERE id = 8;
SELECT id, state, version FROM orders WHERE id = 8;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) AS rows_the_index_misses
FROM orders o
WHERE NOT EXISTS (SELECT FROM orders i WHERE i.version = o.version AND i.id + 0 = o.id)
  AND o.version IS NOT NULL;
SELECT o.version, count(*) FROM orders o WHERE o.version BETWEEN 1 AND 9
GROUP BY o.version ORDER BY o.version;
RESET enable_seqscan;
RESET enable_bitmapscan;
SELECT version, count(*) FROM orders WHERE version BETWEEN 1 AND 9
GROUP BY version ORDER BY version;

-- strict_version: an UPDATE must name the version.
SELECT idem_guard('orders', machine => 'order', version_column => 'version', strict_version => true);
SELECT pg_temp.fails($$UPDATE orders SET state = 'paid' WHERE id = 3$$) AS strict_without_version;
UPDATE orders SET state = 'paid', version = 1 WHERE id = 3;
SELECT id, state, version FROM orders WHERE id = 3;

-- An enum state column and a bigint version, without naming the machine:
-- it defaults to the table's name.
CREATE TYPE ticket_state AS ENUM ('open', 'assigned', 'closed', 'archived');
SELECT idem_machine('tickets', 'open->assigned', 'assigned->closed', 'open->closed');
CREATE TABLE tickets (id bigint PRIMARY KEY, state ticket_state NOT NULL, rev bigint NOT NULL DEFAULT 0);
CREATE INDEX tickets_rev ON tickets (rev);
SELECT idem_guard('tickets', version_column => 'rev');
INSERT INTO tickets VALUES (1, 'open'), (2, 'open');
UPDATE tickets SET state = 'assigned' WHERE id = 1;
UPDATE tickets SET state = 'closed';
SELECT id, state, rev FROM tickets ORDER BY id;
SET enable_seqscan = off;
SELECT id FROM tickets WHERE rev = 3;
RESET enable_seqscan;
INSERT INTO tickets VALUES (3, 'open');
SELECT pg_temp.fails($$UPDATE tickets SET state = 'archived' WHERE id = 3$$) AS enum_not_in_machine;
SELECT pg_temp.fails($$UPDATE tickets SET state = 'open' WHERE id = 1$$) AS enum_terminal;

-- A varchar state without a version column.
CREATE TABLE jobs (id int, status varchar(20));
SELECT idem_machine('job', 'queued->running', 'running->done');
SELECT idem_guard('jobs', 'status', 'job');
INSERT INTO jobs VALUES (1, 'queued');
UPDATE jobs SET status = 'running';
SELECT pg_temp.fails($$UPDATE jobs SET status = 'queued'$$) AS varchar_backwards;

-- idem_guard refuses what it cannot enforce, and installs nothing then.
SELECT pg_temp.fails($$SELECT idempotency.idem_guard('jobs', 'status', 'no_such_machine')$$) AS unknown_machine;
SELECT pg_temp.fails($$SELECT idempotency.idem_guard('jobs', 'stat', 'job')$$) AS unknown_column;
SELECT pg_temp.fails($$SELECT idempotency.idem_guard('jobs', 'id', 'job')$$) AS integer_state;
SELECT pg_temp.fails($$SELECT idempotency.idem_guard('jobs', 'status', 'job', 'nope')$$) AS unknown_version;
SELECT pg_temp.fails($$SELECT idempotency.idem_guard('jobs', 'status', 'job', 'status')$$) AS text_version;
SELECT pg_temp.fails($$SELECT idempotency.idem_guard('jobs', 'status', 'job', strict_version => true)$$) AS strict_without_column;
SELECT pg_temp.fails($$SELECT idempotency.idem_guard('tickets', machine => 'order')$$) AS enum_lacks_states;
SELECT pg_temp.fails($$SELECT idempotency.idem_guard(NULL)$$) AS null_table;
SELECT pg_temp.fails($$SELECT idempotency.idem_guard('no_such_table')$$) AS unknown_table;
SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'idem_guard'
ORDER BY tgrelid::regclass::text COLLATE "C";
-- A guard whose column was renamed away says so.
ALTER TABLE jobs RENAME COLUMN status TO phase;
SELECT pg_temp.fails($$UPDATE jobs SET phase = 'done'$$) AS renamed_column;

-- idem_unguard.
SELECT idem_unguard('jobs') AS removed, idem_unguard('jobs') AS removed_again;
UPDATE jobs SET phase = 'queued';

DROP TABLE orders, tickets, jobs;
DROP TYPE ticket_state;
DELETE FROM machines;
