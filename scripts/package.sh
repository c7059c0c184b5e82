#!/usr/bin/env bash
# scripts/package.sh: build the Debian package postgresql-15-idempotency
# with Debian's PostgreSQL packaging tools (debian/, pg_buildext), install
# it with apt-get, run the regression and isolation suites against a
# throwaway cluster of the packaged server using only the files the package
# installed, and remove it again.  Exits non-zero on any failure; the last
# line reads "PostgreSQL 15 package: N ok, M not ok".
#
# Usage: bash scripts/package.sh       (as root, or as a user with sudo)
#
# The package is built from a copy of the tree by the unprivileged cluster
# owner (idemtest when run as root), never by root.  The copy, the build,
# the logs and the cluster live in a fresh directory of their own
# (/tmp/idempotency-package.XXXXXX, removed when everything passed) and the
# cluster listens on a port of its own (IDEM_PACKAGE_PORT, 54339), so that
# a run never meets test.sh's or demo.sh's.
#
# Extension files that "make install" (test.sh, demo.sh) left in the
# server's directories are moved aside while the package is installed, so
# that nothing but the package's own files can satisfy the suites, and are
# put back afterwards: the machine ends as it began.  Running this while
# test.sh or demo.sh installs into the same server is not supported.

# One major: the one this Debian release packages (pg_buildext builds for
# it), 15 on Debian 12.
PG=${PG:-15}
source "$(dirname "$0")/lib.sh"

if [ "$PG_PACKAGED" != yes ]; then
	echo "package.sh: PostgreSQL $PG_MAJOR is not packaged for this system; the package is built for a packaged major" >&2
	exit 1
fi
# What test.sh or the caller set for their own cluster is not ours.
IDEM_PORT=${IDEM_PACKAGE_PORT:-54339}
unset PGHOST PGPORT PGDATABASE

idem_packages
idem_apt_install debhelper dpkg-dev postgresql-server-dev-all lintian
idem_owner

PKG=postgresql-$PG_MAJOR-idempotency
PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
EXTDIR=$("$PG_CONFIG" --sharedir)/extension
EXTVERSION=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$IDEM_SRC/idempotency.control")
DEBVERSION=$(dpkg-parsechangelog -l "$IDEM_SRC/debian/changelog" -S Version)
DEB=${PKG}_${DEBVERSION}_$(dpkg --print-architecture).deb

if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q ' installed$'; then
	echo "package.sh: $PKG is installed already; remove it first (apt-get purge $PKG)," >&2
	echo "so that this run installs and removes only its own build" >&2
	exit 1
fi

IDEM_WORK=$(mktemp -d /tmp/idempotency-package.XXXXXX)
mkdir -p "$IDEM_WORK/build" "$IDEM_WORK/check" "$IDEM_WORK/sock" "$IDEM_WORK/aside"
# The owner builds and runs the cluster here; apt-get reads the .deb as its
# sandbox user _apt, so the path stays readable to others.
[ "$(id -u)" -ne 0 ] || chown -R "$IDEM_USER" "$IDEM_WORK"
chmod 755 "$IDEM_WORK"
LOG=$IDEM_WORK/package.log

passed=0
failed=0
installed=no
aside=no
summarised=no

# Record one check: "ok - what" or "not ok - what", as TAP words it.
check() {
	local what=$1
	shift
	if "$@" >>"$LOG" 2>&1; then
		echo "ok - $what"
		passed=$((passed + 1))
	else
		echo "not ok - $what (see $LOG)"
		failed=$((failed + 1))
		return 1
	fi
}

# Give up after a failed check; the EXIT trap below cleans up.
stop() {
	echo "package.sh: stopped" >&2
	exit 1
}

# The extension's files in the server's directories, one a line.
extension_files() {
	find "$PKGLIBDIR" "$EXTDIR" \( -path "$PKGLIBDIR/idempotency.so" -o \
		-path "$PKGLIBDIR/bitcode/idempotency*" -o -path "$EXTDIR/idempotency*" \) \
		\( -type f -o -type l \) | sort
}

# Files of the extension no package owns: what "make install" left.
unowned_files() {
	local f
	extension_files | while read -r f; do
		dpkg -S "$f" >/dev/null 2>&1 || echo "$f"
	done
}

# Put back what "make install" had left, as it was.
restore_aside() {
	[ $aside = yes ] || return 0
	as_root tar -C / -xpf "$IDEM_WORK/aside/files.tar"
	aside=no
}

build_package() {
	(cd "$src" && as_owner dpkg-buildpackage -us -uc -b -j2) >"$IDEM_WORK/build.log" 2>&1 ||
		{ tail -n 40 "$IDEM_WORK/build.log"; return 1; }
	test -f "$IDEM_WORK/build/$DEB" ||
		{ echo "no $DEB: does debian/pgversions cover PostgreSQL $PG_MAJOR?"; return 1; }
}

install_package() {
	installed=yes
	(cd "$IDEM_WORK/build" && idem_apt_get install -y -qq "./$DEB")
}

remove_package() {
	[ $installed = yes ] || return 0
	idem_apt_get purge -y -qq "$PKG"
	installed=no
}

owned() {
	dpkg -S "$1" | grep -q "^$PKG: "
}

# Only the package's files: each of the extension's files in the server's
# directories belongs to it.
all_owned() {
	local f files
	files=$(extension_files)
	[ -n "$files" ] || return 1
	while read -r f; do
		owned "$f" || { echo "not the package's: $f"; return 1; }
	done <<<"$files"
	echo "$files"
}

# dpkg's checksums: the files are as the package shipped them.
verified() {
	local out
	out=$(dpkg --verify "$PKG") && [ -z "$out" ] || { echo "$out"; return 1; }
}

not_installed() {
	! dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q ' installed$'
}

# The version CREATE EXTENSION installs, in a database made for it.
extension_version() {
	as_owner psql -X -q -At -v ON_ERROR_STOP=1 -d postgres <<-'SQL'
		CREATE DATABASE idem_package;
		\c idem_package
		CREATE EXTENSION idempotency;
		SELECT extversion FROM pg_extension WHERE extname = 'idempotency';
		\c postgres
		DROP DATABASE idem_package;
	SQL
}

extension_version_is() {
	local v
	v=$(extension_version) && echo "$v" && [ "$v" = "$1" ]
}

# On any way out: stop the cluster, remove the package if this run
# installed it, and put back what was moved aside.
cleanup() {
	local rc=$?
	idem_stop_cluster
	remove_package || { echo "package.sh: could not remove $PKG; apt-get purge $PKG" >&2; rc=1; }
	restore_aside || { echo "package.sh: could not restore $IDEM_WORK/aside/files.tar" >&2; rc=1; }
	if [ $summarised = no ]; then
		echo "PostgreSQL $PG_MAJOR package: $passed ok, $((failed > 0 ? failed : 1)) not ok"
		rc=1
	fi
	[ $rc -eq 0 ] || echo "package.sh: logs are in $IDEM_WORK" >&2
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building $DEB as $IDEM_USER in $IDEM_WORK/build"
# The package's upstream version is the control file's default_version;
# debian/rules refuses a build where they differ, and so does this.
check "debian/changelog's version $DEBVERSION is the control file's $EXTVERSION" \
	test "${DEBVERSION%-*}" = "$EXTVERSION" || stop
src=$IDEM_WORK/build/postgresql-idempotency-$EXTVERSION
mkdir -p "$src"
# The tree as test.sh copies it, without build products of an earlier
# package build in the tree either.
tar -C "$IDEM_SRC" --exclude=.git --exclude='*.o' --exclude='*.so' \
	--exclude='*.bc' --exclude=results --exclude=output_iso \
	--exclude=tmp_check --exclude=log --exclude='./debian/postgresql-*-idempotency' \
	--exclude='./debian/*.substvars' --exclude=./debian/files \
	--exclude='./debian/*debhelper*' -cf - . | tar -C "$src" -xf -
cp -a "$src/." "$IDEM_WORK/check/"
[ "$(id -u)" -ne 0 ] || chown -R "$IDEM_USER" "$IDEM_WORK/build" "$IDEM_WORK/check" "$IDEM_WORK/sock"
start=$SECONDS
check "dpkg-buildpackage -b builds $DEB" build_package || stop
echo "(built in $((SECONDS - start)) s)"

say "lintian"
# Errors fail the run; warnings and notes are shown and left to judgement
# (doc/packaging.md says which remain and why).
lint=0
(cd "$IDEM_WORK/build" && as_owner lintian -I --fail-on error "$DEB") >"$IDEM_WORK/lintian.log" 2>&1 ||
	lint=1
cat "$IDEM_WORK/lintian.log"
check "lintian reports no errors" test $lint -eq 0 || true

say "installing $DEB"
if [ -n "$(unowned_files)" ]; then
	echo "moving aside what \"make install\" left (put back at the end):"
	unowned_files | tee "$IDEM_WORK/aside/files.txt"
	sed 's|^/||' "$IDEM_WORK/aside/files.txt" >"$IDEM_WORK/aside/members.txt"
	as_root tar -C / -cpf "$IDEM_WORK/aside/files.tar" -T "$IDEM_WORK/aside/members.txt"
	aside=yes
	as_root xargs -d '\n' -r rm -f <"$IDEM_WORK/aside/files.txt"
fi
check "apt-get install ./$DEB" install_package || stop
check "$PKG owns $PKGLIBDIR/idempotency.so" owned "$PKGLIBDIR/idempotency.so" || stop
check "$PKG owns $EXTDIR/idempotency.control" owned "$EXTDIR/idempotency.control" || stop
check "every extension file in the server's directories is the package's" all_owned || stop
check "dpkg --verify $PKG: the files as shipped" verified || stop

# The suites run from a copy of the tree that holds no build products;
# PGXS's installcheck builds nothing, and that it did not is checked after.
idem_start_cluster
trap cleanup EXIT
check "CREATE EXTENSION installs version $EXTVERSION from the package" \
	extension_version_is "$EXTVERSION" || true

cd "$IDEM_WORK/check"
declare -A result
suite() {
	local name=$1
	shift
	say "$name tests against the package"
	if as_owner make -s PG_CONFIG="$PG_CONFIG" installcheck "$@" 2>&1 |
		tee "$IDEM_WORK/$name.log"; then
		result[$name]=ok
	else
		result[$name]=FAILED
		for f in regression.diffs output_iso/regression.diffs; do
			[ -s "$f" ] && { echo "--- $f"; head -n 200 "$f"; }
		done
	fi
}
set +e
suite regression ISOLATION= TAP_TESTS=
suite isolation REGRESS= TAP_TESTS=
set -e
# Counted as test.sh counts them: a test or spec once, a suite that failed
# without a failing test once.
for name in regression isolation; do
	ok=$(grep -Ec '\.\.\. ok|^ok [0-9]+ ' "$IDEM_WORK/$name.log" || true)
	bad=$(grep -Ec '\.\.\. FAILED|^not ok [0-9]+ ' "$IDEM_WORK/$name.log" || true)
	[ "${result[$name]}" = ok ] || [ "$bad" -gt 0 ] || bad=1
	passed=$((passed + ok))
	failed=$((failed + bad))
done
check "installcheck built nothing in the tree it ran from" \
	test -z "$(find "$IDEM_WORK/check" \( -name '*.so' -o -name '*.o' \) -print -quit)" || true
cd /

say "removing $PKG"
idem_stop_cluster
check "apt-get purge $PKG" remove_package || true
check "no extension file left after the purge" test -z "$(extension_files)" || true
check "$PKG no longer installed" not_installed || true
if [ $aside = yes ]; then
	check "what \"make install\" had left is back" restore_aside || true
fi

say "summary: regression ${result[regression]}, isolation ${result[isolation]}"
echo "PostgreSQL $PG_MAJOR package: $passed ok, $failed not ok"
summarised=yes
if [ $failed -ne 0 ]; then
	exit 1
fi
trap - EXIT
rm -rf "$IDEM_WORK"
