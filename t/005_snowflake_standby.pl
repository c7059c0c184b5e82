# On a streaming standby, which usually has its primary's node id,
# snowflake_id() refuses; the decoding functions work.  Once promoted, the
# standby generates IDs above those its old primary issued.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $primary = preloaded_node('snowflake_primary', '', allows_streaming => 1);
$primary->safe_psql('postgres', q{
	CREATE TABLE orders (id idempotency.snowflake PRIMARY KEY DEFAULT idempotency.snowflake_id(), n int);
	INSERT INTO orders (n) SELECT g FROM generate_series(1, 1000) g;
});

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('snowflake_standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

$primary->safe_psql('postgres',
	'INSERT INTO orders (n) SELECT g FROM generate_series(1001, 2000) g');
$primary->wait_for_catchup($standby);

is($standby->safe_psql('postgres', 'SELECT count(*) FROM orders'), '2000',
	'the standby has the rows');
my ($ret, $out, $err) = $standby->psql('postgres',
	q{\set VERBOSITY verbose
SELECT idempotency.snowflake_id()});
like($err, qr/ERROR:\s+25006: cannot generate snowflake IDs during recovery/,
	'snowflake_id() refuses on a standby, with SQLSTATE 25006');
like($err, qr/HINT:\s+Generate IDs on the primary/, 'and says where to generate them');
is($standby->safe_psql('postgres', q{
	SELECT count(*) FROM orders
	WHERE idempotency.snowflake_timestamp(id) <= now() AND idempotency.snowflake_node(id) = 0}),
	'2000', 'decoding works on the standby');

# Fail over: the old primary stops, the standby takes over and generates.
$primary->stop;
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'standby was not promoted';
$standby->safe_psql('postgres',
	'INSERT INTO orders (n) SELECT g FROM generate_series(2001, 3000) g');
is($standby->safe_psql('postgres', q{
	SELECT count(*) FROM orders o
	WHERE o.n > 2000 AND o.id::bigint <= (SELECT max(id::bigint) FROM orders WHERE n <= 2000)}),
	'0', 'after promotion, new IDs are above every ID of the old primary');

$standby->stop;
done_testing();
