# idem_claim(..., wait_for => bound): duplicates of a request in progress
# wait for its answer, woken by the database when the owner's claim ends.
#
# 1. One transaction per request: the duplicate waits for the owner's
#    transaction (on its lock, as a row wait does); a commit hands it the
#    response, a rollback the key.
# 2. Several transactions: the owner's claim is committed under a lease and
#    the owner works outside any transaction; the duplicate waits without a
#    lock, and is woken by a completion, a retryable failure or a release.
# 3. The bound passes first: in_progress.
# 4. Sixteen duplicates of one request all replay its response soon after
#    it commits (the distribution is printed); without the wake-up they
#    would read again only after seconds.
# 5. Sixteen duplicates of an owner whose lease runs out: exactly one takes
#    over.
#
# The isolation tester cannot tell a wait on a condition variable from a
# step still running, so these races are driven from here.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $node = preloaded_node('claim_wait', "max_connections = 50\n");

# A psql running one statement in the background; its output once done.
sub start_psql
{
	my ($sql) = @_;
	my %w = (out => '', err => '');
	$w{h} = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$w{out}, '2>', \$w{err});
	return \%w;
}

sub finish_psql
{
	my ($w) = @_;
	$w->{h}->finish;
	die "psql failed: $w->{err}" if $w->{err} ne '';
	chomp $w->{out};
	return $w->{out};
}

# Wait until n sessions sleep in idem_claim's wait ("Extension" before
# PostgreSQL 17, which names extensions' wait events).
sub until_waiting
{
	my ($n) = @_;
	$node->poll_query_until('postgres', qq{
		SELECT count(*) = $n FROM pg_stat_activity
		WHERE wait_event IN ('IdempotencyClaimWait', 'Extension') AND query LIKE '%wait_for%'})
	  or die "$n sessions did not start waiting";
}

# Wait until a session waits on a lock (a transaction) in a claim of key.
sub until_waiting_lock
{
	my ($key) = @_;
	$node->poll_query_until('postgres', qq{
		SELECT count(*) = 1 FROM pg_stat_activity
		WHERE wait_event_type = 'Lock' AND query LIKE '%$key%wait_for%'})
	  or die "nobody started waiting for $key";
}

my $waiter_sql = q{SELECT outcome || '|' || coalesce(status::text, '') || '|' || coalesce(convert_from(body, 'UTF8'), '')
	FROM idempotency.idem_claim('%s', '1 hour', wait_for => '60 s')};

# 1. One transaction per request.
my $owner = $node->background_psql('postgres');
$owner->query_safe(q{BEGIN; SELECT idempotency.idem_claim('one-tx', '1 hour')});
my $dup = start_psql(sprintf($waiter_sql, 'one-tx'));
until_waiting_lock('one-tx');
$owner->query_safe(q{SELECT idempotency.idem_complete('one-tx', (SELECT token FROM idempotency.claims WHERE key = 'one-tx'),
	status => 201, body => 'order 1', content_type => 'text/plain'); COMMIT});
is(finish_psql($dup), 'completed|201|order 1',
	'a duplicate waiting for an uncommitted claim replays the response committed with it');

$owner->query_safe(q{BEGIN; SELECT idempotency.idem_claim('rolled-back', '1 hour')});
$dup = start_psql(sprintf($waiter_sql, 'rolled-back'));
until_waiting_lock('rolled-back');
$owner->query_safe('ROLLBACK');
is(finish_psql($dup), 'claimed||', 'and claims the key when the owner rolls back');

# 2. Several transactions: the claim is committed, its lease live.
for my $case (
	[ 'completed', q{SELECT idempotency.idem_complete('%s', %s, status => 200, body => 'done')}, 'completed|200|done' ],
	[ 'failed', q{SELECT idempotency.idem_fail('%s', %s, true)}, 'reclaimed||' ],
	[ 'released', q{SELECT idempotency.idem_release('%s', %s)}, 'claimed||' ])
{
	my ($what, $end, $expected) = @$case;
	my $key = "multi-$what";
	my $token = $node->safe_psql('postgres',
		"SELECT token FROM idempotency.idem_claim('$key', '1 hour', lease => '1 hour')");
	$dup = start_psql(sprintf($waiter_sql, $key));
	until_waiting(1);
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
		WHERE a.query LIKE '%wait_for%' AND (NOT l.granted OR l.locktype IN ('transactionid', 'tuple'))}),
		'0', "a duplicate waiting for a committed claim holds and awaits no row or transaction lock ($what)");
	$node->safe_psql('postgres', sprintf($end, $key, $token));
	is(finish_psql($dup), $expected, "it is woken when the owner's claim is $what");
}

# 3. The bound passes first.
$node->safe_psql('postgres', q{SELECT idempotency.idem_claim('bounded', '1 hour', lease => '1 hour')});
my $t0 = time;
is($node->safe_psql('postgres', q{SELECT outcome FROM idempotency.idem_claim('bounded', '1 hour', wait_for => '300 ms')}),
	'in_progress', 'a duplicate whose bound passes first gets in_progress');
cmp_ok(time - $t0, '>=', 0.3, 'after waiting the bound out');

# 4. Sixteen duplicates, one answer, and how soon each got it.
my $token = $node->safe_psql('postgres',
	q{SELECT token FROM idempotency.idem_claim('storm', '1 hour', lease => '1 hour')});
my @dups = map {
	start_psql(q{SELECT outcome || '|' || convert_from(body, 'UTF8') || '|' || extract(epoch FROM clock_timestamp())
		FROM idempotency.idem_claim('storm', '1 hour', wait_for => '60 s')})
} 1 .. 16;
until_waiting(16);
my $committed = $node->safe_psql('postgres', qq{
	BEGIN;
	SELECT idempotency.idem_complete('storm', $token, status => 201, body => '{"order": 16}') \\g /dev/null
	SELECT extract(epoch FROM clock_timestamp());
	COMMIT;});
my (@latency, %answers);
for my $d (@dups)
{
	my ($outcome, $body, $at) = split /\|/, finish_psql($d);
	$answers{"$outcome $body"}++;
	push @latency, ($at - $committed) * 1000;
}
is_deeply(\%answers, { 'completed {"order": 16}' => 16 }, '16 waiting duplicates all replay the one response');
@latency = sort { $a <=> $b } @latency;
note(sprintf('latency from the commit to each duplicate\'s answer, ms: min %.1f, p50 %.1f, p90 %.1f, max %.1f',
	$latency[0], $latency[7], $latency[14], $latency[15]));
# Without the wake-up they would read again only after five seconds.
cmp_ok($latency[15], '<', 2000, 'the commit woke them');

# 5. The owner's lease runs out: exactly one of sixteen takes over, and
# the others, having lost that race, wait on for the new owner's answer
# (a request served in one transaction: take over, work, complete).
$node->safe_psql('postgres', q{
	CREATE FUNCTION serve(k text, bound interval) RETURNS text LANGUAGE plpgsql AS $$
	DECLARE
		c idempotency.idem_claim_result;
	BEGIN
		SELECT * INTO c FROM idempotency.idem_claim(k, '1 hour', lease => '1 hour', wait_for => bound);
		IF c.outcome IN ('claimed', 'reclaimed') THEN
			PERFORM pg_sleep(0.2);
			PERFORM idempotency.idem_complete(k, c.token, status => 201, body => 'second owner');
			RETURN c.outcome::text;
		END IF;
		RETURN c.outcome || ' ' || coalesce(convert_from(c.body, 'UTF8'), '');
	END $$;
	SELECT idempotency.idem_claim('lease-out', '1 hour', lease => '2 s');});
@dups = map { start_psql(q{SELECT serve('lease-out', '30 s')}) } 1 .. 16;
my %outcomes;
$outcomes{ finish_psql($_) }++ for @dups;
is_deeply(\%outcomes, { reclaimed => 1, 'completed second owner' => 15 },
	'when the lease runs out, one duplicate takes over and the others replay its answer');
is($node->safe_psql('postgres', q{SELECT attempts FROM idempotency.claims WHERE key = 'lease-out'}),
	'2', 'the key had exactly two owners');

# The same when the owner's transaction rolls back: one claims afresh.
$owner->query_safe(q{BEGIN; SELECT idempotency.idem_claim('rolled-back-16', '1 hour')});
@dups = map { start_psql(q{SELECT serve('rolled-back-16', '30 s')}) } 1 .. 16;
$node->poll_query_until('postgres', q{SELECT count(*) = 16 FROM pg_stat_activity
	WHERE wait_event_type = 'Lock' AND query LIKE '%rolled-back-16%'}) or die 'the 16 did not wait';
$owner->query_safe('ROLLBACK');
%outcomes = ();
$outcomes{ finish_psql($_) }++ for @dups;
is_deeply(\%outcomes, { claimed => 1, 'completed second owner' => 15 },
	'when the owner rolls back, one duplicate claims the key and the others replay its answer');

# A bound that passes while another waiter holds the key: in_progress.
$node->safe_psql('postgres', q{SELECT idempotency.idem_claim('lease-out-2', '1 hour', lease => '1 s')});
@dups = map {
	start_psql(q{SELECT outcome FROM idempotency.idem_claim('lease-out-2', '1 hour', lease => '1 hour', wait_for => '3 s')})
} 1 .. 4;
%outcomes = ();
$outcomes{ finish_psql($_) }++ for @dups;
is_deeply(\%outcomes, { reclaimed => 1, in_progress => 3 },
	'waiters whose bound passes under the new owner get in_progress');

# 6. Waiting for an uncommitted claim is a wait on its transaction, as a
# row wait is: the deadlock detector sees a cycle of waiters (40P01 for
# one of them, after deadlock_timeout, instead of both sleeping out their
# bounds), and a rollback to a savepoint ends it at once.
my $a = $node->background_psql('postgres', on_error_stop => 0);
my $b = $node->background_psql('postgres', on_error_stop => 0);
$a->query_safe(q{BEGIN; SELECT idempotency.idem_claim('cycle-a', '1 hour')});
$b->query_safe(q{BEGIN; SELECT idempotency.idem_claim('cycle-b', '1 hour')});
$a->query_until(qr/started/, q{\echo started
SELECT outcome FROM idempotency.idem_claim('cycle-b', '1 hour', wait_for => '60 s');
\echo done-a
});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE wait_event_type = 'Lock' AND query LIKE '%cycle-b%wait_for%'}) or die 'a did not wait';
$b->query_until(qr/started/, q{\echo started
SELECT outcome FROM idempotency.idem_claim('cycle-a', '1 hour', wait_for => '60 s');
\echo done-b
});
$t0 = time;
$node->poll_query_until('postgres', q{SELECT count(*) < 2 FROM pg_stat_activity
	WHERE query LIKE '%cycle-%wait_for%' AND state = 'active'}) or die 'the cycle was not broken';
cmp_ok(time - $t0, '<', 30, 'a cycle of claims waiting for each other is broken long before the bounds');
$a->quit;
$b->quit;
like($node->safe_psql('postgres', q{SELECT string_agg(key, ',' ORDER BY key) FROM idempotency.claims WHERE key LIKE 'cycle-%'}),
	qr/^(cycle-a,cycle-b|cycle-a|cycle-b|)$/, 'and nothing of it is left half done');

$owner->query_safe(q{BEGIN; SAVEPOINT s; SELECT idempotency.idem_claim('savepoint', '1 hour')});
$dup = start_psql(q{SELECT outcome FROM idempotency.idem_claim('savepoint', '1 hour', wait_for => '60 s')});
until_waiting_lock('savepoint');
$t0 = time;
$owner->query_safe(q{ROLLBACK TO s});
is(finish_psql($dup), 'claimed', 'a claim rolled back to a savepoint frees the key for its waiter');
cmp_ok(time - $t0, '<', 4, 'at once (not at the next read every five seconds)');
$owner->query_safe('COMMIT');

# 7. The bound holds against a winner that keeps its transaction open:
# those that lost the race to take the key over do not wait for the
# winner's row lock past their bound.
$node->safe_psql('postgres', q{
	CREATE FUNCTION hold(k text, bound interval) RETURNS text LANGUAGE plpgsql AS $$
	DECLARE
		c idempotency.idem_claim_result;
		waited interval;
	BEGIN
		SELECT * INTO c FROM idempotency.idem_claim(k, '1 hour', lease => '1 hour', wait_for => bound);
		waited := clock_timestamp() - statement_timestamp();
		PERFORM pg_sleep(8);	-- the transaction goes on, holding what it took
		RETURN c.outcome || ' ' || (waited < bound + interval '3 s');
	END $$;
	SELECT idempotency.idem_claim('held', '1 hour', lease => '1 s');});
@dups = map { start_psql(q{SELECT hold('held', '2 s')}) } 1 .. 4;
%outcomes = ();
$outcomes{ finish_psql($_) }++ for @dups;
is_deeply(\%outcomes, { 'reclaimed true' => 1, 'in_progress true' => 3 },
	'the waiters that lost to a new owner answer within their bound although it holds the key')
  or diag explain \%outcomes;

# A row locked by a transaction that is not writing it (here FOR SHARE on
# an expired claim): the renewal waits for the lock up to the bound, then
# the answer is in_progress, without retrying (each retry would burn a
# transaction id).
$node->safe_psql('postgres', q{SELECT idempotency.idem_claim('locked', '1 s')});
sleep 1.2;
$owner->query_safe(q{BEGIN; SELECT 1 FROM idempotency.claims WHERE key = 'locked' FOR SHARE});
my $xid_before = $node->safe_psql('postgres', 'SELECT pg_current_xact_id()');
is($node->safe_psql('postgres', q{SELECT outcome FROM idempotency.idem_claim('locked', '1 hour', wait_for => '1 s')}),
	'in_progress', 'a claim whose row another transaction only locks answers in_progress at the bound');
cmp_ok($node->safe_psql('postgres', 'SELECT pg_current_xact_id()') - $xid_before, '<', 20,
	'having tried its write only a few times');
$owner->query_safe('ROLLBACK');

$owner->quit;
$node->stop;
done_testing();
