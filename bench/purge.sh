#!/usr/bin/env bash
# bench/purge.sh: the purge worker under a steady stream of claims.
#
#   1. Steady state: pgbench claims new keys with a short ttl at a constant
#      rate for DURATION seconds while the worker purges every second.  The
#      claims table's row count and size are sampled every SAMPLE seconds,
#      next to the number of claims made so far: the table must stay
#      bounded, not grow with the claims ever made.
#   2. Throughput while purges run: the same claims, unthrottled, once
#      with the worker off and once with it purging every second what has
#      expired, in alternating rounds; the median throughput of each side
#      and their ratio are printed (target: at least 0.9).
#   3. The same on a table holding BACKLOG expired rows, which the worker
#      works off during the whole run (with idempotency.purge_delay between
#      batches) while the claims go on.
#
# Usage: bash bench/purge.sh [RATE] [DURATION] [CLIENTS] [SECONDS] [ROUNDS]
# Defaults: 1000 claims/s for 180 s; 8 clients, 15 s, 3 rounds.
# Not run in CI.

source "$(dirname "$0")/../scripts/lib.sh"
IDEM_WORK=${IDEM_WORK:-/tmp/idempotency-bench-purge}
RATE=${1:-1000}
DURATION=${2:-180}
CLIENTS=${3:-8}
SECONDS_RUN=${4:-15}
ROUNDS=${5:-3}
SAMPLE=${SAMPLE:-15}
TTL=${TTL:-2 seconds}
BACKLOG=${BACKLOG:-500000}

idem_packages
idem_owner
idem_build
idem_start_cluster "max_connections = 50" "idempotency.purge_interval = '1s'" \
	"idempotency.purge_batch_size = 1000"

psqlq() { as_owner psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
source "$(dirname "$0")/pairs.sh"

psqlq -c 'CREATE EXTENSION idempotency'
script claim "\\set r random(1, 2000000000)
SELECT idempotency.idem_claim('k' || :r, '$TTL');"

set_interval() {
	psqlq -c "ALTER SYSTEM SET idempotency.purge_interval = '$1'" -c 'SELECT pg_reload_conf()' >/dev/null
}
stat() { psqlq -c "SELECT $1 FROM idempotency.stats"; }

say "1. steady state: $RATE claims/s (ttl $TTL), $DURATION s, worker purging every 1 s"
printf '  %8s %14s %14s %14s %14s\n' seconds claims_made rows_in_table table_bytes purged_rows
psqlq -c 'SELECT idempotency.idem_stats_reset()' >/dev/null
as_owner pgbench -n -c "$CLIENTS" -j "$CLIENTS" -R "$RATE" -T "$DURATION" \
	-f "$IDEM_WORK/claim.sql" postgres >"$IDEM_WORK/steady.log" 2>&1 &
bench_pid=$!
start=$(date +%s)
while kill -0 "$bench_pid" 2>/dev/null; do
	psqlq -F ' ' -c "SELECT $(($(date +%s) - start)), (SELECT claims_claimed FROM idempotency.stats),
		(SELECT count(*) FROM idempotency.claims),
		pg_total_relation_size('idempotency.claims'), (SELECT purged_rows FROM idempotency.stats)" |
		awk '{printf "  %8d %14d %14d %14d %14d\n", $1, $2, $3, $4, $5}'
	sleep "$SAMPLE"
done
wait "$bench_pid"
sed -n 's/^tps = \([0-9.]*\).*/  pgbench: \1 claims\/s/p' "$IDEM_WORK/steady.log"

# compare LABEL BACKLOG: alternate rounds of claims with the worker off and
# with it purging every second, each on a table holding BACKLOG expired
# rows; print each round and the medians.
compare() {
	local label=$1 backlog=$2 with=() without=() r before purged left mw mo
	say "$label"
	for r in $(seq 1 "$ROUNDS"); do
		fill "$backlog"
		without+=("$(tps claim on)")
		fill "$backlog"
		before=$(stat purged_rows)
		set_interval 1s
		with+=("$(tps claim on)")
		set_interval 0
		purged=$(($(stat purged_rows) - before))
		left=$(psqlq -c "SELECT count(*) FROM idempotency.claims WHERE scope = 'backlog'")
		printf '  round %d: worker off %7.0f claims/s, purging %7.0f claims/s; purged %d rows, %d backlog rows left\n' \
			"$r" "${without[-1]}" "${with[-1]}" "$purged" "$left"
	done
	mw=$(printf '%s\n' "${with[@]}" | median)
	mo=$(printf '%s\n' "${without[@]}" | median)
	awk -v w="$mw" -v o="$mo" 'BEGIN {
		printf "  medians: purging %.0f claims/s, worker off %.0f claims/s, ratio %.3f\n", w, o, w / o
	}'
}
fill() {
	set_interval 0
	psqlq -c 'TRUNCATE idempotency.claims' -c "INSERT INTO idempotency.claims
		(scope, key, state, token, created_at, expires_at)
		SELECT 'backlog', 'b' || g, 'completed', g, now() - interval '2 days', now() - interval '1 day'
		FROM generate_series(1, $1) g" -c 'VACUUM ANALYZE idempotency.claims' -c 'CHECKPOINT'
}

compare "2. unthrottled claims (ttl $TTL) with the worker purging what expires, vs the worker off; $CLIENTS clients, $SECONDS_RUN s" 0
compare "3. the same while the worker works off a backlog of $BACKLOG expired rows (purge_delay $(psqlq -c 'SHOW idempotency.purge_delay'))" "$BACKLOG"
