#!/usr/bin/env bash
# bench/instructions.sh: the CPU instructions one statement costs the
# server, counted exactly (valgrind's callgrind) rather than timed, for a
# claim and the hand-written statement it replaces, side by side.
#
# Timed benchmarks on a shared, noisy machine move by several per cent
# from one run to the next; an instruction count does not move at all.
# It is not time (cache misses, locks and I/O are not in it), but for two
# statements that read the same row through the same index it shows where
# the work is, and a change's effect on it to the instruction.
#
# Each statement runs N times as a prepared statement (EXECUTE) in a
# single-user backend under callgrind, one transaction each, with
# synchronous_commit off; a second run with no EXECUTE is subtracted, so
# what is left is the statements alone.  Statements:
#   replay_from   SELECT outcome, response, status FROM idem_claim(key)
#   replay_scan   the same with idempotency.call_scan = off (a function scan)
#   replay_row    SELECT idem_claim(key)
#   select        SELECT response, status FROM dedup WHERE (scope, key) = ...
#   claim_from    SELECT outcome, token FROM idem_claim(new key)
#   insert        INSERT ... ON CONFLICT DO NOTHING of a new key
#   serve_replay  idem_serve(place_order, key) of a completed key
#   fn_replay     the same key through order_once, the claim, the order
#                 and the completion hand-written in PL/pgSQL (as
#                 bench/http.sh's ext-fn service)
#   serve_new     idem_serve of a new key (the handler inserts an order)
#   fn_new        order_once of a new key
# and the ratio of each to its hand-written counterpart (> 1: ours costs
# less).
#
# Usage: bash bench/instructions.sh [N]   (default 2000).  Not run in CI;
# installs valgrind if it is missing.

source "$(dirname "$0")/../scripts/lib.sh"
IDEM_WORK=${IDEM_WORK:-/tmp/idempotency-bench-instructions}
N=${1:-2000}
KEYS=1000

idem_packages
idem_apt_install valgrind
idem_owner
idem_build
idem_start_cluster

psqlq() { as_owner psql -X -q -v ON_ERROR_STOP=1 "$@"; }
source "$(dirname "$0")/dedup.sh"
dedup_create
dedup_completed_keys "$KEYS"
psqlq < "$(dirname "$0")/orders.sql"
psqlq <<SQL
SELECT count(*) FROM generate_series(1, $KEYS) i,
	LATERAL idempotency.idem_serve('place_order(text, bytea)', 's' || i, '{"amount": 3}',
		scope => 'orders');
-- The dedup table holds the same rows as the claims table again, so that
-- both primary keys are as deep.
TRUNCATE dedup;
INSERT INTO dedup SELECT * FROM idempotency.claims;
VACUUM ANALYZE idempotency.claims, dedup, orders;
SQL
idem_stop_cluster

# stmt NAME SETTING SQL: the SQL (with $1, an integer) prepared and
# executed N times; NAME-0 is the same without the executions.
stmt() {
	local f=$IDEM_WORK/$1.sql i
	{
		echo "SET idempotency.call_scan = $2;"
		echo "PREPARE q(int) AS $3;"
	} > "$IDEM_WORK/$1-0.sql"
	cp "$IDEM_WORK/$1-0.sql" "$f"
	for i in $(seq 1 "$N"); do echo "EXECUTE q($i);"; done >> "$f"
	chown "$IDEM_USER" "$f" "$IDEM_WORK/$1-0.sql" 2>/dev/null || true
}
stmt replay_from on "SELECT outcome, response, status FROM idempotency.idem_claim('r' || (\$1 % $KEYS + 1), '1 hour')"
stmt replay_scan off "SELECT outcome, response, status FROM idempotency.idem_claim('r' || (\$1 % $KEYS + 1), '1 hour')"
stmt replay_row on "SELECT idempotency.idem_claim('r' || (\$1 % $KEYS + 1), '1 hour')"
stmt select on "SELECT response, status FROM dedup WHERE scope = 'default' AND key = 'r' || (\$1 % $KEYS + 1)"
stmt claim_from on "SELECT outcome, token FROM idempotency.idem_claim('n' || \$1, '1 hour')"
stmt serve_replay on "SELECT outcome::text, status, body, content_type, headers FROM idempotency.idem_serve('place_order(text, bytea)', 's' || (\$1 % $KEYS + 1), '{\"amount\": 3}', scope => 'orders')"
stmt fn_replay on "SELECT outcome::text, status, body FROM order_once('s' || (\$1 % $KEYS + 1), '{\"amount\": 3}', NULL)"
stmt serve_new on "SELECT outcome::text, status, body, content_type, headers FROM idempotency.idem_serve('place_order(text, bytea)', 'sn' || \$1, '{\"amount\": 3}', scope => 'orders')"
stmt fn_new on "SELECT outcome::text, status, body FROM order_once('fn' || \$1, '{\"amount\": 3}', NULL)"
stmt insert on "INSERT INTO dedup (key, state, token, lease_until, expires_at) VALUES ('n' || \$1, 'in_progress', 1, now() + interval '1 min', now() + interval '1 hour') ON CONFLICT DO NOTHING"

# Instructions of one single-user run of script $1.
count() {
	as_owner valgrind --tool=callgrind --callgrind-out-file="$IDEM_WORK/$1.out" \
		"$PG_BIN/postgres" --single -D "$IDEM_WORK/data" -c synchronous_commit=off postgres \
		< "$IDEM_WORK/$1.sql" > /dev/null 2> "$IDEM_WORK/$1.err"
	sed -n 's/^summary: \([0-9]*\).*/\1/p; s/^totals: \([0-9]*\).*/\1/p' "$IDEM_WORK/$1.out" | head -n 1
}
declare -A per
for s in replay_from replay_scan replay_row select claim_from insert serve_replay fn_replay serve_new fn_new; do
	full=$(count "$s") empty=$(count "$s-0")
	per[$s]=$(( (full - empty) / N ))
done

say "instructions per statement, $N executions each, PostgreSQL $PG_MAJOR"
ratio() { awk -v a="$2" -v b="$3" -v l="$1" 'BEGIN { printf "  %-56s %8d  vs %8d   ratio %.3f\n", l, a, b, b / a }'; }
ratio "replay, idem_claim in FROM / PK SELECT" "${per[replay_from]}" "${per[select]}"
ratio "replay, idem_claim in FROM (function scan) / PK SELECT" "${per[replay_scan]}" "${per[select]}"
ratio "replay, SELECT idem_claim(...) / PK SELECT" "${per[replay_row]}" "${per[select]}"
ratio "new key, idem_claim in FROM / INSERT ON CONFLICT" "${per[claim_from]}" "${per[insert]}"
ratio "replay, idem_serve / PL/pgSQL claim, order, completion" "${per[serve_replay]}" "${per[fn_replay]}"
ratio "new key, idem_serve / PL/pgSQL claim, order, completion" "${per[serve_new]}" "${per[fn_new]}"
