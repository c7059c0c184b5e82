#!/usr/bin/env bash
# clients/python/test.sh: the Python client's tests (pytest) against a
# running server with the extension preloaded.
#
# Run as root: installs the Debian packages it needs, copies the client to
# $IDEM_CLIENT_WORK and runs pytest there as $IDEM_USER.  Run as another
# user: runs pytest as that user (the packages must be installed).
#
# Environment: PGHOST PGPORT PGUSER PGDATABASE (the server), PG_BIN and
# IDEM_PGDATA (for the restart test), IDEM_USER, IDEM_CLIENT_WORK.
# Last line: "clients/python: N passed, M failed"; non-zero on failure.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=/usr/bin/python3          # Debian's, with Debian's psycopg
PKGS=(python3-psycopg python3-psycopg-pool python3-pytest python3-flask
	python3-starlette python3-httpx)

finish() {
	echo "clients/python: $1 passed, $2 failed"
	[ "$2" -eq 0 ] && [ "$1" -gt 0 ]
	exit $?
}

for v in PGHOST PGPORT IDEM_CLIENT_WORK; do
	if [ -z "${!v:-}" ]; then
		echo "clients/python: $v is not set" >&2
		finish 0 1
	fi
done

if [ "$(id -u)" -eq 0 ]; then
	missing=()
	for p in "${PKGS[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "== installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get -o DPkg::Lock::Timeout=600 update -qq &&
			apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" ||
			finish 0 1
	fi
	: "${IDEM_USER:?IDEM_USER is not set}"
	run_as=(runuser -u "$IDEM_USER" --)
else
	run_as=()
fi

WORK=$IDEM_CLIENT_WORK/python
rm -rf "$WORK"
mkdir -p "$WORK"
tar -C "$HERE" --exclude=__pycache__ --exclude=.pytest_cache -cf - . | tar -C "$WORK" -xf -
[ "$(id -u)" -ne 0 ] || chown -R "$IDEM_USER" "$WORK"

envs=()
for v in PGHOST PGPORT PGUSER PGDATABASE PG_BIN IDEM_PGDATA IDEM_CLIENT_WORK; do
	[ -z "${!v:-}" ] || envs+=("$v=${!v}")
done

cd "$WORK" || finish 0 1
"${run_as[@]}" env "${envs[@]}" PYTHONDONTWRITEBYTECODE=1 \
	"$PY" -m pytest -p no:cacheprovider -rfEs -s --junitxml="$WORK/results.xml" tests
status=$?

counts=$("$PY" - "$WORK/results.xml" <<'EOF' 2>/dev/null
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
k = sum(int(s.get("skipped", 0)) for s in suites)
print(t - f - k, f)
EOF
) || counts="0 1"
read -r passed failed <<<"$counts"
# pytest failing with no test failed (a collection error, no test run)
# still fails the run.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
	failed=1
fi
finish "$passed" "$failed"
