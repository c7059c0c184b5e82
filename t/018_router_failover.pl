# A shard fails over under a claim storm sent through the router.  Two
# shards, each a pg_auto_failover formation (one monitor for both) behind
# a router with idempotency_router whose partitions name every server of
# a shard with target_session_attrs=read-write.  Shard 0, the one that
# fails over, has a primary and two standbys with number-sync-standbys 1:
# with a single standby, pg_auto_failover turns synchronous replication
# off when it judges the standby unhealthy (wait_primary), and a failover
# after that loses what the primary answered meanwhile (seen here under
# load: 168 answered claims gone).  Shard 1 has one standby.  8 clients send every key of theirs
# three times, in a shuffled order, through the router's place_order; in
# the middle, `pg_autoctl perform failover` of shard 0.  Calls that fail
# during it are sent again afterwards, until answered, as clients retry.
# Then: every key ordered exactly once; every key answered before the
# failover replays the same response after it; no ID repeated.
#
# IDEM_ROUTER_KEYS keys per client (250 in CI; the issue's full size,
# 2,000, with IDEM_ROUTER_KEYS=2000).  Skipped without PL/Proxy or
# pg_auto_failover for this PostgreSQL (the Debian packages
# postgresql-15-plproxy and postgresql-15-auto-failover).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use List::Util qw(shuffle);
use Time::HiRes qw(time sleep);
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $KEYS = $ENV{IDEM_ROUTER_KEYS} // 250;
my $CLIENTS = 8;

my $router = PostgreSQL::Test::Cluster->new('router');
$router->init;
$router->start;
my %have = map { split /\|/ } split /\n/, $router->safe_psql('postgres', q{
	SELECT name, 1 FROM pg_available_extensions WHERE name IN ('plproxy', 'pgautofailover')});
plan skip_all => 'PL/Proxy or pg_auto_failover is not installed for this PostgreSQL'
  unless $have{plproxy} && $have{pgautofailover} && `pg_autoctl --version 2>/dev/null` ne '';

# pg_auto_failover's processes, in a directory of the test's, with its
# configuration there too (XDG_*), on free local ports.
my $dir = PostgreSQL::Test::Utils::tempdir;
my $sock = PostgreSQL::Test::Utils::tempdir_short;
$ENV{XDG_CONFIG_HOME} = "$dir/config";
$ENV{XDG_DATA_HOME} = "$dir/data";
$ENV{XDG_RUNTIME_DIR} = "$dir/run";
mkdir "$dir/run";
my $bindir = $router->config_data('--bindir');
$ENV{PG_CONFIG} = "$bindir/pg_config";
my @keepers;

END
{
	# The keepers and their servers go with the test, whatever happened.
	local $ENV{PGHOST} = $sock;
	for my $pgdata (reverse map { $_->{pgdata} } @keepers)
	{
		system('pg_autoctl', 'stop', '--pgdata', $pgdata, '--fast');
	}
	$_->{run}->kill_kill for @keepers;
	# (a server its keeper left behind)
	system("$bindir/pg_ctl", '-D', $_->{pgdata}, '-m', 'immediate', 'stop')
	  for grep { -f "$_->{pgdata}/postmaster.pid" } @keepers;
}

sub autoctl
{
	my @args = @_;
	my ($out, $err);
	local $ENV{PGHOST} = $sock;
	IPC::Run::run([ 'pg_autoctl', @args ], '>', \$out, '2>', \$err)
	  or die "pg_autoctl @args failed: $err";
	return $out;
}

sub psql_at
{
	my ($port, $sql) = @_;
	my ($out, $err);
	IPC::Run::run([ "$bindir/psql", '-XAtq', '-v', 'ON_ERROR_STOP=1', '-h', $sock, '-p', $port,
		'-d', $port == $keepers[0]{port} ? 'pg_auto_failover' : 'postgres', '-c', $sql ],
		'>', \$out, '2>', \$err)
	  or die "psql on $port failed: $err";
	chomp $out;
	return $out;
}

# A data directory made by us (so that it listens on our socket and
# preloads the extension), then handed to pg_autoctl; a standby's is its
# primary's, by pg_basebackup.
sub keeper
{
	my ($name, $create, $conf) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $pgdata = "$dir/$name";
	if (defined $conf)
	{
		PostgreSQL::Test::Utils::system_or_bail("$bindir/initdb", '-D', $pgdata, '-A', 'trust', '-N');
		PostgreSQL::Test::Utils::append_to_file("$pgdata/postgresql.conf",
			"unix_socket_directories = '$sock'\n$conf");
	}
	autoctl(@$create, '--pgdata', $pgdata, '--pgport', $port, '--hostname', 'localhost',
		'--listen', '127.0.0.1', '--auth', 'trust', '--no-ssl');
	local $ENV{PGHOST} = $sock;
	my $run = IPC::Run::start([ 'pg_autoctl', 'run', '--pgdata', $pgdata ],
		'>', "$dir/$name.log", '2>&1');
	push @keepers, { name => $name, pgdata => $pgdata, port => $port, run => $run };
	return $keepers[-1];
}

my $monitor = keeper('monitor', [ 'create', 'monitor' ], '');
sleep 0.5 until eval { psql_at($monitor->{port}, 'SELECT 1') };
my $monitor_uri = "postgres://autoctl_node\@localhost:$monitor->{port}/pg_auto_failover?sslmode=disable";
my @shards;
for my $i (0 .. 1)
{
	autoctl('create', 'formation', '--pgdata', $monitor->{pgdata}, '--formation', "shard$i",
		'--kind', 'pgsql', '--dbname', 'postgres');
	my @pair;
	for my $role ($i == 0 ? ('a', 'b', 'c') : ('a', 'b'))
	{
		push @pair, keeper("shard$i$role",
			[ 'create', 'postgres', '--monitor', $monitor_uri, '--formation', "shard$i", '--name', "shard$i$role" ],
			$role eq 'a' ? "shared_preload_libraries = 'idempotency'\nidempotency.node_id = " . ($i + 1) . "\n" : undef);
		# The standby is made from a running primary.
		sleep 0.5 until eval { psql_at($pair[0]{port}, 'SELECT 1') };
	}
	push @shards, \@pair;
}

sub all_settled
{
	return psql_at($monitor->{port}, q{
		SELECT count(*) FROM pgautofailover.node
		WHERE reportedstate = goalstate AND reportedstate IN ('primary', 'secondary')}) == 5;
}
my $until = time + 180;
sleep 0.5 until all_settled() || time > $until;
ok(all_settled(), 'two formations, of a primary and two secondaries and of a primary and one, settled');
# (through the monitor's function: pg_autoctl 2.0's command refuses any value)
psql_at($monitor->{port}, q{SELECT pgautofailover.set_formation_number_sync_standbys('shard0', 1)});
$until = time + 60;
sleep 0.5 until psql_at($shards[0][0]{port}, 'SHOW synchronous_standby_names') =~ /^ANY 1 \(.*,.*\)$/ || time > $until;

for my $pair (@shards)
{
	psql_at($pair->[0]{port}, 'CREATE EXTENSION idempotency');
	psql_at($pair->[0]{port}, $SHARD_ORDERS);
}
like(psql_at($shards[0][0]{port}, 'SHOW synchronous_standby_names'), qr/^ANY 1 \(.*,.*\)$/,
	"shard 0's primary replicates synchronously to one of its two standbys, at least");

my $user = $router->safe_psql('postgres', 'SELECT current_user');
my $parts = join(', ', map {
	my @servers = @{ $shards[$_] };
	sprintf("p%d 'host=%s port=%s dbname=postgres target_session_attrs=read-write'", $_,
		join(',', ($sock) x @servers), join(',', map { $_->{port} } @servers))
} 0 .. 1);
$router->safe_psql('postgres', qq{
	CREATE EXTENSION idempotency_router CASCADE;
	CREATE SERVER idempotency FOREIGN DATA WRAPPER plproxy OPTIONS ($parts);
	CREATE USER MAPPING FOR PUBLIC SERVER idempotency OPTIONS (user '$user');
	$ROUTER_ORDERS
});
is($router->safe_psql('postgres',
	'SELECT count(*) FROM idempotency.idem_cluster_check() WHERE problem IS NULL'), '2',
	'the router sees two shards with node ids of their own');

# The storm: each client's keys, three times each, shuffled; one psql
# session per client that goes on after an error, printing each answer
# with the time it came.
my @clients;
for my $c (1 .. $CLIENTS)
{
	my @keys = map { "c$c-k$_" } 1 .. $KEYS;
	my $sql = "\\pset format unaligned\n\\pset tuples_only on\n";
	$sql .= "SELECT k, p.outcome, p.response, extract(epoch FROM clock_timestamp()) FROM (SELECT '$_'::text AS k) v, place_order(v.k, 1) p;\n"
	  for shuffle((@keys) x 3);
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start([ "$bindir/psql", '-X', '-h', $router->host, '-p', $router->port, '-d', 'postgres' ],
		'<', \$sql, '>', \$out, '2>', \$err);
	push @clients, { h => $h, out => \$out, err => \$err, keys => \@keys };
}

# Fail shard 0 over once a third of the calls have been answered.
my $total = $CLIENTS * $KEYS * 3;
sleep 0.1 until (grep { $_->{h}->pump_nb; 1 } @clients)
  && (List::Util::sum(map { scalar(() = ${ $_->{out} } =~ /\n/g) } @clients) >= $total / 3);
my $failover_at = time;
autoctl('perform', 'failover', '--pgdata', $monitor->{pgdata}, '--formation', 'shard0');
my $failover_done = time;
$_->{h}->finish for @clients;
note(sprintf('failover of shard 0 took %.1f s', $failover_done - $failover_at));
my $errors = List::Util::sum(map { scalar(() = ${ $_->{err} } =~ /ERROR/g) } @clients);
note("$errors calls failed during the failover and are sent again");
like(psql_at($monitor->{port}, q{
	SELECT nodename FROM pgautofailover.node WHERE formationid = 'shard0' AND reportedstate = 'primary'}),
	qr/^shard0[bc]$/, "one of shard 0's standbys is its primary now");

# Every answer of the storm, by key; those before the failover apart.
my (%before, %answered);
for my $cl (@clients)
{
	for (split /\n/, ${ $cl->{out} })
	{
		my ($k, $outcome, $response, $at) = split /\|/;
		next unless defined $at;
		$answered{$k} = $response;
		$before{$k} //= $response if $at < $failover_at && $outcome =~ /^(claimed|completed)$/;
	}
}

# Every key again, through the router, until it answers (in one
# statement, tried again while the failover's last errors pass).
my %final;
my $all = join(',', map { "'$_'" } map { @{ $_->{keys} } } @clients);
for my $try (1 .. 50)
{
	my ($ret, $out) = $router->psql('postgres', qq{
		SELECT k || '|' || p.outcome || ' ' || p.response::text
		FROM unnest(ARRAY[$all]) k, LATERAL place_order(k, 1) p});
	if ($ret == 0)
	{
		%final = map { split /\|/, $_, 2 } split /\n/, $out;
		last;
	}
	sleep 0.5;
}
is(scalar(keys %final), $CLIENTS * $KEYS, 'every key is answered through the router after the failover');
is(scalar(grep { $final{$_} !~ /^(completed|claimed) / } keys %final), 0, 'each with its order');
is(scalar(grep { $final{$_} !~ /^completed / } keys %answered), 0,
	'every key answered during the storm replays a completed order');
is(scalar(grep { $final{$_} ne "completed $before{$_}" } keys %before), 0,
	scalar(keys %before) . ' keys answered before the failover replay the same response after it');

# Effects: one order per key, over the shards' current primaries.
my (%orders, %ids);
for my $pair (@shards)
{
	my ($primary) = grep { psql_at($_->{port}, 'SELECT pg_is_in_recovery()') eq 'f' } @$pair;
	for (split /\n/, psql_at($primary->{port}, 'SELECT key, id FROM orders'))
	{
		my ($k, $id) = split /\|/;
		$orders{$k}++;
		$ids{$id}++;
	}
}
is(scalar(keys %orders), $CLIENTS * $KEYS, 'every key was ordered');
is(scalar(grep { $orders{$_} != 1 } keys %orders), 0, 'exactly once');
is(scalar(grep { $ids{$_} > 1 } keys %ids), 0, 'and no order ID was issued twice');

done_testing();
