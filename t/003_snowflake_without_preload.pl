# Without shared_preload_libraries the extension installs and everything
# that needs no shared memory works; snowflake_id() refuses with a hint
# that names the setting.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('snowflake_without_preload');
$node->init;
$node->start;

my $log_start = -s $node->logfile;
my ($ret, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION idempotency');
is($ret, 0, 'CREATE EXTENSION works without shared_preload_libraries');
like($err, qr/WARNING:\s+idempotency is not loaded via "shared_preload_libraries"/,
	'and warns that the library is not preloaded');
like($err, qr/HINT:\s+Add idempotency to "shared_preload_libraries"/,
	'with a hint that names the setting');
like(substr(slurp_file($node->logfile), $log_start),
	qr/WARNING:\s+idempotency is not loaded via "shared_preload_libraries"/,
	'the server log has the warning too');
is($node->safe_psql('postgres', 'SELECT idempotency.idem_preloaded()'),
	'f', 'idem_preloaded() says so');

($ret, $out, $err) = $node->psql('postgres',
	q{\set VERBOSITY verbose
SELECT idempotency.snowflake_id()});
isnt($ret, 0, 'snowflake_id() fails');
like($err, qr/ERROR:\s+55000: snowflake_id\(\) requires idempotency to be loaded via "shared_preload_libraries"/,
	'with SQLSTATE 55000 and a clear message');
like($err, qr/HINT:\s+Add idempotency to "shared_preload_libraries"/,
	'and a hint that names the setting');

is($node->safe_psql('postgres', q{
	SET search_path = idempotency, public;
	SELECT snowflake_node(s), snowflake_sequence(s),
	       snowflake_timestamp(s) = '2020-01-01 00:00:01+00',
	       snowflake_at('2020-01-01 00:00:01+00') = s
	FROM (VALUES (((1000::bigint << 22) | (3 << 12) | 7)::snowflake)) v(s)}),
	'3|7|t|f', 'the type and the decoding functions work');
is($node->safe_psql('postgres', q{
	CREATE TABLE t (id idempotency.snowflake PRIMARY KEY);
	INSERT INTO t VALUES ('42');
	SET search_path = idempotency, public;
	SELECT id FROM t WHERE id = 42}),
	'42', 'tables and indexes on snowflake columns work');
is($node->safe_psql('postgres', q{
	LOAD 'idempotency';
	SHOW idempotency.epoch}),
	'2020-01-01 00:00:00+00', 'the settings are defined once the library is loaded');

$node->stop;
done_testing();
