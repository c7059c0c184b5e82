#!/usr/bin/env bash
# clients/node/test.sh: the Node client's tests against a running server.
#
# scripts/test.sh calls it with PGHOST PGPORT PGUSER PGDATABASE (a running
# cluster that preloads the extension; the tests create it), PG_BIN and
# IDEM_PGDATA (one test restarts the server: pg_ctl restart -m immediate),
# IDEM_USER (the cluster's owner) and IDEM_CLIENT_WORK (a scratch directory
# that user owns).  Run as root, it copies the client to
# $IDEM_CLIENT_WORK/node, installs the npm dependencies there as $IDEM_USER
# (npm ci, from the committed package-lock.json: pg, and express for one
# test) and runs `node --test` as that user.  Node 18 or later must be on
# the PATH already (the machine's node 20 and npm; Debian's npm package is
# not installed).  The last line is "clients/node: N passed, M failed"; the
# status is non-zero on any failure.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

finish() {
	echo "clients/node: $1 passed, $2 failed"
	[ "$2" -eq 0 ] && [ "$1" -gt 0 ]
	exit
}

for v in PGHOST PGPORT PGUSER PGDATABASE PG_BIN IDEM_PGDATA IDEM_USER IDEM_CLIENT_WORK; do
	if [ -z "${!v:-}" ]; then
		echo "clients/node/test.sh: $v is not set" >&2
		finish 0 1
	fi
done
# A machine without Node gets Debian's (18, with npm 9), as root.
if { ! command -v node >/dev/null || ! command -v npm >/dev/null; } && [ "$(id -u)" -eq 0 ]; then
	echo "== installing nodejs npm"
	{ DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq &&
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
			--no-install-recommends nodejs npm; } >&2 || finish 0 1
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	echo "clients/node/test.sh: node and npm are needed on the PATH (Node 18 or later); run as root to install Debian's" >&2
	finish 0 1
fi
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 18 ]; then
	echo "clients/node/test.sh: Node 18 or later is needed, found $(node --version)" >&2
	finish 0 1
fi

# Run as the cluster's owner, with only what the tests need.
as_user() {
	local envs=(PATH="$PATH" HOME="$work" npm_config_cache="$work/.npm-cache"
		npm_config_update_notifier=false)
	local v
	for v in PGHOST PGPORT PGUSER PGDATABASE PG_BIN IDEM_PGDATA IDEM_CLIENT_WORK; do
		envs+=("$v=${!v}")
	done
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$IDEM_USER" -- env -i "${envs[@]}" "$@"
	else
		env -i "${envs[@]}" "$@"
	fi
}

work=$IDEM_CLIENT_WORK/node
rm -rf "$work"
mkdir -p "$work"
tar -C "$here" --exclude=node_modules -cf - . | tar -C "$work" -xf -
[ "$(id -u)" -ne 0 ] || chown -R "$IDEM_USER" "$work"

echo "== clients/node: npm ci"
if ! (cd "$work" && as_user npm ci --no-audit --no-fund --loglevel=error); then
	echo "clients/node/test.sh: npm ci failed" >&2
	finish 0 1
fi

echo "== clients/node: node --test"
log=$work/test-output.tap
set +e
(cd "$work" && as_user node --test --test-concurrency=1 --test-reporter=tap test/) 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$log" | tail -1)
failed=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$log" | tail -1)
passed=${passed:-0}
failed=${failed:-0}
# a runner that ended without its summary, or with an error status, failed
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
	failed=1
fi
finish "$passed" "$failed"
