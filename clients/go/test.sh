#!/usr/bin/env bash
# clients/go/test.sh: the Go client's tests (go test) against a running
# cluster, as scripts/test.sh calls it.
#
# Run as root: installs Go and pgx v4 from Debian's packages if missing,
# then runs the tests as $IDEM_USER. Given: PGHOST PGPORT PGUSER
# PGDATABASE (a cluster that preloads the extension; the tests create it),
# PG_BIN and IDEM_PGDATA (the restart test runs pg_ctl restart -m
# immediate), IDEM_USER, IDEM_CLIENT_WORK (a scratch directory owned by
# IDEM_USER). There is no module proxy here: the package is built in GOPATH
# mode (GO111MODULE=off), from a copy under $IDEM_CLIENT_WORK, against the
# Debian sources in /usr/share/gocode. The last line is
# "clients/go: N passed, M failed"; the exit status is non-zero on failure.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for v in PGHOST PGPORT PGUSER PGDATABASE PG_BIN IDEM_PGDATA IDEM_USER IDEM_CLIENT_WORK; do
	if [ -z "${!v:-}" ]; then
		echo "clients/go/test.sh: $v is not set" >&2
		echo "clients/go: 0 passed, 1 failed"
		exit 1
	fi
done

as_user() {
	if [ "$(id -u)" -eq 0 ]; then runuser -u "$IDEM_USER" -- "$@"; else "$@"; fi
}

pkgs=(golang-go golang-github-jackc-pgx-v4-dev)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "clients/go/test.sh: missing ${missing[*]}; run as root to install them" >&2
		echo "clients/go: 0 passed, 1 failed"
		exit 1
	fi
	echo "== installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	{ apt-get -o DPkg::Lock::Timeout=600 update -qq &&
		apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"; } >&2 || {
		echo "clients/go: 0 passed, 1 failed"
		exit 1
	}
fi

work=$IDEM_CLIENT_WORK/go
pkg=$work/gopath/src/github.com/idempotency/idempotency/clients/go
as_user rm -rf "$work"
as_user mkdir -p "$pkg"
tar -C "$here" -cf - . | as_user tar -C "$pkg" -xf -

echo "== go test in $pkg (GOPATH mode, pgx v4 from /usr/share/gocode)"
cd "$pkg"
as_user env PATH="/usr/lib/go/bin:/usr/bin:/bin" HOME="$work" \
	PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER="$PGUSER" PGDATABASE="$PGDATABASE" \
	PG_BIN="$PG_BIN" IDEM_PGDATA="$IDEM_PGDATA" IDEM_CLIENT_WORK="$work" \
	GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOCACHE="$work/cache" GOFLAGS= \
	go test -count=1 -timeout 10m -v . 2>&1 | tee "$work/test.log"
status=${PIPESTATUS[0]}

passed=$(grep -c '^--- PASS' "$work/test.log")
failed=$(grep -c '^--- \(FAIL\|SKIP\)' "$work/test.log")
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
	failed=1 # the package did not build, or go test failed outside a test
fi
echo "clients/go: $passed passed, $failed failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
