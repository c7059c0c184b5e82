# Crash restarts in quick succession do not carry snowflake IDs ever further
# ahead of the clock.  Each crash restart starts IDs above the last
# reservation, which is at most 4 s plus max_lead (1 s) ahead of the clock
# it was made with; a reservation is measured from the clock, never from
# IDs that are already ahead, so the lead stays within 5 s after any number
# of crashes, and the log says why IDs are ahead: a crash restart, not a
# clock that moved.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;
use Time::HiRes qw(usleep);

my $node = preloaded_node('crash_loop', qq{
idempotency.max_lead = 1000
restart_after_crash = on
});
$node->safe_psql('postgres', 'CREATE TABLE ids (round int, id idempotency.snowflake)');

# The lead of a fresh ID over the clock, in milliseconds.
sub lead_ms
{
	return $node->safe_psql('postgres', q{
		SELECT round(extract(epoch FROM
			idempotency.snowflake_timestamp(idempotency.snowflake_id()) - clock_timestamp()) * 1000)});
}

my @leads;
for my $round (1 .. 5)
{
	# IDs generated right up to the crash, so that reservations are fresh.
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	$bg->query_safe(qq{INSERT INTO ids SELECT $round, idempotency.snowflake_id() FROM generate_series(1, 200000)});
	$bg->query_until(qr/looping/, q{\echo looping
		SELECT count(idempotency.snowflake_id()) FROM generate_series(1, 1000000) a, generate_series(1, 100) b;
});
	usleep(300_000);
	my $log_offset = -s $node->logfile;
	kill 'KILL', $pid;
	$bg->quit;
	# Not poll_query_until: a psql refused during the restart can exit
	# before IPC::Run writes the query, which dies on EPIPE.
	$node->wait_for_log(qr/database system is ready to accept connections/, $log_offset);
	push @leads, lead_ms();
	$node->safe_psql('postgres',
		qq{INSERT INTO ids SELECT -$round, idempotency.snowflake_id() FROM generate_series(1, 1000)});
	sleep 1;
}
ok((grep { $_ > 5000 } @leads) == 0,
	'after each of five crash restarts a second apart, IDs are at most 5 s ahead of the clock ('
	  . join(', ', map { "$_ ms" } @leads) . ')');
is($node->safe_psql('postgres', q{
		SELECT bool_and(ok) FROM (
			SELECT id::bigint > lag(id::bigint) OVER (ORDER BY abs(round), round DESC, id::bigint) IS NOT FALSE AS ok
			FROM ids) s}),
	't', 'IDs stay unique and increasing across the crashes');
my $restarts = () = PostgreSQL::Test::Utils::slurp_file($node->logfile)
  =~ /LOG:  snowflake IDs continue above the reservation of the run before a crash restart/g;
ok($restarts >= 1, "the log says a crash restart put IDs ahead ($restarts times)");
ok(!$node->log_contains('system clock is'), 'and never that the clock moved');
ok($node->poll_query_until('postgres', q{
		SELECT idempotency.snowflake_timestamp(idempotency.snowflake_id()) <= clock_timestamp()}),
	'IDs converge back to the clock');

# A large max_lead is a burst allowance, not a reservation: IDs that are not
# running ahead reserve 4 s, and a crash leaves them no further ahead.
sub set_max_lead
{
	my ($value, $shown) = @_;
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET idempotency.max_lead = '$value'; SELECT pg_reload_conf()");
	$node->poll_query_until('postgres', 'SHOW idempotency.max_lead', $shown)
	  or die "max_lead did not become $shown";
}
set_max_lead('1h', '1h');
sleep 4;
$node->safe_psql('postgres', 'SELECT idempotency.snowflake_id()');
my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
my $log_offset = -s $node->logfile;
kill 'KILL', $pid;
$bg->quit;
$node->wait_for_log(qr/database system is ready to accept connections/, $log_offset);
my $lead = lead_ms();
ok($lead <= 4000, "with max_lead = 1h, a crash restart leaves IDs $lead ms ahead, not an hour");

# max_lead lowered while IDs are ahead: they go on at once, and the
# generator writes a reservation a quarter second apart at most.
my $from = $node->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
set_max_lead('0', '0');
my ($ret, $out, $err) = $node->psql('postgres', q{
	SET statement_timeout = '2s';
	SELECT count(idempotency.snowflake_id()) FROM generate_series(1, 200000);
	SELECT pg_sleep(0.5);
	SELECT count(idempotency.snowflake_id()) FROM generate_series(1, 200000);
	SELECT pg_sleep(0.5);
	SELECT count(idempotency.snowflake_id()) FROM generate_series(1, 200000)});
is($ret, 0, 'lowering max_lead while IDs are ahead does not stall them') or diag $err;
my $to = $node->safe_psql('postgres', 'SELECT pg_current_wal_flush_lsn()');
my ($stdout, $stderr);
IPC::Run::run [ 'pg_waldump', '-p', $node->data_dir . '/pg_wal', '--rmgr=custom186',
	'-s', $from, '-e', $to ], '>', \$stdout, '2>', \$stderr;
my $records = () = $stdout =~ /^rmgr: custom186 /mg;
ok($records <= 8, "and writes few reservations meanwhile ($records)");
$node->stop;

done_testing();
