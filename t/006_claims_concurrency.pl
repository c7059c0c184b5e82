# Many clients hammer a small set of idempotency keys (pgbench).
#
# 1. Claim, business write and completion in one transaction, with random
#    rollbacks: every key's business row exists exactly once, and every
#    claim is completed with the response of that row.
# 2. The same without waiting for uncommitted claims (wait => false).
# 3. A multi-transaction flow with short leases: the claim commits, the
#    owner then "calls out" for a random time that often outlasts its lease,
#    and others take over.  Fencing must let exactly one completion through
#    per key, the current owner's.
#
# The business tables have no unique constraint: only the claims keep the
# effects single.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdempotencyTest;

my $node = preloaded_node('claims_concurrency', "max_connections = 40\n");
$node->safe_psql('postgres', q{
CREATE TABLE payments (id bigserial, key text NOT NULL, amount int NOT NULL);
CREATE TABLE completions (key text NOT NULL, token bigint NOT NULL);
CREATE FUNCTION finish_job(k text, t bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO completions VALUES (k, t);
	PERFORM idempotency.idem_complete(k, t, to_jsonb(t), 200);
EXCEPTION WHEN serialization_failure THEN
	NULL;	-- fenced out: the completion row goes with the subtransaction
END $$;
});

# 1. One transaction per request; one in ten rolls back after its work.
my $one_tx = q{
\set k random(1, 40)
\set fail random(1, 10)
BEGIN;
SELECT ((c).outcome = 'claimed')::int AS mine, coalesce((c).token, 0) AS tok
  FROM (SELECT idempotency.idem_claim('pay-' || :k, '1 hour') AS c) s \gset
\if :mine
INSERT INTO payments (key, amount) VALUES ('pay-' || :k, :k);
SELECT idempotency.idem_complete('pay-' || :k, :tok, jsonb_build_object('amount', :k), 201);
\endif
\if :fail = 1
ROLLBACK;
\else
COMMIT;
\endif
};
$node->pgbench('--no-vacuum --client=16 --jobs=2 --transactions=300',
	0, [qr{processed: 4800/4800}], [qr{^$}],
	'16 clients claim 40 keys in one transaction each', { 'one_tx' => $one_tx });

is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT key FROM payments GROUP BY key HAVING count(*) <> 1) s}),
	'0', 'every key was paid at most once');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT key) FROM payments}),
	'40', 'and every key was paid');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM idempotency.claims c JOIN payments p ON p.key = c.key
	WHERE c.state = 'completed' AND c.status = 201
	  AND c.response = jsonb_build_object('amount', p.amount)}),
	'40', 'every claim is completed with the response of its payment');

# 2. The same, but callers do not wait for an uncommitted claim.
my $no_wait = $one_tx;
$no_wait =~ s/'pay-' \|\| :k, '1 hour'\)/'nowait-' || :k, '1 hour', wait => false)/;
$no_wait =~ s/'pay-'/'nowait-'/g;
$node->pgbench('--no-vacuum --client=16 --jobs=2 --transactions=300',
	0, [qr{processed: 4800/4800}], [qr{^$}],
	'16 clients claim 40 keys without waiting', { 'no_wait' => $no_wait });
is($node->safe_psql('postgres', q{
	SELECT count(*) || ' ' || count(DISTINCT key) FROM payments WHERE key LIKE 'nowait-%'}),
	'40 40', 'without waiting, every key was paid exactly once');

# 3. Multi-transaction: claims commit on their own, with a 20 ms lease; the
# "external call" takes 0 to 40 ms.
my $multi_tx = q{
\set k random(1, 20)
\set call random(0, 40)
SELECT coalesce((c).token, 0) AS tok
  FROM (SELECT idempotency.idem_claim('job-' || :k, '1 hour', lease => '20 ms') AS c) s \gset
\if :tok > 0
\sleep :call ms
SELECT finish_job('job-' || :k, :tok);
\endif
};
$node->pgbench('--no-vacuum --client=8 --jobs=2 --transactions=200',
	0, [qr{processed: 1600/1600}], [qr{^$}],
	'8 clients run a multi-transaction flow with short leases', { 'multi_tx' => $multi_tx });

is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT key FROM completions GROUP BY key HAVING count(*) > 1) s}),
	'0', 'exactly one completion got through per key');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM idempotency.claims c JOIN completions d ON d.key = c.key
	WHERE c.key LIKE 'job-%' AND c.state = 'completed'
	  AND c.token = d.token AND c.response = to_jsonb(d.token)}),
	$node->safe_psql('postgres', q{SELECT count(*) FROM completions}),
	'and it was the current owner\'s, whose response is stored');
ok($node->safe_psql('postgres', q{
	SELECT count(*) FROM idempotency.claims WHERE key LIKE 'job-%' AND attempts > 1}) > 0,
	'leases ran out and callers took over');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT token FROM idempotency.claims GROUP BY token HAVING count(*) > 1) s}),
	'0', 'no token was handed out twice');

# 4. Sixteen clients churn one key: claim, then fail it (retryable), release
# it or complete it at once.  Every claim races the others for the same
# row, and READ COMMITTED callers must always get an outcome, never an
# error.
my $churn = q{
\set r random(1, 3)
SELECT coalesce((c).token, 0) AS tok
  FROM (SELECT idempotency.idem_claim('hot', '1 hour') AS c) s \gset
\if :tok > 0
\if :r = 1
SELECT idempotency.idem_fail('hot', :tok, true);
\elif :r = 2
SELECT idempotency.idem_release('hot', :tok);
\else
SELECT idempotency.idem_complete('hot', :tok, '{}', 200);
DELETE FROM idempotency.claims WHERE key = 'hot';
\endif
\endif
};
$node->pgbench('--no-vacuum --client=16 --jobs=2 --transactions=300',
	0, [qr{processed: 4800/4800}], [qr{^$}],
	'16 clients churning one key never get an error', { 'churn' => $churn });

$node->stop;
done_testing();
