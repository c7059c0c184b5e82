# Sharded claims through PL/Proxy: a router database with
# idempotency_router, two shards with the extension (node ids 1 and 2).
# Every call reaches the shard its key hashes to; errors keep their
# SQLSTATE; a business function routed by the same key is exactly once
# under 8 concurrent clients sending every key several times; tokens,
# leases and IDs work across shards, and the router's check finds shards
# that share a node id.  Skipped where PL/Proxy is not installed (the
# Debian package postgresql-15-plproxy; PostgreSQL 17 and 18 built from
# source here have none).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $router = PostgreSQL::Test::Cluster->new('router');
$router->init;
$router->start;
if ($router->safe_psql('postgres',
		"SELECT count(*) FROM pg_available_extensions WHERE name = 'plproxy'") eq '0')
{
	plan skip_all => 'PL/Proxy is not installed for this PostgreSQL';
}

my @shards = map { preloaded_node("shard$_", 'idempotency.node_id = ' . ($_ + 1)) } 0 .. 1;
my $user = $router->safe_psql('postgres', 'SELECT current_user');

# Every shard: orders, and a business function that claims, orders and
# completes in one transaction.
for my $s (@shards)
{
	$s->safe_psql('postgres', $SHARD_ORDERS);
}

# The router: the extension, the cluster (a foreign server named
# idempotency, one option per shard) and a user mapping.
my $parts = join(', ', map {
	sprintf("p%d 'host=%s port=%d dbname=postgres'", $_, $shards[$_]->host, $shards[$_]->port)
} 0 .. $#shards);
$router->safe_psql('postgres', qq{
	CREATE EXTENSION idempotency_router CASCADE;
	CREATE SERVER idempotency FOREIGN DATA WRAPPER plproxy OPTIONS ($parts);
	CREATE USER MAPPING FOR PUBLIC SERVER idempotency OPTIONS (user '$user');
	$ROUTER_ORDERS
});

# The hash is fixed: these values must never change, or keys would move.
is($router->safe_psql('postgres', q{
	SELECT string_agg(idempotency.idem_shard(s, k)::text, ' ' ORDER BY s, k)
	FROM (VALUES ('default', 'a'), ('default', 'order-1'), ('orders', 'a'), ('', '')) v(s, k)}),
	'1848904604 -1073478850 707599714 -2068914982',
	'idem_shard gives the same hashes as ever (the first four bytes of SHA-256, as Python computes them)');

# The shard each key of a scope hashes to, asked of the router in one query.
sub shard_map
{
	my ($scope, @keys) = @_;
	my $list = join(', ', map { "'$_'" } @keys);
	return map { split /\|/ } split /\n/, $router->safe_psql('postgres', qq{
		SELECT k, idempotency.idem_shard('$scope', k) & } . (scalar(@shards) - 1) . qq{
		FROM unnest(ARRAY[$list]::text[]) k});
}

sub shard_of
{
	my %map = shard_map(@_);
	return $map{ $_[1] };
}

sub holders
{
	my ($sql) = @_;
	return join(',', grep { $shards[$_]->safe_psql('postgres', $sql) ne '0' } 0 .. $#shards);
}

# A claim and its completion through the router, then its replay.
my $token = $router->safe_psql('postgres',
	q{SELECT token FROM idempotency.idem_claim('k-1', '1 hour', scope => 'default')});
like($token, qr/^\d+$/, 'a claim through the router is claimed, with a token');
is($router->safe_psql('postgres',
	qq{SELECT idempotency.idem_complete('k-1', $token, '{"ok": true}', 201)}), 't',
	'and completed through the router');
is($router->safe_psql('postgres',
	q{SELECT outcome || ' ' || response::text || ' ' || status FROM idempotency.idem_claim('k-1')}),
	'completed {"ok": true} 201', 'a replay through the router gives the stored response');
is(holders(q{SELECT count(*) FROM idempotency.claims WHERE key = 'k-1'}),
	shard_of('default', 'k-1'), 'the claim is on the shard its key hashes to, and only there');

# Many keys: spread over both shards, each where it hashes to.
$router->safe_psql('postgres',
	q{SELECT idempotency.idem_claim('spread-' || g, '1 hour') FROM generate_series(1, 200) g});
my %placed;
for my $i (0 .. $#shards)
{
	$placed{$_} = $i for split /\n/, $shards[$i]->safe_psql('postgres',
		q{SELECT key FROM idempotency.claims WHERE key LIKE 'spread-%'});
}
is(scalar(keys %placed), 200, '200 keys claimed through the router, each once');
my %home = shard_map('default', keys %placed);
is(scalar(grep { $placed{$_} != $home{$_} } keys %placed), 0,
	'every key is on the shard it hashes to');
ok((grep { $_ == 0 } values %placed) && (grep { $_ == 1 } values %placed),
	'and both shards hold some');

# A shard's error reaches the caller with its SQLSTATE.
my ($ret, $out, $err) = $router->psql('postgres',
	q{\set VERBOSITY verbose
	SELECT idempotency.idem_claim('', '1 hour')});
like($err, qr/22023/, "a shard's error keeps its SQLSTATE through the router");

# Leases, on the shard of their name.
my $lease = $router->safe_psql('postgres',
	q{SELECT idempotency.idem_lease_acquire('nightly', 'worker-a', '1 minute')});
like($lease, qr/^\d+$/, 'a lease through the router');
is($router->safe_psql('postgres',
	q{SELECT idempotency.idem_lease_acquire('nightly', 'worker-b', '1 minute') IS NULL}),
	't', 'is not given to a second holder');
is(holders(q{SELECT count(*) FROM idempotency.leases WHERE name = 'nightly'}),
	shard_of('default', 'nightly'), 'and is held on the shard of its name');
is($router->safe_psql('postgres',
	qq{SELECT idempotency.idem_lease_release('nightly', $lease)}), 't', 'and released through it');

# One-time tokens: issued on any shard, consumed once wherever they are.
my @tokens = split /\n/, $router->safe_psql('postgres',
	q{SELECT idempotency.idem_token_issue('default', '1 hour') FROM generate_series(1, 20)});
my @held = map { $_->safe_psql('postgres', 'SELECT count(*) FROM idempotency.tokens') } @shards;
is($held[0] + $held[1], 20, "20 tokens issued through the router, on the shards ($held[0] and $held[1])");
is($router->safe_psql('postgres', join(' UNION ALL ', map {
	"SELECT idempotency.idem_token_consume('$_')" } @tokens)),
	join("\n", ('t') x 20), 'each is consumed through the router');
is($router->safe_psql('postgres', "SELECT idempotency.idem_token_consume('$tokens[0]')"), 'f',
	'once');
is(holders('SELECT count(*) FROM idempotency.tokens'), '', 'and none is left on any shard');

# The business function, routed by its key: 8 clients, 600 keys, every
# key sent several times, concurrently.
my $script = $router->basedir . '/orders.sql';
PostgreSQL::Test::Utils::append_to_file($script,
	"\\set k random(1, 600)\nSELECT * FROM place_order('o-' || :k, 1);\n");
$router->command_ok(
	[ 'pgbench', '-n', '-c', '8', '-j', '8', '-t', '300', '-f', $script,
	  '-h', $router->host, '-p', $router->port, 'postgres' ],
	'8 clients place 2,400 orders for 600 keys through the router');
my (%orders, %on);
for my $i (0 .. $#shards)
{
	for (split /\n/, $shards[$i]->safe_psql('postgres', 'SELECT key, count(*) FROM orders GROUP BY key'))
	{
		my ($k, $n) = split /\|/;
		$orders{$k} += $n;
		$on{$k} = $i;
	}
}
my %order_home = shard_map('orders', keys %orders);
my $misplaced = grep { $on{$_} != $order_home{$_} } keys %on;
ok(scalar(keys %orders) > 500, 'most of the 600 keys were ordered (' . scalar(keys %orders) . ')');
is(scalar(grep { $orders{$_} != 1 } keys %orders), 0, 'every key was ordered exactly once');
is($misplaced, 0, "every order is on its key's shard");
is($router->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT 'o-' || g AS k FROM generate_series(1, 600) g) v,
		LATERAL place_order(v.k, 1) p
	WHERE p.outcome = 'completed' AND p.response IS NOT NULL}), scalar(keys %orders),
	'every ordered key replays its response through the router');

# IDs: unique across the cluster, and the check that makes them so.
is($router->safe_psql('postgres',
	'SELECT count(*) FROM idempotency.idem_cluster_check() WHERE problem IS NOT NULL'), '0',
	'idem_cluster_check finds nothing wrong with node ids 1 and 2');
my %ids;
$ids{$_}++ for split /\n/, $router->safe_psql('postgres',
	'SELECT idempotency.snowflake_id() FROM generate_series(1, 2000)');
for my $s (@shards)
{
	$ids{$_}++ for split /\n/, $s->safe_psql('postgres',
		'SELECT idempotency.snowflake_id()::bigint FROM generate_series(1, 20000) UNION ALL SELECT id FROM orders');
}
is(scalar(grep { $ids{$_} > 1 } keys %ids), 0,
	'IDs from the router, both shards and every order are all distinct (' . scalar(keys %ids) . ')');

$shards[1]->append_conf('postgresql.conf', 'idempotency.node_id = 1');
$shards[1]->restart;
is($router->safe_psql('postgres',
	q{SELECT string_agg(node_id || ': ' || problem, E'\n') FROM idempotency.idem_cluster_check()}),
	"1: node id 1 is also another shard's\n1: node id 1 is also another shard's",
	'two shards with one node id are both named');
$shards[1]->append_conf('postgresql.conf', 'idempotency.node_id = 2');
$shards[1]->restart;

# Rights: the router's functions are idempotency_user's, as on the shards.
$router->safe_psql('postgres', 'CREATE ROLE nobody LOGIN');
($ret, $out, $err) = $router->psql('postgres',
	q{SET ROLE nobody; SELECT idempotency.idem_claim('k-2', '1 hour')});
like($err, qr/permission denied for function idem_claim/, 'a role without idempotency_user may not claim');

# Install safety: the router's database must be UTF8, and the schema
# plproxy (whose functions PL/Proxy would call for a cluster without a
# foreign server) is taken by the install, or refused if another role
# could write it.
$router->safe_psql('postgres', q{
	CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
	CREATE DATABASE planted;
	CREATE ROLE alice LOGIN;
});
($ret, $out, $err) = $router->psql('latin', 'CREATE EXTENSION idempotency_router CASCADE');
like($err, qr/the router database must be UTF8, not LATIN1/, 'a router database of another encoding is refused');
$router->safe_psql('planted', 'CREATE SCHEMA plproxy AUTHORIZATION alice');
($ret, $out, $err) = $router->psql('planted', 'CREATE EXTENSION idempotency_router CASCADE');
like($err, qr/schema "plproxy" exists/, 'a schema plproxy of another role is refused');
# (one a superuser took over is refused as well: what it holds may be anyone's)
$router->safe_psql('planted', "ALTER SCHEMA plproxy OWNER TO $user");
($ret, $out, $err) = $router->psql('planted', 'CREATE EXTENSION idempotency_router CASCADE');
like($err, qr/schema "plproxy" exists/, 'so is one a superuser owns');
# Default privileges of the installing role give no one anything: CREATE
# on new schemas would open the schema idempotency (refused), USAGE and
# EXECUTE are taken back.
$router->safe_psql('postgres', 'CREATE DATABASE defaults1; CREATE DATABASE defaults2');
($ret, $out, $err) = $router->psql('defaults1', q{
	ALTER DEFAULT PRIVILEGES GRANT CREATE ON SCHEMAS TO alice;
	CREATE EXTENSION idempotency_router CASCADE;});
like($err, qr/schema "idempotency" is not one the router may be installed into/,
	'default privileges that let another role create in new schemas are refused');
$router->safe_psql('defaults2', q{
	ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO alice;
	ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO alice;
	CREATE EXTENSION idempotency_router CASCADE;
});
is($router->safe_psql('defaults2', q{
	SELECT has_schema_privilege('alice', 'plproxy', 'USAGE')
		OR has_function_privilege('alice', 'idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval)', 'EXECUTE')}),
	'f', 'default privileges give no role the schema plproxy or the functions');
is($router->safe_psql('postgres', q{
	SELECT pg_get_userbyid(nspowner) = current_user FROM pg_namespace WHERE nspname = 'plproxy'}),
	't', 'and the install took the schema plproxy where there was none');

done_testing();
