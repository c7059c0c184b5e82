# With a synchronous standby, an answer read from committed state (a
# replayed response, a mismatch, a lease check) is given only once the
# standby has confirmed that state.  The hole it closes: a completion whose
# synchronous-replication wait is cancelled is visible on the primary before
# the standby has it; answering a second caller from it, and then failing
# over, would leave one key with two different answers.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $primary = preloaded_node('sync_primary', '', allows_streaming => 1);
$primary->safe_psql('postgres', q{
	CREATE ROLE app LOGIN IN ROLE idempotency_user;
	GRANT USAGE ON SCHEMA idempotency TO app;
});
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('sync_standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
# Only the primary waits for a synchronous standby (the standby's copy of
# the configuration predates this).
$primary->safe_psql('postgres',
	"ALTER SYSTEM SET synchronous_standby_names = '*'; SELECT pg_reload_conf()");
$primary->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_replication WHERE sync_state = 'sync'")
  or die 'the standby did not become synchronous';

# Run SQL as the application role; returns (exit code, stdout, stderr).
sub app
{
	my ($node, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres',
		"SET ROLE app; SET search_path = idempotency;\n"
		  . "\\set VERBOSITY verbose\n$sql");
	return ($ret, $out, $err);
}

sub app_ok
{
	my ($node, $sql) = @_;
	my ($ret, $out, $err) = app($node, $sql);
	die "failed: $sql\n$err" if $ret != 0;
	return $out;
}

# With the standby confirming, replays answer at once.
my $token = app_ok($primary, q{SELECT token FROM idem_claim('k0', ttl => '1 hour', lease => '2 s')});
app_ok($primary, qq{SELECT idem_complete('k0', $token, '{"answer": 0}', 200)});
is(app_ok($primary, q{SET statement_timeout = '5s';
	SELECT outcome || ' ' || response::text FROM idem_claim('k0', ttl => '1 hour')}),
	'completed {"answer": 0}', 'with the standby up, a replay answers');
# Right after a WAL segment switch the insert position is past a page
# header no one has written yet; the wait must not aim there.
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
is(app_ok($primary, q{SET statement_timeout = '5s';
	SELECT outcome FROM idem_claim('k0', ttl => '1 hour')}),
	'completed', 'and so it does right after a WAL segment switch');

# Claims made while the standby is up: k1 (completed below) and the lease.
$token = app_ok($primary, q{SELECT token FROM idem_claim('k1', ttl => '1 hour', lease => '2 s')});
my $fingerprint = q{idem_fingerprint('{"amount": 5}'::jsonb)};
app_ok($primary, qq{SELECT idem_claim('k2', ttl => '1 hour', fingerprint => $fingerprint)});
$primary->wait_for_catchup($standby);

# The standby stops: commits now wait for it.  Run a write in the
# background, wait until its commit waits for the standby, cancel that wait
# (the write then stays committed here, and only here), and return.
$standby->stop;
sub commit_cancelled
{
	my ($sql) = @_;
	my $bg = $primary->background_psql('postgres', on_error_stop => 0);
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	$bg->query_until(qr/sent/, "SET ROLE app; SET search_path = idempotency;\n\\echo sent\n$sql;\n");
	$primary->poll_query_until('postgres',
		"SELECT wait_event = 'SyncRep' FROM pg_stat_activity WHERE pid = $pid")
	  or die 'the commit did not wait for the standby';
	$primary->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
	$primary->poll_query_until('postgres',
		"SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $pid")
	  or die 'the cancelled commit did not return';
	$bg->quit;
}
commit_cancelled(qq{SELECT idem_complete('k1', $token, '{"answer": 1}', 200)});
commit_cancelled(q{SELECT idem_lease_acquire('nightly', 'worker-1', '1 hour')});
is($primary->safe_psql('postgres',
		q{SELECT state || ' ' || response::text FROM idempotency.claims WHERE key = 'k1'}),
	'completed {"answer": 1}', 'the cancelled completion is visible on the primary');

# A replay of it waits, and pg_stat_activity names the wait: a wait event
# of the extension's own from PostgreSQL 17 on, "Extension" before.
my $event = $primary->safe_psql('postgres', 'SHOW server_version_num') >= 170000
  ? 'IdempotencySyncStandby' : 'Extension';
my $waiter = $primary->background_psql('postgres', on_error_stop => 0);
my $waiter_pid = $waiter->query_safe('SELECT pg_backend_pid()');
$waiter->query_until(qr/sent/, "SET ROLE app; SET search_path = idempotency;\n\\echo sent\n"
	  . "SELECT outcome FROM idem_claim('k1', ttl => '1 hour');\n");
ok($primary->poll_query_until('postgres',
		"SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity WHERE pid = $waiter_pid",
		"Extension:$event"),
	"a replay waiting for the standby shows wait event $event");
$primary->safe_psql('postgres', "SELECT pg_cancel_backend($waiter_pid)");
$waiter->quit;

# A second caller is not answered from it: the replay waits for the
# standby, and statement_timeout ends the wait with an error that says why.
my ($ret, $out, $err) = app($primary, q{SET statement_timeout = '1s';
	SELECT outcome, response FROM idem_claim('k1', ttl => '1 hour')});
isnt($ret, 0, 'a replay of an unconfirmed completion is refused');
like($err, qr/ERROR:  57014: canceling statement due to statement timeout\nDETAIL:  The answer rests on a commit that the synchronous standbys have not confirmed; a failover could still take it back\.\nHINT:  Check the synchronous standbys \(pg_stat_replication\), then call again\.\nCONTEXT:  waiting for the synchronous standbys to confirm the stored response/,
	'with SQLSTATE 57014, a detail, a hint and a context');
unlike($out, qr/answer/, 'and without the response');
($ret, $out, $err) = app($primary, q{SET lock_timeout = '300ms';
	SELECT outcome, response FROM idem_claim('k1', ttl => '1 hour')});
like($err, qr/ERROR:  55P03: synchronous standbys did not confirm the stored response within lock_timeout\nDETAIL:  .*failover.*\nHINT:  Check the synchronous standbys/,
	'lock_timeout bounds the wait too (55P03)');
($ret, $out, $err) = app($primary, q{SET lock_timeout = '300ms';
	SELECT outcome FROM idem_claim('k2', ttl => '1 hour', fingerprint => idem_fingerprint('{"amount": 6}'::jsonb))});
like($err, qr/55P03: synchronous standbys did not confirm the key's fingerprint/,
	'a mismatch waits for the standbys too');
my $lease_token = $primary->safe_psql('postgres',
	q{SELECT token FROM idempotency.leases WHERE name = 'nightly'});
($ret, $out, $err) = app($primary, qq{SET statement_timeout = '1s';
	SELECT idem_lease_check('nightly', $lease_token)});
like($err, qr/57014: canceling statement due to statement timeout\n.*\n.*\nCONTEXT:  waiting for the synchronous standbys to confirm the lease/,
	'a lease check of an unconfirmed acquire waits for the standbys');
($ret, $out, $err) = app($primary, q{SET synchronous_commit = local;
	SELECT outcome FROM idem_claim('k1', ttl => '1 hour')});
is($out, 'completed',
	'a session whose own commits do not wait for the standby does not wait for replays either');

# Fail over: the old primary goes, the standby takes over without the
# completion.  The retried request runs once there; both callers end with
# its answer.
$primary->stop('immediate');
$standby->start;
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'the standby was not promoted';
is($standby->safe_psql('postgres',
		q{SELECT state FROM idempotency.claims WHERE key = 'k1'}),
	'in_progress', 'the promoted standby never had the cancelled completion');
# The first caller's lease (2 s) runs out; the second caller's retry takes
# the claim over and completes it.
my $retry;
$standby->poll_query_until('postgres',
	q{SELECT outcome = 'reclaimed' FROM idempotency.idem_claim('k1', ttl => '1 hour', lease => '1 hour')})
  or die 'the retry did not take the claim over';
$retry = $standby->safe_psql('postgres',
	q{SELECT token FROM idempotency.claims WHERE key = 'k1'});
$standby->safe_psql('postgres',
	qq{SELECT idempotency.idem_complete('k1', $retry, '{"answer": 2}', 200)});
is( app_ok($standby, q{SELECT outcome || ' ' || response::text FROM idem_claim('k1', ttl => '1 hour')}),
	'completed {"answer": 2}',
	'the first caller, retrying, gets the answer of the one run that stands');
is($standby->safe_psql('postgres',
		q{SELECT count(*) FROM idempotency.claims WHERE key = 'k1' AND response = '{"answer": 2}'}),
	'1', 'one key, one answer');
$standby->stop;

done_testing();
