# An updated install equals a fresh one.  A database made at the first
# release (1.0.0), with claims, a guarded table, policies, leases and
# one-time tokens in it, is updated with ALTER EXTENSION idempotency UPDATE
# to the control file's default_version: what it held still behaves (a
# completed claim replays, an open one is its owner's to complete, a failed
# one is taken over, the guard judges as before, the lease is held, a
# one-time token is good once and a consumed one never, policies bind,
# keyed lock ids stay), and t/catalog.sql describes it exactly as it
# describes a database where CREATE EXTENSION made the default version
# directly; a difference is printed as a unified diff.  Every other full
# install script is updated and compared the same way, every version has
# an update path to the default one, and the one version string agrees
# across the control file, META.json and CHANGELOG.md.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Basename qw(basename);
use IPC::Run;
use JSON::PP;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $srcdir = "$FindBin::RealBin/..";

# The one version string.
my ($default) = slurp_file("$srcdir/idempotency.control") =~ /^default_version = '([^']+)'/m;
ok(defined $default, 'the control file has a default_version');
my $meta = decode_json(slurp_file("$srcdir/META.json"));
is($meta->{version}, $default, 'META.json version is the control file\'s default_version');
is($meta->{provides}{idempotency}{version}, $default, 'and so is META.json provides.idempotency.version');
is($meta->{provides}{idempotency}{file}, "sql/idempotency--$default.sql",
	'whose file is the install script of that version');
my ($heading) = slurp_file("$srcdir/CHANGELOG.md") =~ /^## (\S+)/m;
is($heading, $default, 'the top version heading of CHANGELOG.md is the default_version');

# Full install scripts in the source tree, oldest first.
my @versions = sort { version_cmp($a, $b) }
  map { basename($_) =~ /^idempotency--([^-]+(?:-(?!-)[^-]+)*)\.sql$/ ? $1 : () }
  glob("$srcdir/sql/idempotency--*.sql");
ok((grep { $_ eq $default } @versions), "the default version $default has an install script");
ok((grep { $_ eq '1.0.0' } @versions), 'the first release 1.0.0 still has its install script');

my $node = preloaded_node('upgrade');

# The scripts PostgreSQL finds are the source tree's.  "make install"
# removes nothing, so a script renamed or deleted since an earlier install
# stays behind: an update script left so would add update paths, and take
# part in them, unseen; an install script left so only offers a version
# nobody can reach, and is reported.
my $extdir = $node->config_data('--sharedir') . '/extension';
my %source = map { basename($_) => $_ } glob("$srcdir/sql/idempotency--*.sql");
for my $installed (sort glob("$extdir/idempotency--*.sql"))
{
	my $name = basename($installed);
	if (exists $source{$name})
	{
		ok(slurp_file($installed) eq slurp_file($source{$name}), "installed $name is the source tree's")
		  or diag("$installed differs from sql/$name: run make install");
	}
	elsif ($name =~ /^idempotency--.+--.+\.sql$/)
	{
		fail("installed $name is in the source tree");
		diag("$installed is not in the source tree: delete it");
	}
	else
	{
		diag("note: $installed is not in the source tree (left by an earlier install?)");
	}
}
ok(-f "$extdir/$_", "sql/$_ is installed") for sort keys %source;

# The module says the same version where PostgreSQL shows it (18 and later).
SKIP:
{
	skip 'pg_get_loaded_modules() is new in PostgreSQL 18', 1
	  if $node->safe_psql('postgres', 'SHOW server_version_num') < 180000;
	is($node->safe_psql('postgres', q{
		SELECT version FROM pg_get_loaded_modules() WHERE module_name = 'idempotency'}),
		$default, 'the loaded module reports the default_version');
}

# Every version reaches the default one.
my %paths = map { split /\|/, $_, 2 } split /\n/, $node->safe_psql('postgres', qq{
	SELECT source || '|' || coalesce(path, '') FROM pg_extension_update_paths('idempotency')
	WHERE target = '$default'});
for my $v (grep { $_ ne $default } @versions)
{
	ok(defined $paths{$v} && $paths{$v} ne '', "an update path leads from $v to $default")
	  or diag("update paths to $default: " . join(', ', map { "$_: $paths{$_}" } sort keys %paths));
}

# ---------------------------------------------------------------- fixtures
# At the first release, through the public API only.
$node->safe_psql('postgres', q{
	CREATE DATABASE upgraded;
	CREATE ROLE tap_tenant;
	CREATE ROLE tap_other;
});
$node->safe_psql('upgraded', q{
	CREATE EXTENSION idempotency VERSION '1.0.0';
	GRANT idempotency_user TO tap_tenant, tap_other;
	SET search_path = public, idempotency;
	SELECT idem_machine('order', 'pending->paid', 'paid->shipped', 'pending->cancelled');
	CREATE TABLE orders (id int PRIMARY KEY, state text NOT NULL, version int NOT NULL DEFAULT 0);
	SELECT idem_guard('orders', machine => 'order', version_column => 'version', strict_version => true);
	INSERT INTO orders (id, state) VALUES (1, 'pending'), (2, 'pending'), (3, 'pending');
	UPDATE orders SET state = 'paid', version = 1 WHERE id = 2;
	UPDATE orders SET state = 'cancelled', version = 1 WHERE id = 3;
	INSERT INTO policies (scope, max_key_length, require_fingerprint) VALUES ('payments', 12, true);
	INSERT INTO policies (scope, allowed_roles) VALUES ('tenant', '{tap_tenant}');
	CREATE TABLE ids (id snowflake PRIMARY KEY);
	INSERT INTO ids SELECT snowflake_id() FROM generate_series(1, 3);
});
is($node->safe_psql('upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
	'1.0.0', 'the fixtures are made at 1.0.0');

my ($live_token, $failed_token, $lease_token, $one_time, $used, $lock_id) = split /\|/,
  $node->safe_psql('upgraded', q{
	SET search_path = public, idempotency;
	SELECT (idem_claim('done', '1 day', idem_fingerprint('{"amount": 10}'))).token AS t \gset
	SELECT idem_complete('done', :t, '{"paid": 10}', 201) \g /dev/null
	SELECT (idem_claim('live', '1 day', lease => '1 hour')).token AS l \gset
	SELECT (idem_claim('failed', '1 day')).token AS f \gset
	SELECT idem_checkpoint('failed', :f, 'step-2') \g /dev/null
	SELECT idem_fail('failed', :f, true) \g /dev/null
	SELECT idem_token_issue() AS used \gset
	SELECT idem_token_consume(:'used') \g /dev/null
	SELECT :l, :f, idem_lease_acquire('job', 'worker-1', '1 hour'), idem_token_issue(), :'used',
		idem_lock_id('invoice:42')});
ok($live_token && $failed_token && $lease_token && $one_time && $used && $lock_id,
	'claims, a lease, one-time tokens and a lock id before the update');

# ---------------------------------------------------------------- update
# A role granted a function directly, which the update recreates, is named.
$node->safe_psql('upgraded', q{CREATE ROLE upgrade_app;
	GRANT EXECUTE ON FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean) TO upgrade_app});
my ($update_ret, $update_out, $update_err) = $node->psql('upgraded', 'ALTER EXTENSION idempotency UPDATE');
is($update_ret, 0, 'ALTER EXTENSION UPDATE succeeds');
like($update_err, qr/WARNING:  upgrade_app loses its EXECUTE grant on (?:idempotency\.)?idem_claim\(text,interval,bytea,text,interval,boolean\)/,
	'and warns of a direct grant it drops');
is($node->safe_psql('upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
	$default, "ALTER EXTENSION UPDATE reaches the default version $default");

# Claims.
check_claims_kept($node, 'upgraded', $live_token, 'the update');
is($node->safe_psql('upgraded', q{
	SELECT outcome || ' ' || response::text FROM idempotency.idem_claim('live', '1 day')}),
	'completed {"ok": true}', 'which then replays');
my ($outcome, $token, $attempts, $recovery) = split /\|/, $node->safe_psql('upgraded', q{
	SELECT outcome, token, attempts, recovery_point FROM idempotency.idem_claim('failed', '1 day')});
is("$outcome $attempts $recovery", 'reclaimed 2 step-2',
	'a failed claim is taken over, with its attempts and recovery point');
cmp_ok($token, '>', $failed_token, 'under a greater token');
cmp_ok($node->safe_psql('upgraded', q{SELECT (idempotency.idem_claim('new', '1 day')).token}),
	'>', $token, 'and a new claim gets a greater token still');
is($node->safe_psql('upgraded', q{
	SELECT idempotency.idem_complete('new', (idempotency.idem_lookup('new')).token, status => 201,
		body => '\x00ff', content_type => 'application/octet-stream', headers => '{"location": "/n"}');
	SELECT outcome, status, body, content_type, headers FROM idempotency.idem_claim('new', '1 day')}),
	"t\ncompleted|201|\\x00ff|application/octet-stream|{\"location\": \"/n\"}",
	'a body stored as bytes after the update is replayed as it was');

# The guard.
my ($ret, $out, $err) = $node->psql('upgraded',
	q{UPDATE orders SET state = 'pending', version = 2 WHERE id = 2});
like($err, qr/transition of "orders" from "paid" to "pending" is not allowed by machine "order"/,
	'the guard still refuses an illegal transition');
($ret, $out, $err) = $node->psql('upgraded', q{UPDATE orders SET state = 'shipped' WHERE id = 2});
like($err, qr/must set version column "version"/, 'and keeps strict_version');
is($node->safe_psql('upgraded', q{
	UPDATE orders SET state = 'shipped', version = 2 WHERE id = 2;
	SELECT string_agg(id || ':' || state || ':' || version, ' ' ORDER BY id) FROM orders}),
	'1:pending:1 2:shipped:3 3:cancelled:2', 'and lets a legal one through, bumping the version');
is($node->safe_psql('upgraded', q{
	SELECT outcome || ' ' || state || ' ' || version FROM idempotency.idem_transition('orders', 1, 'paid', 1)}),
	'applied paid 2', 'idem_transition works on a table guarded before the update');
($ret, $out, $err) = $node->psql('upgraded', q{INSERT INTO orders (id, state) VALUES (4, 'shipped')});
like($err, qr/new row of "orders" must start in an initial state of machine "order"/,
	'and a new row still starts in an initial state only');

# Leases.
is($node->safe_psql('upgraded', q{
	SELECT idempotency.idem_lease_acquire('job', 'worker-2', '1 hour') IS NULL}),
	't', 'a lease held before the update is still held');
is($node->safe_psql('upgraded', qq{SELECT idempotency.idem_lease_check('job', $lease_token)}),
	't', 'by the same token');
is($node->safe_psql('upgraded', qq{SELECT idempotency.idem_lease_renew('job', $lease_token, '1 hour')}),
	't', 'which renews it');
cmp_ok($node->safe_psql('upgraded', qq{
	SELECT idempotency.idem_lease_release('job', $lease_token) \\g /dev/null
	SELECT idempotency.idem_lease_acquire('job', 'worker-2', '1 hour')}),
	'>', $lease_token, 'and the next holder\'s token is greater');

# One-time tokens.
is($node->safe_psql('upgraded', qq{
	SELECT idempotency.idem_token_consume('$one_time')::text || ' '
		|| idempotency.idem_token_consume('$one_time')::text || ' '
		|| idempotency.idem_token_consume('$used')::text}),
	'true false false', 'a one-time token is good once after the update, a consumed one never');

# Keyed locks: no lasting state but the secret their ids come from.
is($node->safe_psql('upgraded', q{SELECT idempotency.idem_lock_id('invoice:42')}),
	$lock_id, 'a key keeps its lock id');
is($node->safe_psql('upgraded', q{
	BEGIN;
	SELECT idempotency.idem_try_lock('invoice:42');
	SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 73
		AND (classid::bigint << 32 | objid::bigint) = idempotency.idem_lock_id('invoice:42');
	COMMIT}),
	"t\n1", 'and takes its lock there');

# Policies.
($ret, $out, $err) = $node->psql('upgraded', q{SELECT idempotency.idem_claim('a-key-too-long', scope => 'payments',
	fingerprint => idempotency.idem_fingerprint('{}'))});
like($err, qr/key is too long for scope "payments"/, 'a policy still binds');
($ret, $out, $err) = $node->psql('upgraded', q{SELECT idempotency.idem_claim('k', scope => 'payments')});
like($err, qr/scope "payments" requires a fingerprint/, 'all of it');
($ret, $out, $err) = $node->psql('upgraded', q{SET ROLE tap_other; SELECT idempotency.idem_lookup('k', 'tenant')});
like($err, qr/permission denied for idempotency scope "tenant"/, 'allowed_roles keep other roles out');
is($node->safe_psql('upgraded', q{SET ROLE tap_tenant; SELECT idempotency.idem_lookup('k', 'tenant') IS NULL}),
	't', 'and let the listed role in');

# Snowflakes stored before the update, through the type's operator class.
is($node->safe_psql('upgraded', q{
	SET search_path = public, idempotency;
	SET enable_seqscan = off;
	SELECT count(*) FROM ids WHERE id < snowflake_id() AND id > 0::bigint}),
	'3', 'stored snowflakes still compare, also by index');

# ---------------------------------------------------------------- catalogs
# The updated database against a fresh one, then every other version.
sub catalog
{
	my ($db) = @_;
	my ($stdout, $stderr);
	my $ok = IPC::Run::run([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db),
			'-f', "$FindBin::RealBin/catalog.sql" ],
		'>', \$stdout, '2>', \$stderr);
	die "t/catalog.sql failed in database $db: $stderr" unless $ok;
	return $stdout;
}

sub catalogs_equal
{
	my ($db, $name) = @_;
	my $base = $node->basedir;
	my $got = catalog($db);
	my $want = catalog('fresh');
	if ($got eq $want)
	{
		pass($name);
		return;
	}
	for ([ "$base/$db.catalog", $got ], [ "$base/$db.fresh.catalog", $want ])
	{
		open my $fh, '>', $_->[0] or die "could not write $_->[0]: $!";
		print $fh $_->[1];
		close $fh;
	}
	my ($diff, $stderr);
	IPC::Run::run([ 'diff', '-u', "--label=fresh install of $default",
			"--label=database $db, updated", "$base/$db.fresh.catalog", "$base/$db.catalog" ],
		'>', \$diff, '2>', \$stderr);
	fail($name);
	diag("t/catalog.sql differs (- fresh, + updated):\n$diff");
}

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION idempotency');
like(catalog('fresh'), qr/^extension idempotency version: \Q$default\E$/m,
	't/catalog.sql describes the fresh install');
catalogs_equal('upgraded', "1.0.0 with data, updated to $default, equals a fresh install");

for my $v (grep { $_ ne $default && $_ ne '1.0.0' } @versions)
{
	my $db = "from_$v" =~ s/\W/_/gr;
	$node->safe_psql('postgres', qq{CREATE DATABASE "$db"});
	$node->safe_psql($db, qq{CREATE EXTENSION idempotency VERSION '$v'; ALTER EXTENSION idempotency UPDATE});
	catalogs_equal($db, "$v updated to $default equals a fresh install");
}

# Compare versions numerically part by part: 1.10.0 comes after 1.9.0.
sub version_cmp
{
	my @a = split /\./, $_[0];
	my @b = split /\./, $_[1];
	while (@a || @b)
	{
		my ($x, $y) = (shift(@a) // 0, shift(@b) // 0);
		my $c = ($x =~ /^\d+$/ && $y =~ /^\d+$/) ? $x <=> $y : $x cmp $y;
		return $c if $c;
	}
	return 0;
}

# A session that drops and creates the extension again and again keeps
# what it caches per backend bounded: the result rows of idem_claim and
# idem_transition, looked up by function, do not pile up once the
# functions of earlier installs are gone.
$node->safe_psql('postgres', 'CREATE DATABASE recreated');
my $cache_growth = $node->safe_psql('recreated', q{
	CREATE TABLE t (id int PRIMARY KEY, state text NOT NULL);
	INSERT INTO t VALUES (1, 'new');
	CREATE PROCEDURE recreate() LANGUAGE plpgsql AS $$ BEGIN
		DROP EXTENSION IF EXISTS idempotency CASCADE;
		DROP SCHEMA IF EXISTS idempotency;
		CREATE EXTENSION idempotency;
		PERFORM idempotency.idem_machine('t', 'new->paid', 'paid->shipped', 'shipped->paid');
		PERFORM idempotency.idem_guard('t');
	END $$;
	CREATE PROCEDURE alternate(n int) LANGUAGE plpgsql AS $$ DECLARE o text; BEGIN
		FOR i IN 1..n LOOP
			EXECUTE 'SELECT outcome::text FROM idempotency.idem_claim(''alt'')' INTO o;
			EXECUTE 'SELECT outcome::text FROM idempotency.idem_transition(''t'', 1, ''paid'')' INTO o;
			EXECUTE 'SELECT outcome::text FROM idempotency.idem_transition(''t'', 1, ''shipped'')' INTO o;
		END LOOP;
	END $$;
	CALL recreate(); SELECT idempotency.idem_claim('x') \g /dev/null
	SELECT idempotency.idem_transition('t', 1, 'paid') \g /dev/null
	CALL recreate(); SELECT idempotency.idem_claim('x') \g /dev/null
	SELECT idempotency.idem_transition('t', 1, 'paid') \g /dev/null
	CALL recreate();
	CALL alternate(100);
	SELECT sum(used_bytes) AS before FROM pg_backend_memory_contexts WHERE name = 'CacheMemoryContext' \gset
	CALL alternate(1000);
	SELECT sum(used_bytes) - :before FROM pg_backend_memory_contexts WHERE name = 'CacheMemoryContext';
});
cmp_ok($cache_growth, '<', 100_000,
	'3,000 calls after three installs in one session grow its cache by less than 100 kB');

$node->stop;
done_testing();
