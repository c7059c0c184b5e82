# Snowflake IDs across restarts and crashes, with the clock set back in
# between: every new ID must be above every ID issued before, which only a
# persisted high-water mark can guarantee (shared memory does not survive).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;
use Time::HiRes;

my $node = preloaded_node('snowflake_restart', qq{
idempotency.node_id = 7
idempotency.test_clock_shift = 0
idempotency.max_lead = 1000
restart_after_crash = on
});

# Run SQL with the extension's schema on the path.
sub sf
{
	my ($sql) = @_;
	return $node->safe_psql('postgres',
		"SET search_path = idempotency, public;\n$sql");
}

# Issue a burst of IDs, which runs the generator ahead of the clock (by
# up to max_lead), and return the last one.
sub burst
{
	my ($n) = @_;
	return sf("SELECT max(snowflake_id()) FROM generate_series(1, $n)");
}

sub set_clock_shift
{
	my ($shift) = @_;
	$node->adjust_conf('postgresql.conf', 'idempotency.test_clock_shift', "'$shift'");
}

# Change a setting and reload; wait until new sessions see it.
sub set_and_reload
{
	my ($name, $value, $shown) = @_;
	$node->adjust_conf('postgresql.conf', $name, "'$value'");
	$node->reload;
	$node->poll_query_until('postgres', "SHOW $name", $shown)
	  or die "$name did not become $shown";
}

my $last = burst(100000);
is(sf("SELECT snowflake_node('$last')"), '7', 'node id from the setting');
ok(-f $node->data_dir . '/idempotency_snowflake.state',
	'the high-water mark is on disk after the first IDs');

# 1. Clean restart, clock set back an hour while the server was down.
$node->stop('fast');
set_clock_shift('-1h');
$node->start;
is(sf("SELECT snowflake_id() > '$last'"), 't',
	'after a clean restart with the clock set back, IDs stay above the old ones');
ok($node->log_contains('behind the clock that set the snowflake high-water mark'),
	'the server log reports the clock behind the high-water mark');
is(sf("SELECT snowflake_timestamp(snowflake_id()) - snowflake_timestamp('$last') < interval '10 s'"),
	't', 'and the exact high-water mark of a clean shutdown avoids a needless jump ahead');

# 2. Immediate shutdown (no shutdown hook runs) right after a burst that ran
# ahead of the clock, then the clock set back two hours.
$last = burst(3000000);
$node->stop('immediate');
set_clock_shift('-2h');
$node->start;
is(sf("SELECT snowflake_id() > '$last'"), 't',
	'after an immediate shutdown with the clock set back, IDs stay above the old ones');

# 3. A backend killed with SIGKILL: the postmaster reinitialises shared
# memory without exiting, and must reload the mark from disk.
my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
$last = burst(3000000);
my $log_offset = -s $node->logfile;
kill 'KILL', $pid;
$bg->quit;
# Not poll_query_until: a psql refused during the restart can exit before
# IPC::Run writes the query, which dies on EPIPE.
$node->wait_for_log(qr/database system is ready to accept connections/, $log_offset);
ok($node->log_contains('all server processes terminated; reinitializing'),
	'the postmaster went through crash recovery');
is(sf("SELECT snowflake_id() > '$last'"), 't',
	'after a backend crash, IDs stay above the old ones');

# 4. The whole server killed with SIGKILL, as in a power cut: nothing runs
# at exit, so only the reservation on disk is left.  Then the clock is set
# back three hours.
$last = burst(3000000);
my $postmaster = (split /\n/, PostgreSQL::Test::Utils::slurp_file($node->data_dir . '/postmaster.pid'))[0];
my @children = split /\s+/, `pgrep -P $postmaster`;
$node->kill9;
@children = grep { /^\d+$/ } @children;
kill 'KILL', @children;
# Wait until every killed process is gone (and reaped), or the new
# postmaster would take the old one for alive.
foreach my $p ($postmaster, @children)
{
	for (my $i = 0; kill(0, $p) && $i < 600; $i++)
	{
		Time::HiRes::usleep(100_000);
	}
}
set_clock_shift('-3h');
$node->start;
is(sf("SELECT snowflake_id() > '$last'"), 't',
	'after the server is killed and the clock set back, IDs stay above the old ones');
is(sf("SELECT snowflake_timestamp(snowflake_id()) >= snowflake_timestamp('$last')"), 't',
	'and their timestamps do not go back with the clock');

# 5. While running, with no lead allowed so that a step cannot pass for a
# burst, the clock steps back a second.  IDs keep increasing, stamped at
# or after the last one; the floor runs at half speed, so after twice the
# step the IDs follow the (shifted) clock again; then the clock jumps
# forward and they follow at once.
set_and_reload('idempotency.test_clock_shift', '0', '0');
set_and_reload('idempotency.max_lead', '0', '0');
# The crashes above left the generator up to a reservation window (5 s)
# ahead of the clock; the floor pays that back at half speed.
ok($node->poll_query_until('postgres',
	'SELECT idempotency.snowflake_timestamp(idempotency.snowflake_id()) <= clock_timestamp()'),
	'the lead left by the crashes converges back to the clock');
$last = sf('SELECT snowflake_id()');
set_and_reload('idempotency.test_clock_shift', '-1s', '-1000');
is(sf("SELECT min(id) > '$last' AND min(snowflake_timestamp(id)) >= snowflake_timestamp('$last')
	FROM (SELECT snowflake_id() AS id FROM generate_series(1, 50000)) s"),
	't', 'after a step back, IDs stay above the high-water mark, and so do their timestamps');
ok($node->log_contains('ms behind the snowflake generator'), 'the step back is logged');
sleep 3;
is(sf("SELECT snowflake_timestamp(snowflake_id()) < clock_timestamp() - interval '0.5 s'"),
	't', 'after twice the step, IDs follow the shifted clock again');
$last = sf('SELECT snowflake_id()');
set_and_reload('idempotency.test_clock_shift', '0', '0');
is(sf("SELECT snowflake_id() > '$last'
	AND snowflake_timestamp(snowflake_id()) > clock_timestamp() - interval '0.5 s'"),
	't', 'a step forward is followed at once');

# A burst with no lead allowed: a million IDs fill some milliseconds to
# the last sequence number, so the generator waited for the clock, and
# none is stamped later than the clock when the burst ends.
is(sf(q{SELECT max(snowflake_timestamp(id)) <= clock_timestamp()
	       AND max(snowflake_sequence(id)) = 4095 AND count(DISTINCT id) = 1000000
	FROM (SELECT snowflake_id() AS id FROM generate_series(1, 1000000)) s}),
	't', 'with max_lead = 0 a burst waits for the clock and never runs ahead');
set_and_reload('idempotency.max_lead', '1000', '1s');

# 6. A damaged state file is reported and ignored, not fatal; the next IDs
# write a good one again.
$node->stop('fast');
my $state = $node->data_dir . '/idempotency_snowflake.state';
open(my $fh, '>', $state) or die "could not open $state: $!";
print $fh 'not a snowflake state file';
close $fh;
$node->start;
ok($node->log_contains('ignoring invalid snowflake state file'),
	'a damaged state file is reported');
is(sf('SELECT snowflake_id() > 0'), 't', 'IDs are still issued');
ok(-s $state == 48, 'a valid state file is written again');

$node->stop;
done_testing();
