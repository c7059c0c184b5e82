# The purge worker gives every table its turn.  While pgbench keeps
# claiming keys with a ttl of a microsecond (each claim expired as soon as
# it is made, more of them than the worker's small, slow batches can
# remove), expired one-time tokens and leases are still purged within a
# few rounds; once the stream stops, the worker catches up.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $node = preloaded_node('purge_fairness',
	"idempotency.purge_interval = '1s'\nidempotency.purge_batch_size = 10\n"
	  . "idempotency.purge_delay = '100ms'\n");

# Expired tokens and leases, and one live of each.
$node->safe_psql('postgres', q{
	INSERT INTO idempotency.tokens (scope, digest, created_at, expires_at)
	SELECT 'fair', sha256(('fair' || g)::bytea), now() - interval '1 hour',
		now() - interval '1 minute'
	FROM generate_series(0, 50) g;
	INSERT INTO idempotency.leases (name, holder, token, acquired_at, expires_at)
	SELECT 'fair-' || g, 'w', g, now() - interval '1 hour', now() - interval '1 minute'
	FROM generate_series(1, 50) g;
	SELECT idempotency.idem_token_issue('fair');
	SELECT idempotency.idem_lease_acquire('fair-live', 'w', '1 day');
});

# The stream: claims that expire as they are made.
my $script = $node->basedir . '/expiring_claims.sql';
append_to_file($script,
	"SELECT idempotency.idem_claim(md5(random()::text), '1 microsecond');\n");
my ($stdout, $stderr) = ('', '');
my $stream = IPC::Run::start(
	[
		'pgbench', '--no-vacuum', '--client=2', '--jobs=1', '--time=60',
		'--file=' . $script, '--host=' . $node->host, '--port=' . $node->port,
		'postgres'
	],
	'>', \$stdout, '2>', \$stderr);

my $expired_claims = q{SELECT count(*) > 1000 FROM idempotency.claims WHERE expires_at <= now()};
ok($node->poll_query_until('postgres', $expired_claims),
	'the stream outruns the worker: expired claims pile up');

# Within 20 s (a round every second), with the stream still running.
my $left = q{SELECT (SELECT count(*) FROM idempotency.tokens WHERE scope = 'fair' AND expires_at <= now())
	+ (SELECT count(*) FROM idempotency.leases WHERE name LIKE 'fair-%' AND expires_at <= now())};
my $n;
for (1 .. 200)
{
	$n = $node->safe_psql('postgres', $left);
	last if $n eq '0';
	usleep(100_000);
}
my $still_streaming = $stream->pumpable;
is($n, '0', 'expired tokens and leases are purged while claims keep expiring');
ok($still_streaming, 'and the stream was still running then');
is($node->safe_psql('postgres', q{
	SELECT (SELECT count(*) FROM idempotency.tokens WHERE scope = 'fair')
		|| '/' || (SELECT count(*) FROM idempotency.leases WHERE name LIKE 'fair-%')}),
	'1/1', 'the live token and lease are kept');

$stream->kill_kill;
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET idempotency.purge_batch_size = 1000;
	ALTER SYSTEM SET idempotency.purge_delay = 0;
	SELECT pg_reload_conf();
});
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM idempotency.claims WHERE expires_at <= now()}),
	'once the stream stops, the worker catches up');

$node->stop;
done_testing();
