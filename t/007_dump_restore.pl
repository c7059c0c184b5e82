# pg_dump and restore keep state machines, guards and policies: the machine
# and policy tables are extension configuration (pg_extension_config_dump),
# and a guard is a trigger on the user's table, dumped with it.  The
# restored guard must enforce the same machine, the restored policy bind,
# its allowed_roles (restored by role name) included.  They keep the
# idempotency state too: live claims, one-time tokens and leases, and the
# position of both token sequences, so that after the move a retry is
# replayed, a changed payload is a mismatch, a claim in progress stays the
# owner's, tokens keep growing, a one-time token is good exactly once more
# (and a consumed one never), and a lease stays fenced.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $node = preloaded_node('guard_dump');
$node->safe_psql('postgres', q{
	SET search_path = public, idempotency;
	SELECT idem_machine('order', 'pending->paid', 'paid->shipped', 'pending->cancelled');
	UPDATE machines SET initial_states = '{pending,paid}' WHERE name = 'order';
	CREATE TABLE orders (id int PRIMARY KEY, state text NOT NULL, version int NOT NULL DEFAULT 0);
	SELECT idem_guard('orders', machine => 'order', version_column => 'version', strict_version => true);
	INSERT INTO orders (id, state) VALUES (1, 'pending'), (2, 'paid');
	UPDATE orders SET state = 'paid', version = 1 WHERE id = 1;
	INSERT INTO policies (scope, max_ttl, max_key_length, require_fingerprint)
	VALUES ('payments', '2 hours', 12, true);
	CREATE ROLE tap_tenant IN ROLE idempotency_user;
	CREATE ROLE tap_other IN ROLE idempotency_user;
	INSERT INTO policies (scope, allowed_roles) VALUES ('tenant', '{tap_tenant}');
});

# Idempotency state, taken with the caller's own eyes before the move.
my ($done_token, $live_token, $lease_token, $one_time, $used) = split /\|/, $node->safe_psql('postgres', q{
	SET search_path = public, idempotency;
	SELECT (idem_claim('done', '1 day', idem_fingerprint('{"amount": 10}'))).token AS t \gset
	SELECT idem_complete('done', :t, '{"paid": 10}', 201);
	SELECT (idem_claim('live', '1 day', lease => '1 hour')).token AS l \gset
	INSERT INTO claims (scope, key, state, token, expires_at)
	VALUES ('default', 'expired', 'completed', 1, now() - interval '1 minute');
	SELECT idem_token_issue() AS used \gset
	SELECT idem_token_consume(:'used');
	SELECT :t, :l, idem_lease_acquire('job', 'worker-1', '1 hour'), idem_token_issue(), :'used'});

my $dump = $node->basedir . '/dump.sql';
command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'), '-f', $dump ],
	'the dump restores without error');

is($node->safe_psql('restored', q{
	SELECT string_agg(from_state || '->' || to_state, ' ' ORDER BY from_state COLLATE "C", to_state COLLATE "C")
	FROM idempotency.transitions WHERE machine = 'order'}),
	'paid->shipped pending->cancelled pending->paid', 'transitions are restored');
is($node->safe_psql('restored', q{SELECT initial_states FROM idempotency.machines WHERE name = 'order'}),
	'{pending,paid}', 'a machine\'s initial states are restored');
is($node->safe_psql('restored', q{SELECT id || ':' || state || ':' || version FROM orders ORDER BY id}),
	"1:paid:2\n2:paid:1", 'rows keep their states and versions');

my ($ret, $out, $err) = $node->psql('restored', q{UPDATE orders SET state = 'pending', version = 2 WHERE id = 1});
like($err, qr/transition of "orders" from "paid" to "pending" is not allowed by machine "order"/,
	'the restored guard refuses an illegal transition');
($ret, $out, $err) = $node->psql('restored', q{UPDATE orders SET state = 'shipped' WHERE id = 1});
like($err, qr/must set version column "version"/, 'and keeps strict_version');
is($node->safe_psql('restored', q{
	UPDATE orders SET state = 'shipped', version = 2 WHERE id = 1;
	SELECT state || ':' || version FROM orders WHERE id = 1}),
	'shipped:3', 'and lets a legal transition through, bumping the version');

is($node->safe_psql('restored', q{SELECT scope || ' ' || max_ttl || ' ' || max_key_length || ' '
	|| require_fingerprint FROM idempotency.policies WHERE scope = 'payments'}),
	'payments 02:00:00 12 true', 'policies are restored');
($ret, $out, $err) = $node->psql('restored', q{SELECT idempotency.idem_claim('a-key-too-long', scope => 'payments',
	fingerprint => idempotency.idem_fingerprint('{}'))});
like($err, qr/key is too long for scope "payments"/, 'and the restored policy binds');
($ret, $out, $err) = $node->psql('restored', q{SELECT idempotency.idem_claim('k', scope => 'payments')});
like($err, qr/scope "payments" requires a fingerprint/, 'all of it');
is($node->safe_psql('restored', q{SELECT allowed_roles FROM idempotency.policies WHERE scope = 'tenant'}),
	'{tap_tenant}', 'allowed_roles are restored');
($ret, $out, $err) = $node->psql('restored', q{SET ROLE tap_other; SELECT idempotency.idem_lookup('k', 'tenant')});
like($err, qr/permission denied for idempotency scope "tenant"/, 'and keep other roles out');
is($node->safe_psql('restored', q{SET ROLE tap_tenant; SELECT idempotency.idem_lookup('k', 'tenant') IS NULL}),
	't', 'and let the listed role in');

# The idempotency state.
check_claims_kept($node, 'restored', $live_token, 'the move');
is($node->safe_psql('restored', q{
	SELECT count(*) FROM idempotency.claims WHERE key = 'expired'}),
	'0', 'an expired claim is not carried over');
cmp_ok($node->safe_psql('restored', q{SELECT (idempotency.idem_claim('new', '1 day')).token}),
	'>', $live_token, 'a new claim gets a greater token than any before the move');
is($node->safe_psql('restored', qq{
	SELECT idempotency.idem_token_consume('$one_time')::text || ' '
		|| idempotency.idem_token_consume('$one_time')::text || ' '
		|| idempotency.idem_token_consume('$used')::text}),
	'true false false', 'a one-time token is good once after the move, a consumed one never');
is($node->safe_psql('restored', q{
	SELECT idempotency.idem_lease_acquire('job', 'worker-2', '1 hour') IS NULL}),
	't', 'a lease held before the move is still held');
is($node->safe_psql('restored', qq{SELECT idempotency.idem_lease_check('job', $lease_token)}),
	't', 'by the same token');
cmp_ok($node->safe_psql('restored', qq{
	SELECT idempotency.idem_lease_release('job', $lease_token) \\g /dev/null
	SELECT idempotency.idem_lease_acquire('job', 'worker-2', '1 hour')}),
	'>', $lease_token, 'and the next holder\'s token is greater');

$node->stop;
done_testing();
