#!/usr/bin/env bash
# bench/pessimistic.sh: the pessimistic flows against what they replace,
# in one run on one cluster, with pgbench (prepared statements).
#
#   1. idem_transition('guarded', id, 'paid') against the hand-written pair
#      on a plain table: BEGIN; SELECT state, version ... FOR UPDATE;
#      UPDATE ... SET state = 'paid', version = version + 1 WHERE id = ...
#      AND state = 'pending'; COMMIT (four round trips, as an application
#      sends them), and against the same pair inside a PL/pgSQL function
#      (one round trip: the server-side cost alone).  Tables of ROWS
#      pending rows are reloaded before every run; ids are random, so some
#      are repeats (unchanged) on both sides alike.
#   2. idem_try_lock(key) against pg_try_advisory_xact_lock(hashtext(key)).
#
# Each pair runs in alternating rounds; medians and ratios are printed
# (ratio > 1: ours is faster).
#
# Usage: bash bench/pessimistic.sh [CLIENTS] [SECONDS] [ROUNDS] [ROWS]
# Defaults: 8 clients, 10 seconds, 3 rounds, 1000000 rows.  Not run in CI.

source "$(dirname "$0")/../scripts/lib.sh"
IDEM_WORK=${IDEM_WORK:-/tmp/idempotency-bench-pessimistic}
CLIENTS=${1:-8}
SECONDS_RUN=${2:-10}
ROUNDS=${3:-3}
ROWS=${4:-1000000}
QUERY_MODE=prepared

idem_packages
idem_owner
idem_build
idem_start_cluster "max_connections = 50"

psqlq() { as_owner env PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$@"; }
source "$(dirname "$0")/pairs.sh"

psqlq <<'SQL'
CREATE EXTENSION idempotency;
SELECT idempotency.idem_machine('payment', 'pending->paid', 'paid->refunded', 'pending->failed') \g /dev/null
CREATE TABLE guarded (id int PRIMARY KEY, state text NOT NULL, version int NOT NULL, amount numeric);
SELECT idempotency.idem_guard('guarded', machine => 'payment', version_column => 'version') \g /dev/null
CREATE TABLE plain (id int PRIMARY KEY, state text NOT NULL, version int NOT NULL, amount numeric);
CREATE FUNCTION hand_transition(p_id int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	cur text;
	ver int;
BEGIN
	SELECT state, version INTO cur, ver FROM plain WHERE id = p_id FOR UPDATE;
	IF NOT FOUND THEN
		RETURN 'not_found';
	ELSIF cur = 'paid' THEN
		RETURN 'unchanged';
	ELSIF cur <> 'pending' THEN
		RETURN 'illegal';
	END IF;
	UPDATE plain SET state = 'paid', version = ver + 1 WHERE id = p_id;
	RETURN 'applied';
END $$;
SQL

reload="TRUNCATE guarded, plain;
INSERT INTO guarded SELECT g, 'pending', 1, g FROM generate_series(1, $ROWS) g;
INSERT INTO plain SELECT * FROM guarded;
VACUUM ANALYZE guarded, plain;"

script transition "\\set id random(1, $ROWS)
SELECT outcome FROM idempotency.idem_transition('guarded', :id, 'paid');"
script pair "\\set id random(1, $ROWS)
BEGIN;
SELECT state, version FROM plain WHERE id = :id FOR UPDATE;
UPDATE plain SET state = 'paid', version = version + 1 WHERE id = :id AND state = 'pending';
COMMIT;"
script plpgsql "\\set id random(1, $ROWS)
SELECT hand_transition(:id);"
script try_lock "\\set k random(1, 1000000)
SELECT idempotency.idem_try_lock('k' || :k);"
script advisory "\\set k random(1, 1000000)
SELECT pg_try_advisory_xact_lock(hashtext('k' || :k));"

say "pessimistic flows: $CLIENTS clients, $ROUNDS rounds of $SECONDS_RUN s per side, $ROWS rows, $QUERY_MODE statements"
for commit in on off; do
	pair "idem_transition vs FOR UPDATE + UPDATE" transition pair "$commit" "$reload"
	pair "idem_transition vs the pair in PL/pgSQL" transition plpgsql "$commit" "$reload"
done
pair "idem_try_lock vs pg_try_advisory_xact_lock" try_lock advisory off ""
psqlq -At -c "SELECT 'server: ' || version()"
echo "machine: $(nproc) cores"
