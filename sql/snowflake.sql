--
-- The snowflake generator: order within a session, the settings, and a
-- clock stepped back with idempotency.test_clock_shift.  Needs
-- shared_preload_libraries.  Concurrency, bursts against max_lead, the
-- floor's convergence, restarts and crashes are in specs/ and t/.
--
SET search_path = idempotency, public;

-- IDs come out strictly increasing in call order, on this node, near now.
CREATE TEMP TABLE ids AS
	SELECT g, snowflake_id() AS id FROM generate_series(1, 100000) g;
SELECT count(*) AS ids, count(DISTINCT id) AS distinct_ids,
       count(*) FILTER (WHERE id <= prev) AS out_of_order
FROM (SELECT id, lag(id) OVER (ORDER BY g) AS prev FROM ids) s;
SELECT bool_and(snowflake_node(id) = current_setting('idempotency.node_id')::int) AS node,
       bool_and(snowflake_timestamp(id) BETWEEN now() - interval '1 minute'
                AND clock_timestamp() + interval '2 seconds') AS near_now
FROM ids;

-- As a column default.
CREATE TEMP TABLE events (id snowflake PRIMARY KEY DEFAULT snowflake_id(), what text);
INSERT INTO events (what) VALUES ('created'), ('paid'), ('shipped');
SELECT what FROM events ORDER BY id;

-- Settings.
SHOW idempotency.node_id;
SHOW idempotency.epoch;
SHOW idempotency.max_lead;
SHOW idempotency.test_clock_shift;
SET idempotency.node_id = 5;
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
ALTER SYSTEM SET idempotency.node_id = 1024;
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
ALTER SYSTEM SET idempotency.node_id = -1;
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
ALTER SYSTEM SET idempotency.epoch = 'yesterday';
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
ALTER SYSTEM SET idempotency.epoch = '2020-02-30 00:00:00';
ALTER SYSTEM SET idempotency.epoch = '1969-12-31 00:00:00+00';
ALTER SYSTEM SET idempotency.epoch = '1970-01-01 00:30:00+01';
-- PostgreSQL 16 added the unit to the bounds in this message: the
-- SQLSTATE, the message read with either wording, and pg_settings say
-- the same on every version.
\set VERBOSITY sqlstate
ALTER SYSTEM SET idempotency.max_lead = -1;
\set VERBOSITY default
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate,
	:'LAST_ERROR_MESSAGE' ~ '^-1 ms is outside the valid range for parameter "idempotency\.max_lead" \(0( ms)? \.\. 3600000( ms)?\)$' AS range_message;
SELECT min_val, max_val, unit FROM pg_settings WHERE name = 'idempotency.max_lead';
SET idempotency.max_lead = 0;       -- server-wide: postgresql.conf and reload
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SET idempotency.nonexistent = 1;
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
-- Nothing reached postgresql.auto.conf.
SELECT count(*) AS written FROM pg_file_settings WHERE name LIKE 'idempotency.%'
  AND sourcefile LIKE '%postgresql.auto.conf';

-- The test clock is for superusers only.
CREATE ROLE regress_idem_plain;
SET ROLE regress_idem_plain;
SET idempotency.test_clock_shift = '-1h';
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT snowflake_id() > 0 AS plain_user_can_generate;
RESET ROLE;
DROP ROLE regress_idem_plain;

-- The clock steps back an hour.  IDs do not follow it: they keep
-- increasing, at once, with timestamps at or above the last one issued.
CREATE TEMP TABLE before_step AS SELECT snowflake_id() AS id;
SET idempotency.test_clock_shift = '-1h';
CREATE TEMP TABLE after_step AS
	SELECT g, snowflake_id() AS id FROM generate_series(1, 50000) g;
SELECT (SELECT min(id) FROM after_step) > (SELECT id FROM before_step) AS above_high_water,
       (SELECT min(snowflake_timestamp(id)) FROM after_step)
         >= (SELECT snowflake_timestamp(id) FROM before_step) AS no_time_travel,
       (SELECT max(snowflake_timestamp(id)) FROM after_step)
         < clock_timestamp() + interval '10 min' AS near_the_old_clock;
SELECT count(*) FILTER (WHERE id <= prev) AS out_of_order
FROM (SELECT id, lag(id) OVER (ORDER BY g) AS prev FROM after_step) s;
-- And forward again: IDs follow at once.
RESET idempotency.test_clock_shift;
SELECT snowflake_timestamp(snowflake_id()) > clock_timestamp() - interval '0.5 s' AS follows_clock,
       snowflake_id() > (SELECT max(id) FROM after_step) AS still_increasing;

DROP TABLE ids, events, before_step, after_step;
