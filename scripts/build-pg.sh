#!/usr/bin/env bash
# scripts/build-pg.sh: build a PostgreSQL major that Debian 12 does not
# package (17, 18) from Debian's upstream source tarball, into a cache
# outside the repository, so that the suites can run against it
# (PG=17 bash scripts/test.sh calls this first).
#
# Usage: bash scripts/build-pg.sh MAJOR     (as root, or as a user with sudo)
#
# The server lands in $IDEM_PG_CACHE/pg-MAJOR (default
# /var/cache/idempotency/pg-17) with all of contrib, the regression and
# isolation drivers and the TAP modules that PGXS's installcheck uses.  It
# is reused when its marker file, written last, records the same configure
# options; remove the directory to rebuild.  The source is unpacked,
# configured and compiled by a user of its own, _idembuild; only "make
# install" runs as root, once that user's processes are gone and the tree
# is root's.
#
# The tarball comes through a private apt configuration kept in the cache:
# deb-src lines for trixie and sid, nothing else.  The machine's own apt
# sources and caches are neither read nor changed, nothing from those
# suites is installed, and apt checks the tarball against the signed index.
# A mirror can lag behind its index (the one this was first run against
# listed 17.12 and served 17.11 at most); then a known tarball is taken
# from the pool, or failing that from snapshot.debian.org, checked against
# the SHA-256 in its Debian .dsc (whose signature was verified with
# debian-keyring when it was copied).  IDEM_PG_TARBALL names a tarball to
# build instead, for a machine that reaches neither.

source "$(dirname "$0")/lib.sh"
mirror=${IDEM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" -eq 0 ] ||
	exec sudo env IDEM_PG_CACHE="$IDEM_PG_CACHE" IDEM_DEBIAN_MIRROR="$mirror" \
		IDEM_PG_CONFIGURE="${IDEM_PG_CONFIGURE:-}" IDEM_PG_TARBALL="${IDEM_PG_TARBALL:-}" \
		bash "$0" "$@"
umask 022

major=${1:?usage: build-pg.sh MAJOR}
case $major in
16 | 17 | 18) ;;
*) echo "build-pg.sh: PostgreSQL $major cannot be built here (idempotency supports 15, packaged, and 16 to 18)" >&2; exit 1 ;;
esac
# Compiles as a user of its own, never the cluster owner ($IDEM_USER): that
# one runs test SQL, and whatever it leaves running must not get to touch a
# tree that root installs from and whose pg_config root runs later.
builder=_idembuild
prefix=$(idem_pg_prefix "$major")
marker=$prefix/.idempotency-built
# ICU is left out to spare a large build dependency: the suites run in the
# C.UTF-8 locale and never ask for an ICU collation.  IDEM_PG_CONFIGURE
# adds options, e.g. "--enable-cassert --enable-debug", for a build of its
# own beside the plain one.
read -ra extra <<<"${IDEM_PG_CONFIGURE:-}"
configure=(--prefix="$prefix" --enable-tap-tests --without-icu "${extra[@]}")
want="configure ${configure[*]}"

built() { [ "$(head -n 1 "$marker" 2>/dev/null)" = "$want" ]; }

# Root builds and installs here and later runs pg_config from here: refuse a
# cache that another user could change, through it or through a parent
# (a parent writable by others is fine only with the sticky bit, as /tmp).
mkdir -p "$IDEM_PG_CACHE"
d=$(cd "$IDEM_PG_CACHE" && pwd -P)
# The path checked must be the path used: a symbolic link on the way, which
# its owner can point elsewhere later, is refused.
if [ "$d" != "$IDEM_PG_CACHE" ]; then
	echo "build-pg.sh: $IDEM_PG_CACHE is not a canonical path (it resolves to $d); set IDEM_PG_CACHE=$d" >&2
	exit 1
fi
first=yes
while :; do
	read -r owner mode <<<"$(stat -c '%u %a' "$d")"
	if { [ "$owner" != 0 ] && [ "$owner" != "$(id -u)" ]; } ||
		{ [ $((8#$mode & 8#022)) -ne 0 ] && { [ $first = yes ] || [ ! -k "$d" ]; }; }; then
		echo "build-pg.sh: $d can be changed by other users; refusing to build in $IDEM_PG_CACHE" >&2
		exit 1
	fi
	[ "$d" = / ] && break
	d=$(dirname "$d")
	first=no
done

built && exit 0

# Two runs for the same major wait for each other rather than both build.
exec 9>"$prefix.lock"
flock 9
built && exit 0
# What a run killed before its cleanup left behind.
rm -rf "$IDEM_PG_CACHE/build-${prefix##*/}".*

# Since 17 the tarballs no longer carry the generated parsers: bison and
# flex are needed.  IPC::Run is what --enable-tap-tests checks for.
idem_apt_install build-essential bison flex perl libipc-run-perl \
	libreadline-dev zlib1g-dev bzip2 xz-utils debian-archive-keyring
id "$builder" >/dev/null 2>&1 ||
	useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$builder"
# As the builder, without the locks (fd 8, 9), which an orphan would hold.
as_builder() { runuser -u "$builder" -- "$@" 8>&- 9>&-; }

work=$(mktemp -d "$IDEM_PG_CACHE/build-${prefix##*/}.XXXXXX")
beat=
trap '[ -z "$beat" ] || kill "$beat" 2>/dev/null; rm -rf "$work"' EXIT
chmod 755 "$work"
mkdir "$work/dl" "$work/src"
# apt downloads as its own unprivileged user, _apt, into directories it owns.
chown _apt "$work/dl"

# A known tarball of each major: version, SHA-256, SHA-1 (snapshot.debian.org
# files are named by their SHA-1).
declare -A known=(
	[17]="17.11 dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979 0d59f4ff2bacd7edb8dbb47571d18c3d91c289c4"
	[18]="18.6 555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f a0b624ab95fd6fae676bc929d0e6fbcbc777c327"
)

fetch_known() {
	local version sha256 sha1 file url
	if [ -z "${known[$major]:-}" ]; then
		echo "build-pg.sh: no source of PostgreSQL $major in Debian trixie or sid; set IDEM_PG_TARBALL to its tarball, or add apt.postgresql.org to the apt sources to use its packages" >&2
		return 1
	fi
	read -r version sha256 sha1 <<<"${known[$major]}"
	file=postgresql-${major}_$version.orig.tar.bz2
	for url in "$mirror/pool/main/p/postgresql-$major/$file" \
		"https://snapshot.debian.org/file/$sha1"; do
		say "the mirror lacks that version; taking PostgreSQL $version from $url"
		rm -f "$work/dl"/*
		/usr/lib/apt/apt-helper "${apt_opts[@]}" download-file \
			"$url" "$work/dl/$file" "SHA256:$sha256" && return 0
	done
	echo "build-pg.sh: no source of PostgreSQL $major could be downloaded; set IDEM_PG_TARBALL to a tarball" >&2
	return 1
}

if [ -n "${IDEM_PG_TARBALL:-}" ]; then
	orig=$IDEM_PG_TARBALL
else
	say "fetching the PostgreSQL $major source (Debian trixie, sid)"
	# The private apt state is shared by the builds of every major.
	exec 8>"$IDEM_PG_CACHE/apt.lock"
	flock 8
	apt=$IDEM_PG_CACHE/apt
	mkdir -p "$apt/lists/partial" "$apt/cache"
	chown _apt "$apt/lists/partial"
	for suite in trixie sid; do
		echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main"
	done >"$apt/sources.list"
	apt_opts=(-o Dir::Etc::sourcelist="$apt/sources.list" -o Dir::Etc::sourceparts=-
		-o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache"
		-o APT::Get::List-Cleanup=0)
	# An index that cannot be fetched is an error, not a reason to build
	# from an older one.
	if ! apt-get "${apt_opts[@]}" --error-on=any -qq update 2>"$work/apt.log"; then
		sed 's/^/   /' "$work/apt.log" >&2
		echo "build-pg.sh: the Debian mirror $mirror gave no usable index; set IDEM_DEBIAN_MIRROR to another, or IDEM_PG_TARBALL to a PostgreSQL $major source tarball" >&2
		exit 1
	fi
	if ! (cd "$work/dl" && apt-get "${apt_opts[@]}" -qq source --download-only \
		"postgresql-$major" 2>"$work/apt.log"); then
		grep -m 1 '^E:' "$work/apt.log" | sed 's/^/   /' || true
		fetch_known
	fi
	exec 8>&-
	orig=$(ls "$work"/dl/postgresql-"$major"_*.orig.tar.*)
fi
chown "$builder" "$work/src"
case $orig in
*.bz2) z=-j ;; *.xz) z=-J ;; *.gz) z=-z ;; *) z= ;;
esac
as_builder tar -C "$work/src" --no-same-owner --no-same-permissions $z -xf - <"$orig"
tree=$(ls -d "$work"/src/postgresql-*/)
version=${tree%/}
version=${version##*/postgresql-}

say "building PostgreSQL $version into $prefix"
# The marker goes first, so that an interrupted removal is never reused.
rm -f "$marker"
rm -rf "$prefix"
cd "$tree"
as_builder ./configure --quiet "${configure[@]}" </dev/null
# world-bin is the server, contrib and the test drivers, without the docs.
# A build takes minutes: a line each minute says it is still going.
(
	trap 'exit 0' TERM
	exec 8>&- 9>&-
	n=0
	while :; do
		sleep 60 >/dev/null 2>&1 &
		wait $!
		# A run killed with SIGKILL leaves no one to stop this.
		kill -0 $$ 2>/dev/null || exit 0
		n=$((n + 1))
		echo "   still building PostgreSQL $version ($n min)"
	done
) &
beat=$!
as_builder make -s -j"$(nproc)" world-bin </dev/null >"$work/make.log" 2>&1 ||
	{ tail -n 50 "$work/make.log"; exit 1; }
kill "$beat"
beat=
# Freeze the tree before root reads it: nothing of the builder's may still
# run, and nothing in it stays the builder's.
as_builder kill -KILL -1 2>/dev/null || true
chown -R root:root "$work/src"
make -s install-world-bin >/dev/null
printf '%s\nversion %s\n' "$want" "$version" >"$marker"
