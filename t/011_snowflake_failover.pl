# Snowflake IDs across a failover and a point-in-time restore, whatever the
# clocks say: the generator's reservations travel in WAL, so a promoted
# standby and a restored server continue above every ID the old primary
# could have issued.  Also: the WAL the generator writes under full load,
# and what it looks like.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;
use Time::HiRes qw(time);

my $IDS = 1_000_000;

# The old primary's clock runs 10 s ahead of the standby's (or an hour and
# 10 s); it issues IDs, stored in a replicated table, including a burst
# that runs ahead of its clock; then it stops and the standby, promoted,
# generates a million IDs, spread over more than the old primary's window
# when the clocks are 10 s apart.
sub failover
{
	my ($stop_mode, $standby_shift, $rounds) = @_;
	my $name = "fo_${stop_mode}_" . ($standby_shift =~ s/\W//gr);
	my $primary = preloaded_node("${name}_primary", qq{
idempotency.node_id = 5
idempotency.test_clock_shift = '10s'
}, allows_streaming => 1);
	$primary->safe_psql('postgres', 'ALTER DATABASE postgres SET search_path = public, idempotency');
	$primary->backup('base');
	my $standby = PostgreSQL::Test::Cluster->new("${name}_standby");
	$standby->init_from_backup($primary, 'base', has_streaming => 1);
	$standby->append_conf('postgresql.conf',
		"idempotency.test_clock_shift = '$standby_shift'\n");
	$standby->start;

	$primary->safe_psql('postgres', q{
		CREATE TABLE issued (id idempotency.snowflake PRIMARY KEY);
		INSERT INTO issued SELECT idempotency.snowflake_id() FROM generate_series(1, 200000);
		-- A burst stamped 0.9 s ahead of the server's clock, as a burst
		-- that outruns the clock is (within max_lead, 1 s).
		SET idempotency.test_clock_shift = '10900ms';
		INSERT INTO issued SELECT idempotency.snowflake_id() FROM generate_series(1, 300000);
		RESET idempotency.test_clock_shift;
		-- IDs handed out and not stored: only their maximum is kept.
		INSERT INTO issued SELECT max(idempotency.snowflake_id()) FROM generate_series(1, 300000);
	});
	$primary->wait_for_catchup($standby);
	$primary->stop($stop_mode);
	$standby->promote;
	$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
	  or die 'the standby was not promoted';

	$standby->safe_psql('postgres', 'CREATE TABLE fresh (id idempotency.snowflake)');
	my $per_round = $IDS / $rounds;
	my $start = time;
	for my $i (1 .. $rounds)
	{
		$standby->safe_psql('postgres', qq{
			INSERT INTO fresh SELECT idempotency.snowflake_id() FROM generate_series(1, $per_round)});
		sleep 1 if $i < $rounds;
	}
	my $took = time - $start;
	is( $standby->safe_psql('postgres', q{
			SELECT count(*) = count(DISTINCT id)
			   AND min(id) > (SELECT max(id) FROM issued)
			   AND NOT EXISTS (SELECT FROM fresh JOIN issued USING (id))
			FROM fresh}),
		't',
		sprintf('%s stop, standby clock %s: %d IDs over %.0f s, all above the old primary\'s',
			$stop_mode, $standby_shift, $IDS, $took));
	ok($standby->log_contains(
			'system clock is \d+ ms behind the clock that set the snowflake high-water mark'),
		'the promoted standby logs that its clock is behind the old primary\'s');
	$standby->stop;
}

# With the clocks 10 s apart, 16 rounds a second apart take the promoted
# standby through the whole window the old primary could have used (its
# clock's 10 s plus its reservation).
failover('immediate', '0', 16);
failover('fast', '0', 16);
failover('immediate', '-1h', 4);
failover('fast', '-1h', 4);

# Point-in-time restore: a base backup, archived WAL, IDs issued after the
# backup for longer than a reservation lasts (so the backup's own state
# file does not cover them), a restore point, then more IDs.  The server
# restored to that point, with its clock an hour back, issues IDs above
# every one issued before the restore point.
my $origin = preloaded_node('pitr_origin', "idempotency.node_id = 9\n",
	has_archiving => 1, allows_streaming => 1);
$origin->safe_psql('postgres', 'ALTER DATABASE postgres SET search_path = public, idempotency');
$origin->safe_psql('postgres', 'CREATE TABLE issued (id idempotency.snowflake)');
$origin->backup('base');
my $before = 0;
for (1 .. 7)
{
	$origin->safe_psql('postgres',
		'INSERT INTO issued SELECT idempotency.snowflake_id() FROM generate_series(1, 20000)');
	my $max = $origin->safe_psql('postgres',
		'SELECT max(idempotency.snowflake_id())::bigint FROM generate_series(1, 200000)');
	$before = $max if $max > $before;
	sleep 1;
}
$origin->safe_psql('postgres', "SELECT pg_create_restore_point('before')");
$origin->safe_psql('postgres',
	'INSERT INTO issued SELECT idempotency.snowflake_id() FROM generate_series(1, 20000)');
# Wait until the segment holding the restore point is archived.  It is
# named before the switch: on a segment boundary, pg_walfile_name() gives
# the segment that ends there up to PostgreSQL 15, the one that begins
# there since, and that one may never fill.
my $segment = $origin->safe_psql('postgres',
	'SELECT pg_walfile_name(pg_current_wal_lsn())');
$origin->safe_psql('postgres', 'SELECT pg_switch_wal()');
$origin->poll_query_until('postgres',
	"SELECT last_archived_wal >= '$segment' AND last_failed_wal IS NULL FROM pg_stat_archiver")
  or die 'WAL was not archived';
$origin->stop;

my $restored = PostgreSQL::Test::Cluster->new('pitr_restored');
$restored->init_from_backup($origin, 'base', has_restoring => 1);
$restored->append_conf('postgresql.conf', q{
recovery_target_name = 'before'
recovery_target_action = 'promote'
idempotency.test_clock_shift = '-1h'
});
$restored->start;
$restored->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'the restored server did not finish recovery';
is($restored->safe_psql('postgres', 'SELECT count(*) FROM issued'), '140000',
	'the restore stopped at the restore point');
is( $restored->safe_psql('postgres', qq{
		SELECT min(id)::bigint > $before AND min(id) > (SELECT max(id) FROM issued)
		FROM (SELECT idempotency.snowflake_id() AS id FROM generate_series(1, 500000)) s}),
	't',
	'a server restored to a point, its clock an hour back, issues IDs above every ID issued before that point');
$restored->stop;

# Under full load for some seconds, the generator writes one WAL record
# per reservation period: it reserves 4 s ahead of the IDs and renews when
# 1 s is left, so records are 3 s apart, or 2 s when IDs run the whole
# max_lead (1 s) further ahead meanwhile.  pg_waldump knows the record only by
# its resource manager's number; pg_walinspect, in the server, by name,
# with the time each reservation was made.
my $node = preloaded_node('snowflake_wal');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_walinspect');
my $from = $node->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
my $start = time;
my $generated = 0;
while (time - $start < 12)
{
	$generated += $node->safe_psql('postgres',
		'SELECT count(idempotency.snowflake_id()) FROM generate_series(1, 500000)');
}
my $seconds = time - $start;
my $to = $node->safe_psql('postgres', 'SELECT pg_current_wal_flush_lsn()');
my ($stdout, $stderr);
IPC::Run::run [ 'pg_waldump', '-p', $node->data_dir . '/pg_wal', '--rmgr=custom186',
	'-s', $from, '-e', $to ], '>', \$stdout, '2>', \$stderr;
my $records = () = $stdout =~ /^rmgr: custom186 /mg;
ok($records >= 2 && $records <= int($seconds / 2) + 1,
	sprintf('%d IDs in %.1f s wrote %d generator records (pg_waldump)',
		$generated, $seconds, $records));
like($stdout, qr/^rmgr: custom186 +len \(rec\/tot\): +58\/ +58, tx: +\d+, lsn: [0-9A-F\/]+, prev [0-9A-F\/]+, desc: UNKNOWN \(0\) rmid: 186$/m,
	'pg_waldump shows a generator record as custom186');
my $gaps = $node->safe_psql('postgres', qq{
	SELECT string_agg(round(extract(epoch FROM gap)::numeric, 1)::text, ' s, ' ORDER BY lsn)
	FROM (SELECT start_lsn AS lsn,
			reserved - lag(reserved) OVER (ORDER BY start_lsn) AS gap
		FROM (SELECT start_lsn,
				substring(description FROM 'reserved at (.*); node')::timestamptz AS reserved
			FROM pg_get_wal_records_info('$from', '$to')
			WHERE resource_manager = 'idempotency' AND record_type = 'SNOWFLAKE_RESERVE'
			  AND description ~ '^snowflake bound .*; reserved at .*; node 0\$') r) g
	WHERE gap IS NOT NULL});
my @gaps = split /, /, $gaps;
is(scalar(@gaps), $records - 1, 'pg_walinspect names the resource manager and describes each record');
ok((grep { $_ < 1.95 } @gaps) == 0, "reservations are at least 2 s apart ($gaps s)");
$node->stop;

done_testing();
