#!/usr/bin/env bash
# scripts/test.sh: install what is missing, build with warnings as errors,
# start a throwaway cluster that preloads idempotency, and run every suite:
# regression (sql/, expected/), isolation (specs/), TAP (t/), and each
# client's own tests (clients/*/test.sh: go test, node --test, pytest).
# Exits non-zero if any test fails.  Safe to run again.
#
# Usage: bash scripts/test.sh          (as root, or as a user with sudo)
#        PG=18 bash scripts/test.sh   (another major, see scripts/build-pg.sh)
#        PG="15 17 18" bash scripts/test.sh   (each in turn, one closing line)

# Several majors: run each in turn, then one line over all of them.
read -r -a majors <<<"${PG:-15}"
if [ ${#majors[@]} -gt 1 ]; then
	status=0 passed=0 failed=0
	for m in "${majors[@]}"; do
		log=$(mktemp)
		PG=$m IDEM_SUMMARY_LABEL="PostgreSQL $m" bash "$0" 2>&1 | tee "$log"
		rc=${PIPESTATUS[0]}
		[ "$rc" -eq 0 ] || status=1
		line=$(grep -E "^PostgreSQL $m: [0-9]+ ok, [0-9]+ not ok\$" "$log" | tail -n 1)
		rm -f "$log"
		if [ -z "$line" ]; then
			echo "PostgreSQL $m: did not finish (exit code $rc)"
			failed=$((failed + 1))
			status=1
			continue
		fi
		read -r p f <<<"$(sed -E 's/.*: ([0-9]+) ok, ([0-9]+) not ok/\1 \2/' <<<"$line")"
		passed=$((passed + p))
		failed=$((failed + f))
		[ "$f" -eq 0 ] || status=1
	done
	echo "== all majors (PostgreSQL ${majors[*]})"
	echo "idempotency: $passed passed, $failed failed"
	exit $status
fi
[ -z "${PG:-}" ] || PG=${majors[0]}

source "$(dirname "$0")/lib.sh"
idem_workdir test

idem_packages tests
idem_owner
idem_build
idem_start_cluster

cd "$IDEM_WORK/src"
status=0
declare -A result

# Run one suite; remember its outcome and keep going so that every suite
# reports.  $1 names it, the rest selects it through make variables.
suite() {
	local name=$1
	shift
	say "$name tests"
	if as_owner make -s PG_CONFIG="$PG_CONFIG" installcheck "$@" 2>&1 |
		tee "$IDEM_WORK/$name.log"; then
		result[$name]=ok
	else
		result[$name]=FAILED
		status=1
		for f in regression.diffs output_iso/regression.diffs; do
			[ -s "$f" ] && { echo "--- $f"; head -n 200 "$f"; }
		done
		for f in tmp_check/log/regress_log_*; do
			[ -f "$f" ] && grep -q 'not ok' "$f" && { echo "--- $f"; tail -n 60 "$f"; }
		done
	fi
}
set +e
suite regression ISOLATION= TAP_TESTS=
suite isolation REGRESS= TAP_TESTS=
suite tap REGRESS= ISOLATION= PROVE_FLAGS=--timer

# The clients (clients/*/test.sh): each installs what its runner needs,
# then runs its own tests (go test, node --test, pytest) against this
# cluster, as its owner.  Last, since one of them restarts the server.
say "client tests"
clients_passed=0
clients_failed=0
for t in "$IDEM_WORK"/src/clients/*/test.sh; do
	[ -f "$t" ] || continue
	name=$(basename "$(dirname "$t")")
	mkdir -p "$IDEM_WORK/clients/$name"
	[ "$(id -u)" -ne 0 ] || chown -R "$IDEM_USER" "$IDEM_WORK/clients"
	PG_BIN=$PG_BIN IDEM_PGDATA=$IDEM_WORK/data IDEM_USER=$IDEM_USER \
		IDEM_CLIENT_WORK=$IDEM_WORK/clients/$name \
		bash "$t" 2>&1 | tee "$IDEM_WORK/clients-$name.log"
	line=$(grep -E "^clients/$name: [0-9]+ passed, [0-9]+ failed\$" "$IDEM_WORK/clients-$name.log" | tail -n 1)
	read -r p f <<<"$(sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1 \2/' <<<"${line:-: 0 passed, 1 failed}")"
	clients_passed=$((clients_passed + p))
	clients_failed=$((clients_failed + f))
done
result[clients]=ok
[ "$clients_failed" -eq 0 ] || { result[clients]=FAILED; status=1; }
set -e

# One closing line over all suites: a regression test or spec counts once,
# a TAP assertion counts once; a suite that failed without a failing test
# (it did not run) counts as one failure.
count() { grep -Ec "$2" "$IDEM_WORK/$1.log" || true; }
passed=0
failed=0
for name in regression isolation; do
	# "test foo ... ok" up to PostgreSQL 15, "ok 1 - foo" (TAP) since 16
	ok=$(count $name '\.\.\. ok|^ok [0-9]+ ')
	bad=$(count $name '\.\.\. FAILED|^not ok [0-9]+ ')
	[ "${result[$name]}" = ok ] || [ "$bad" -gt 0 ] || bad=1
	passed=$((passed + ok))
	failed=$((failed + bad))
done
tap_total=$(sed -n 's/.*Tests=\([0-9]*\),.*/\1/p' "$IDEM_WORK/tap.log" | tail -n 1)
tap_total=${tap_total:-0}
tap_failed=$( (grep -Eo 'Failed [0-9]+/[0-9]+ subtests' "$IDEM_WORK/tap.log" || true) |
	awk '{split($2, a, "/"); n += a[1]} END {print n + 0}')
[ "${result[tap]}" = ok ] || [ "$tap_failed" -gt 0 ] || tap_failed=1
passed=$((passed + (tap_total > tap_failed ? tap_total - tap_failed : 0)))
failed=$((failed + tap_failed))
passed=$((passed + clients_passed))
failed=$((failed + clients_failed))

# The packaged major's Debian package, built, installed, tested and removed
# by scripts/package.sh, counts too; IDEM_SKIP_PACKAGE=1 skips it.
if [ "$PG_MAJOR" = 15 ] && [ "${IDEM_SKIP_PACKAGE:-0}" != 1 ]; then
	idem_stop_cluster
	bash "$IDEM_SRC/scripts/package.sh" 2>&1 | tee "$IDEM_WORK/package.log" || status=1
	line=$(grep -E '^PostgreSQL 15 package: [0-9]+ ok, [0-9]+ not ok$' "$IDEM_WORK/package.log" | tail -n 1)
	read -r p f <<<"$(sed -E 's/.*: ([0-9]+) ok, ([0-9]+) not ok/\1 \2/' <<<"${line:-: 0 ok, 1 not ok}")"
	passed=$((passed + p))
	failed=$((failed + f))
fi

say "summary: regression ${result[regression]}, isolation ${result[isolation]}, tap ${result[tap]}, clients ${result[clients]}"
# Under PG="15 17 18" each major's line is worded apart, so that the one
# closing line over all of them is the only "passed, failed" line.
if [ -n "${IDEM_SUMMARY_LABEL:-}" ]; then
	echo "$IDEM_SUMMARY_LABEL: $passed ok, $failed not ok"
else
	echo "idempotency: $passed passed, $failed failed"
fi
exit $status
