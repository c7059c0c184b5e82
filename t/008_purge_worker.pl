# The purge worker: it removes expired claims, tokens and leases by itself
# and nothing live, shows up in pg_stat_activity, comes back after being
# terminated and after a crash, picks up a changed interval and database
# on reload, and waits harmlessly in a database without the extension.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $node = preloaded_node('purge_worker',
	"idempotency.purge_interval = '1s'\nidempotency.purge_batch_size = 100\nrestart_after_crash = on\n");

# $n expired rows in each of claims, tokens and leases, tagged by $tag,
# and one live row in each.
sub add_rows
{
	my ($db, $tag, $n) = @_;
	$node->safe_psql($db, qq{
		INSERT INTO idempotency.claims (scope, key, state, token, expires_at)
		SELECT '$tag', 'k' || g, 'completed', g, now() - interval '1 minute'
		FROM generate_series(1, $n) g;
		INSERT INTO idempotency.claims (scope, key, state, token, expires_at)
		VALUES ('$tag', 'live', 'completed', 0, now() + interval '1 day');
		INSERT INTO idempotency.tokens (scope, digest, created_at, expires_at)
		SELECT '$tag', sha256(('$tag' || g)::bytea), now() - interval '1 hour', now() - interval '1 minute'
		FROM generate_series(0, $n) g;
		INSERT INTO idempotency.tokens (scope, digest, created_at, expires_at)
		VALUES ('$tag', sha256('$tag-live'::bytea), now(), now() + interval '1 day');
		INSERT INTO idempotency.leases (name, holder, token, acquired_at, expires_at)
		SELECT '$tag-' || g, 'w', g, now() - interval '1 hour', now() - interval '1 minute'
		FROM generate_series(1, $n) g;
		INSERT INTO idempotency.leases (name, holder, token, acquired_at, expires_at)
		VALUES ('$tag-live', 'w', 0, now(), now() + interval '1 day');
	});
}

# How many rows tagged $tag are left, expired and live, as "e/l".
my $left_sql = q{
	SELECT (SELECT count(*) FROM idempotency.claims WHERE scope = '%1$s' AND expires_at <= now())
		+ (SELECT count(*) FROM idempotency.tokens WHERE scope = '%1$s' AND expires_at <= now())
		+ (SELECT count(*) FROM idempotency.leases WHERE name LIKE '%1$s-%%' AND expires_at <= now())
		|| '/' ||
		(SELECT count(*) FROM idempotency.claims WHERE scope = '%1$s' AND expires_at > now())
		+ (SELECT count(*) FROM idempotency.tokens WHERE scope = '%1$s' AND expires_at > now())
		+ (SELECT count(*) FROM idempotency.leases WHERE name LIKE '%1$s-%%' AND expires_at > now())};
sub left_rows { my ($db, $tag) = @_; return $node->safe_psql($db, sprintf($left_sql, $tag)); }
sub purged_by_worker
{
	my ($db, $tag) = @_;
	return $node->poll_query_until($db, sprintf($left_sql, $tag), '0/3');
}

my $worker_sql = q{SELECT pid FROM pg_stat_activity
	WHERE backend_type = 'idempotency purge worker' AND application_name = 'idempotency purge worker'};
sub worker_pid { return $node->safe_psql('postgres', $worker_sql); }

# It is there, under its name, connected to idempotency.database.
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($worker_sql) w"),
	'the worker shows up in pg_stat_activity as "idempotency purge worker"');
is($node->safe_psql('postgres', q{SELECT datname FROM pg_stat_activity
	WHERE backend_type = 'idempotency purge worker'}), 'postgres', 'connected to idempotency.database');

# It purges by itself, in batches, and leaves live rows alone.
$node->safe_psql('postgres', 'SELECT idempotency.idem_stats_reset()');
add_rows('postgres', 'first', 1000);
is(left_rows('postgres', 'first'), '3001/3', 'expired rows are there at first');
ok(purged_by_worker('postgres', 'first'), 'the worker purges every expired claim, token and lease');
is(left_rows('postgres', 'first'), '0/3', 'and nothing live');
cmp_ok($node->safe_psql('postgres', 'SELECT purged_rows FROM idempotency.stats'), '>=', 3001,
	'purged rows are counted in idempotency.stats');

# Terminated, it is started again and goes on purging.
my $pid = worker_pid();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($worker_sql) w WHERE pid <> $pid"),
	'a terminated worker is started again');
add_rows('postgres', 'second', 200);
ok(purged_by_worker('postgres', 'second'), 'and purges again');

# Killed outright, the server restarts after the crash, and the worker too.
$pid = worker_pid();
my $crash_offset = -s $node->logfile;
kill 'KILL', $pid;
# Not poll_query_until at once: a psql refused during the restart can exit
# before IPC::Run writes the query, which dies on EPIPE.
$node->wait_for_log(qr/database system is ready to accept connections/, $crash_offset);
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($worker_sql) w WHERE pid <> $pid"),
	'after a crash, the worker is back');
add_rows('postgres', 'third', 200);
ok(purged_by_worker('postgres', 'third'), 'and purges again');

# A longer interval, on reload: nothing is purged for a while.  A shorter
# one, on reload: purged at once.
my $offset = -s $node->logfile;
$node->safe_psql('postgres', q{ALTER SYSTEM SET idempotency.purge_interval = '1h'; SELECT pg_reload_conf()});
ok($node->wait_for_log(qr/purge worker now purges every 3600 s in batches of 100 rows/, $offset),
	'the worker logs its new interval on reload');
add_rows('postgres', 'fourth', 50);
sleep 4;
is(left_rows('postgres', 'fourth'), '151/3', 'with purge_interval = 1h after a reload, rows wait');
$node->safe_psql('postgres', q{ALTER SYSTEM SET idempotency.purge_interval = '1s'; SELECT pg_reload_conf()});
ok(purged_by_worker('postgres', 'fourth'), 'back to 1s after a reload, they are purged');

# Another database, without the extension: the worker moves there on
# reload and waits, harmlessly, until the extension is created.
$node->safe_psql('postgres', 'CREATE DATABASE plain');
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{ALTER SYSTEM SET idempotency.database = 'plain'; SELECT pg_reload_conf()});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'idempotency purge worker' AND datname = 'plain'}),
	'a changed idempotency.database moves the worker there');
ok($node->wait_for_log(qr/extension "idempotency" is not installed in database "plain"/, $log_offset),
	'where it says that the extension is missing');
$node->safe_psql('plain', 'CREATE EXTENSION idempotency');
add_rows('plain', 'fifth', 100);
ok(purged_by_worker('plain', 'fifth'), 'and purges once it is created');

$node->stop;
unlike(slurp_file($node->logfile), qr/TRAP|(?:server process|background worker) .* was terminated by signal (?!9\b)/,
	'no assertion failure and no crash but the one caused');
done_testing();
