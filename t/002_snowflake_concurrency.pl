# Snowflake IDs from many concurrent sessions (pgbench): no duplicates, and
# strictly increasing in real-time order across backends.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $node = preloaded_node('snowflake_concurrency', "max_connections = 40\n");
$node->safe_psql('postgres', q{
CREATE TABLE single (id idempotency.snowflake PRIMARY KEY);
CREATE TABLE bulk (ids bigint[]);
CREATE TABLE ordered (seq bigint PRIMARY KEY, id idempotency.snowflake NOT NULL);
CREATE SEQUENCE ordered_seq;
});

# 1. Sixteen clients, one ID per transaction.  A duplicate would violate
# the primary key and fail the pgbench run.
$node->pgbench(
	'--no-vacuum --client=16 --jobs=2 --transactions=2000',
	0,
	[qr{processed: 32000/32000}],
	[qr{^$}],
	'16 clients insert one ID per transaction without a duplicate',
	{ 'single' => 'INSERT INTO single VALUES (idempotency.snowflake_id());' });
is($node->safe_psql('postgres', 'SELECT count(*) FROM single'), '32000',
	'every ID was stored');

# 2. Eight clients, 20000 IDs per transaction, gathered in an array so
# that storing them does not slow the generator down: far more than 4096
# IDs a millisecond, so they contend for the same milliseconds, fill them,
# and wait for the clock.  No lead at all is allowed here.
$node->append_conf('postgresql.conf', 'idempotency.max_lead = 0');
$node->reload;
$node->poll_query_until('postgres', 'SHOW idempotency.max_lead', '0')
  or die 'max_lead was not reloaded';
$node->pgbench(
	'--no-vacuum --client=8 --jobs=2 --transactions=20',
	0,
	[qr{processed: 160/160}],
	[qr{^$}],
	'8 clients generate bursts of 20000 IDs',
	{ 'bulk' => q{
INSERT INTO bulk SELECT array_agg(idempotency.snowflake_id()::bigint ORDER BY g)
FROM generate_series(1, 20000) g;
	} });
is($node->safe_psql('postgres', q{
	SELECT count(*) || ' ' || count(DISTINCT id)
	FROM (SELECT unnest(ids) AS id FROM bulk) s}),
	'3200000 3200000', 'all 3,200,000 IDs are distinct');
is($node->safe_psql('postgres', q{
	SELECT max(idempotency.snowflake_timestamp(id::idempotency.snowflake)) <= now()
	FROM (SELECT unnest(ids) AS id FROM bulk) s}),
	't', 'none is stamped ahead of the clock');
is($node->safe_psql('postgres', q{
	SELECT count(*) > 0
	FROM (SELECT unnest(ids) AS id FROM bulk) s
	WHERE idempotency.snowflake_sequence(id::idempotency.snowflake) = 4095}),
	't', 'some milliseconds were filled to the last sequence number');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM bulk b, LATERAL (
		SELECT id, lag(id) OVER (ORDER BY n) AS prev
		FROM unnest(b.ids) WITH ORDINALITY AS u(id, n)) s
	WHERE id <= prev}),
	'0', 'each burst is strictly increasing');

# 3. Real-time order across backends.  Each transaction takes the same lock,
# then draws a number from a sequence and an ID: the lock orders the pairs
# in time, so sorting by the sequence must sort the IDs too.
$node->pgbench(
	'--no-vacuum --client=8 --jobs=2 --transactions=1000',
	0,
	[qr{processed: 8000/8000}],
	[qr{^$}],
	'8 clients draw ordered pairs',
	{ 'ordered' => q{
BEGIN;
SELECT pg_advisory_xact_lock(42);
INSERT INTO ordered VALUES (nextval('ordered_seq'), idempotency.snowflake_id());
COMMIT;
} });
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT id::bigint AS id, lag(id::bigint) OVER (ORDER BY seq) AS prev FROM ordered) s
	WHERE id <= prev}),
	'0', 'IDs increase in the real-time order of the calls, across backends');

$node->stop;
done_testing();
