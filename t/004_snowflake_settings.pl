# Settings that decide what an ID means are checked at server start: an
# invalid idempotency.node_id or idempotency.epoch stops the server instead
# of silently falling back to the default (PostgreSQL's behaviour for
# custom settings), and a changed epoch never lets new IDs repeat old ones.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('snowflake_settings');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'idempotency'
idempotency.node_id = 1024
idempotency.epoch = '2020-01-01 00:00:00+00'
});

# 1. An out-of-range node id.
ok(!$node->start(fail_ok => 1), 'the server refuses to start with node_id = 1024');
ok($node->log_contains(
	'FATAL:  invalid value for parameter "idempotency.node_id": "1024"'),
	'and says which setting is wrong');

# 2. A malformed epoch.
$node->adjust_conf('postgresql.conf', 'idempotency.node_id', '5');
$node->adjust_conf('postgresql.conf', 'idempotency.epoch', "'2020-13-01'");
ok(!$node->start(fail_ok => 1), 'the server refuses to start with a malformed epoch');
ok($node->log_contains(
	'FATAL:  invalid value for parameter "idempotency.epoch": "2020-13-01"'),
	'and says which setting is wrong');

# 3. Valid settings start.
$node->adjust_conf('postgresql.conf', 'idempotency.epoch', "'2020-01-01 00:00:00+00'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION idempotency');
my $last = $node->safe_psql('postgres',
	'SELECT max(idempotency.snowflake_id()::bigint) FROM generate_series(1, 1000)');
is($node->safe_psql('postgres', "SELECT idempotency.snowflake_node('$last')"),
	'5', 'IDs carry the configured node');

# 4. The epoch moved a day later: new IDs would count from a later instant
# and sort below the old ones.  The generator keeps them above instead, and
# warns.
$node->stop;
$node->adjust_conf('postgresql.conf', 'idempotency.epoch', "'2020-01-02 00:00:00+00'");
$node->start;
ok($node->log_contains('idempotency.epoch changed since snowflake IDs were last issued'),
	'a changed epoch is reported');
is($node->safe_psql('postgres', "SELECT idempotency.snowflake_id()::bigint > $last"),
	't', 'and new IDs stay above the ones issued under the old epoch');

# 5. A new server whose epoch lies in the future (or whose clock is wrong
# at boot): it starts, and snowflake_id() refuses until the clock has passed
# the epoch.  (With IDs already issued, the persisted high-water mark would
# keep them coming above the old ones instead, as in 4.)
$node->stop;
unlink($node->data_dir . '/idempotency_snowflake.state')
  or die "could not remove the state file: $!";
$node->adjust_conf('postgresql.conf', 'idempotency.epoch', "'2999-01-01 00:00:00+00'");
$node->start;
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT idempotency.snowflake_id()');
like($err, qr/system clock reads before idempotency\.epoch/,
	'an epoch in the future is refused at generation time');

$node->stop;
done_testing();
