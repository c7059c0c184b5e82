# scripts/lib.sh: set-up shared by demo.sh, test.sh and the benchmarks.
#
# Sourced, not run.  It installs what is missing (Debian packages), builds
# and installs the extension from a private copy of the source tree, and
# starts a throwaway PostgreSQL cluster that preloads it.  initdb and
# postgres refuse to run as root, so when run as root everything that
# touches the cluster runs as the unprivileged user $IDEM_USER (created if
# needed); run as another user, that user owns the cluster and sudo is used
# for apt-get and "make install".
#
# Every step can be repeated.  Each run works in a directory of its own
# (idem_workdir), so that two runs at once never share a build or a
# cluster: the cluster listens only on a socket in that directory, so the
# port number may be the same.  Both do install into the same PostgreSQL.
#
# PG chooses the major: 15, the one Debian 12 packages, by default.  Any
# other (17, 18) comes from packages too when the machine's apt sources
# offer them (apt.postgresql.org, a later Debian); otherwise, or with
# IDEM_PG_BUILD=1, scripts/build-pg.sh builds it from source into
# $IDEM_PG_CACHE and it is used from there.

set -euo pipefail

IDEM_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=${PG:-${PG_MAJOR:-15}}
IDEM_PG_CACHE=$(realpath -ms "${IDEM_PG_CACHE:-/var/cache/idempotency}")
# Where scripts/build-pg.sh installs a major: pg-17, or with configure
# options of one's own (IDEM_PG_CONFIGURE) pg-17-<digest of them>, so that
# a debug build never replaces the plain one under a running suite.
idem_pg_prefix() {
	local name=pg-$1
	[ -z "${IDEM_PG_CONFIGURE:-}" ] ||
		name+=-$(printf '%s' "$IDEM_PG_CONFIGURE" | sha256sum | cut -c1-8)
	echo "$IDEM_PG_CACHE/$name"
}

PG_PACKAGED=no
if [ "$PG_MAJOR" = 15 ] || { [ -z "${IDEM_PG_BUILD:-}" ] &&
	apt-cache policy "postgresql-server-dev-$PG_MAJOR" 2>/dev/null | grep -q 'Candidate: [0-9]'; }; then
	PG_PACKAGED=yes
	PG_BIN=${PG_BIN:-/usr/lib/postgresql/$PG_MAJOR/bin}
else
	PG_BIN=${PG_BIN:-$(idem_pg_prefix "$PG_MAJOR")/bin}
fi
PG_CONFIG=$PG_BIN/pg_config
IDEM_USER=${IDEM_USER:-idemtest}
IDEM_PORT=${IDEM_PORT:-54329}

say() { printf '\n== %s\n' "$*"; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Run a command as the cluster's owner, with the connection settings.
as_owner() {
	local envs=(PATH="$PG_BIN:$PATH") v
	for v in PGHOST PGPORT PGUSER PGDATABASE; do
		[ -z "${!v:-}" ] || envs+=("$v=${!v}")
	done
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$IDEM_USER" -- env "${envs[@]}" "$@"
	else
		env "${envs[@]}" "$@"
	fi
}

# Install those of the given Debian packages that are missing.
idem_apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		say "installing ${missing[*]}"
		idem_apt_get update -qq
		idem_apt_get install -y -qq --no-install-recommends "${missing[@]}"
	fi
}

# apt-get as root, waiting up to ten minutes for another apt-get or dpkg
# (an unattended upgrade, say) to let go of its locks.  apt's own
# DPkg::Lock::Timeout covers dpkg's lock but not that of "apt-get update".
idem_apt_get() {
	local deadline=$((SECONDS + 600)) log said=no
	log=$(mktemp)
	until as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get -o DPkg::Lock::Timeout=600 "$@" 2>"$log"; do
		if ! grep -q 'Could not get lock' "$log" || [ $SECONDS -ge $deadline ]; then
			cat "$log" >&2
			rm -f "$log"
			return 1
		fi
		[ $said = yes ] || say "waiting for another apt-get or dpkg to finish (up to 10 minutes)"
		said=yes
		sleep 5
	done
	grep -v '^$' "$log" >&2 || true
	rm -f "$log"
}

# Install what the chosen major needs: its packages where apt has them, a
# build from source otherwise.  "idem_packages tests" adds what only the
# test suites use (IPC::Run and pgrep for the TAP tests).
idem_packages() {
	local pkgs=(build-essential make perl)
	[ "${1:-}" != tests ] || pkgs+=(libipc-run-perl procps)
	[ "$PG_PACKAGED" = no ] || pkgs+=("postgresql-$PG_MAJOR"
		"postgresql-server-dev-$PG_MAJOR" "postgresql-client-$PG_MAJOR")
	# PL/Proxy and pg_auto_failover, for the router's tests
	# (t/017_router.pl, t/018_router_failover.pl skip without them).
	[ "$PG_PACKAGED" = no ] || [ "${1:-}" != tests ] || pkgs+=("postgresql-$PG_MAJOR-plproxy"
		"postgresql-$PG_MAJOR-auto-failover" pg-auto-failover-cli)
	idem_apt_install "${pkgs[@]}"
	[ "$PG_PACKAGED" = yes ] || bash "$IDEM_SRC/scripts/build-pg.sh" "$PG_MAJOR"
}

# Create the unprivileged owner of the throwaway cluster when run as root.
idem_owner() {
	if [ "$(id -u)" -eq 0 ]; then
		id "$IDEM_USER" >/dev/null 2>&1 ||
			useradd --system --create-home --shell /bin/bash "$IDEM_USER"
		export PGUSER=$IDEM_USER
	else
		IDEM_USER=$(id -un)
		export PGUSER=$IDEM_USER
	fi
}

# Choose this run's work directory: $IDEM_WORK if given (made anew), or a
# new /tmp/idempotency-NAME.XXXXXX, removed at exit unless the run failed
# or IDEM_KEEP_WORK=1.
idem_workdir() {
	if [ -z "${IDEM_WORK:-}" ]; then
		IDEM_WORK=$(mktemp -d "/tmp/idempotency-$1.XXXXXX")
		IDEM_WORK_MADE=yes
	fi
}

# At exit: stop the cluster, and remove a work directory idem_workdir made
# if the run succeeded.
idem_exit() {
	local status=$1
	idem_stop_cluster
	if [ "${IDEM_WORK_MADE:-}" = yes ] && [ -d "$IDEM_WORK" ]; then
		if [ "$status" -eq 0 ] && [ -z "${IDEM_KEEP_WORK:-}" ]; then
			rm -rf "$IDEM_WORK"
		else
			echo "(the cluster's log and the suites' output are kept in $IDEM_WORK)"
		fi
	fi
}

# Copy the source tree to $IDEM_WORK/src, build it there as the owner
# with warnings as errors, and install it.
idem_build() {
	idem_stop_cluster
	rm -rf "$IDEM_WORK"
	mkdir -p "$IDEM_WORK/src" "$IDEM_WORK/sock"
	tar -C "$IDEM_SRC" --exclude=.git --exclude='*.o' --exclude='*.so' \
		--exclude='*.bc' --exclude=results --exclude=output_iso \
		--exclude=tmp_check --exclude=log --exclude=node_modules -cf - . | tar -C "$IDEM_WORK/src" -xf -
	[ "$(id -u)" -ne 0 ] || chown -R "$IDEM_USER" "$IDEM_WORK"
	say "building idempotency (-Wall -Wextra -Werror)"
	as_owner make -s -C "$IDEM_WORK/src" PG_CONFIG="$PG_CONFIG" -j2
	as_root make -s -C "$IDEM_WORK/src" PG_CONFIG="$PG_CONFIG" install
	# make install leaves scripts of versions the tree no longer has (a
	# renamed one): remove them, so that what is installed is the tree.
	local f ext
	ext=$("$PG_CONFIG" --sharedir)/extension
	for f in "$ext"/idempotency--*.sql; do
		[ ! -e "$f" ] || [ -e "$IDEM_WORK/src/sql/${f##*/}" ] || as_root rm -f "$f"
	done
}

idem_stop_cluster() {
	if [ -n "${IDEM_WORK:-}" ] && [ -f "$IDEM_WORK/data/postmaster.pid" ]; then
		as_owner "$PG_BIN/pg_ctl" -D "$IDEM_WORK/data" -m fast -w stop >/dev/null 2>&1 ||
			as_owner "$PG_BIN/pg_ctl" -D "$IDEM_WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
	fi
}

# Start a throwaway cluster with the extension preloaded.  Extra lines for
# postgresql.conf may be passed as arguments.
idem_start_cluster() {
	say "starting a throwaway PostgreSQL $PG_MAJOR cluster in $IDEM_WORK/data"
	as_owner "$PG_BIN/initdb" -D "$IDEM_WORK/data" -A trust -U "$IDEM_USER" \
		-E UTF8 --locale=C.UTF-8 >"$IDEM_WORK/initdb.log"
	{
		echo "shared_preload_libraries = 'idempotency'"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$IDEM_WORK/sock'"
		echo "unix_socket_permissions = 0700"
		echo "port = $IDEM_PORT"
		echo "max_connections = 50"
		printf '%s\n' "$@"
	} | as_owner tee -a "$IDEM_WORK/data/postgresql.conf" >/dev/null
	as_owner "$PG_BIN/pg_ctl" -D "$IDEM_WORK/data" -l "$IDEM_WORK/postgres.log" -w start >/dev/null
	export PGHOST=$IDEM_WORK/sock PGPORT=$IDEM_PORT PGDATABASE=postgres
	trap 'idem_exit $?' EXIT
}
