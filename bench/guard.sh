#!/usr/bin/env bash
# bench/guard.sh: the cost of the state-transition guard on a bulk UPDATE,
# in one run on one cluster.
#
# A table of ROWS rows in state 'pending' is updated to 'paid' in one
# statement, three ways:
#   bare     no trigger; the statement bumps the version itself
#            (SET state = 'paid', version = version + 1)
#   guard    the C guard (idem_guard with a version column); the statement
#            only sets the state, and is planned to check itself
#            (idempotency.guard_rewrite, the default)
#   trigger  the same guard with idempotency.guard_rewrite = off: the row
#            trigger checks every row
#   plpgsql  an equivalent PL/pgSQL trigger: looks the transition up in
#            idempotency.transitions and bumps the version
#   c_floor  PostgreSQL's own suppress_redundant_updates_trigger(), a C
#            trigger that does next to nothing, with the statement bumping
#            the version: the cost of having any BEFORE UPDATE row trigger
#            (PostgreSQL locks each row, with a WAL record, before calling
#            it), which no trigger can go below
# Each contender gets a freshly loaded, vacuumed table before every round;
# rounds are interleaved; medians and best times are reported with their
# ratios to bare (on a noisy machine the best times are the steadier).
#
# Usage: bash bench/guard.sh [ROWS] [ROUNDS]    Defaults: 1000000, 3.
# Not run in CI.

source "$(dirname "$0")/../scripts/lib.sh"
IDEM_WORK=${IDEM_WORK:-/tmp/idempotency-bench-guard}
ROWS=${1:-1000000}
ROUNDS=${2:-3}

idem_packages
idem_owner
idem_build
idem_start_cluster "max_wal_size = 4GB" "checkpoint_timeout = 30min"

psqlq() { as_owner env PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$@"; }

psqlq <<'SQL'
CREATE EXTENSION idempotency;
SELECT idempotency.idem_machine('bench', 'pending->paid', 'paid->shipped', 'pending->cancelled') \g /dev/null
CREATE TABLE bench_times (round int, contender text, ms float8);
CREATE FUNCTION plpgsql_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.state IS DISTINCT FROM OLD.state AND NOT EXISTS (
		SELECT FROM idempotency.transitions
		WHERE machine = 'bench' AND from_state = OLD.state AND to_state = NEW.state) THEN
		RAISE EXCEPTION 'transition from % to % is not allowed', OLD.state, NEW.state
			USING ERRCODE = 'check_violation';
	END IF;
	NEW.version := OLD.version + 1;
	RETURN NEW;
END $$;
SQL

# Load a fresh table for a contender.
load() {
	psqlq <<SQL
DROP TABLE IF EXISTS t_$1;
CREATE TABLE t_$1 (id int PRIMARY KEY, state text NOT NULL, version int NOT NULL, amount numeric);
INSERT INTO t_$1 SELECT g, 'pending', 1, g FROM generate_series(1, $ROWS) g;
SQL
	case $1 in
	guard|trigger) psqlq -c "SELECT idempotency.idem_guard('t_$1', machine => 'bench', version_column => 'version')" >/dev/null ;;
	plpgsql) psqlq -c "CREATE TRIGGER g BEFORE UPDATE ON t_plpgsql FOR EACH ROW EXECUTE FUNCTION plpgsql_guard()" ;;
	c_floor) psqlq -c "CREATE TRIGGER g BEFORE UPDATE ON t_c_floor FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()" ;;
	esac
	psqlq -c "VACUUM ANALYZE t_$1" -c "CHECKPOINT"
}

# Time the bulk update of a contender, in milliseconds.
run() {
	local sql="UPDATE t_$2 SET state = 'paid'" rewrite=on
	[ "$2" = bare ] || [ "$2" = c_floor ] && sql="UPDATE t_$2 SET state = 'paid', version = version + 1"
	[ "$2" = trigger ] && rewrite=off
	psqlq <<SQL
SET idempotency.guard_rewrite = $rewrite;
DO \$\$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
	EXECUTE \$q\$$sql\$q\$;
	INSERT INTO bench_times VALUES ($1, '$2', extract(epoch FROM clock_timestamp() - t0) * 1000);
END \$\$;
SQL
}

say "bulk UPDATE of $ROWS rows, $ROUNDS interleaved rounds"
for r in $(seq 1 "$ROUNDS"); do
	for c in bare c_floor guard trigger plpgsql; do
		load "$c"
		run "$r" "$c"
		printf '.'
	done
done
echo
psqlq <<'SQL'
\pset footer off
WITH agg AS (
	SELECT contender, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS med, min(ms) AS best
	FROM bench_times GROUP BY contender)
SELECT a.contender, round(a.med::numeric) AS median_ms,
       round((a.med / b.med)::numeric, 3) AS median_ratio,
       round(a.best::numeric) AS best_ms,
       round((a.best / b.best)::numeric, 3) AS best_ratio
FROM agg a, agg b WHERE b.contender = 'bare'
ORDER BY a.med;
SQL
psqlq -At -c "SELECT 'server: ' || version()"
echo "machine: $(nproc) cores"
