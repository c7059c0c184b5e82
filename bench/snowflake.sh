#!/usr/bin/env bash
# bench/snowflake.sh: the cost of snowflake_id() against its baselines, in
# one run on one cluster, and the sustained rate of concurrent sessions.
#
#   1. SELECT count(f()) FROM generate_series(1, N) for f = snowflake_id(),
#      nextval() on a plain sequence, and gen_random_uuid(); the bare
#      generate_series time of the same round is subtracted, leaving the
#      cost per call.  Rounds are interleaved; the medians over rounds of
#      each cost and of each round's ratio are shown, so a noisy neighbour
#      slows all contenders alike.  Ratios are what to read.
#      work_mem is raised so that generate_series keeps its rows in memory:
#      spilled to a temporary file, they made the subtraction noisy.
#   2. pgbench, CLIENTS sessions calling snowflake_id() for SECONDS seconds,
#      against the layout's limit of 4096 IDs per millisecond per node.
#
# Usage: bash bench/snowflake.sh [N] [ROUNDS] [CLIENTS] [SECONDS]
# Defaults: 2000000 calls, 7 rounds, 4 clients, 10 seconds.  Not run in CI.

source "$(dirname "$0")/../scripts/lib.sh"
IDEM_WORK=${IDEM_WORK:-/tmp/idempotency-bench}
N=${1:-2000000}
ROUNDS=${2:-7}
CLIENTS=${3:-4}
SECONDS_RUN=${4:-10}

idem_packages
idem_owner
idem_build
idem_start_cluster

psqlq() { as_owner psql -X -q -v ON_ERROR_STOP=1 "$@"; }

psqlq <<SQL
CREATE EXTENSION idempotency;
CREATE SEQUENCE bench_seq;
CREATE TABLE bench_times (round int, contender text, ms float8);
CREATE FUNCTION bench_ms(q text) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz;
BEGIN
	t0 := clock_timestamp();
	EXECUTE q;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END \$\$;
SQL

say "per-call cost: $ROUNDS interleaved rounds of $N calls"
for r in $(seq 1 "$ROUNDS"); do
	psqlq <<SQL
SET work_mem = '1GB';
INSERT INTO bench_times SELECT $r, c, bench_ms(q) FROM (VALUES
	(1, 'bare generate_series', 'SELECT count(*) FROM generate_series(1, $N)'),
	(2, 'snowflake_id()', 'SELECT count(idempotency.snowflake_id()) FROM generate_series(1, $N)'),
	(3, 'nextval()', 'SELECT count(nextval(''bench_seq'')) FROM generate_series(1, $N)'),
	(4, 'gen_random_uuid()', 'SELECT count(gen_random_uuid()) FROM generate_series(1, $N)')
) v(o, c, q) ORDER BY o;
SQL
	printf '.'
done
echo

psqlq <<SQL
\pset footer off
WITH per_round AS (
	SELECT t.round, t.contender, t.ms,
	       (t.ms - b.ms) * 1e6 / $N AS ns_per_call
	FROM bench_times t JOIN bench_times b
	  ON b.round = t.round AND b.contender = 'bare generate_series'),
ratio AS (
	SELECT c.round, c.contender, s.ns_per_call / nullif(c.ns_per_call, 0) AS r
	FROM per_round c JOIN per_round s
	  ON s.round = c.round AND s.contender = 'snowflake_id()'
	WHERE c.contender NOT IN ('bare generate_series', 'snowflake_id()'))
SELECT p.contender,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY p.ms)::numeric, 1) AS median_ms,
       CASE WHEN p.contender = 'bare generate_series' THEN NULL ELSE
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY p.ns_per_call)::numeric, 1) END AS ns_per_call,
       (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY r)::numeric, 3)
        FROM ratio WHERE ratio.contender = p.contender) AS snowflake_cost_ratio
FROM per_round p GROUP BY p.contender ORDER BY median_ms;
SQL

say "sustained rate: $CLIENTS sessions for $SECONDS_RUN s (layout limit: 4,096,000 IDs/s per node)"
batch=100000
printf 'SELECT count(idempotency.snowflake_id()) FROM generate_series(1, %d);\n' "$batch" |
	as_owner tee "$IDEM_WORK/sustained.sql" >/dev/null
# A warm-up first, so that the generator has used up its allowed lead
# (idempotency.max_lead) and the measurement sees the steady state.
as_owner pgbench -n -c "$CLIENTS" -j "$CLIENTS" -T 3 -f "$IDEM_WORK/sustained.sql" postgres >/dev/null 2>&1
as_owner pgbench -n -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_RUN" -f "$IDEM_WORK/sustained.sql" postgres \
	>"$IDEM_WORK/pgbench.out" 2>&1
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$IDEM_WORK/pgbench.out")
awk -v tps="$tps" -v b="$batch" 'BEGIN {
	rate = tps * b
	printf "  %.0f IDs/s = %.1f%% of the 4,096,000 IDs/s limit\n", rate, 100 * rate / 4096000
}'
psqlq -At -c "SELECT 'server: ' || version()"
echo "machine: $(nproc) cores"
