# t/IdempotencyTest.pm: what the TAP tests share.
package IdempotencyTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use Test::More;

our @EXPORT = qw(preloaded_node check_claims_kept $SHARD_ORDERS $ROUTER_ORDERS);

# A new cluster with idempotency in shared_preload_libraries, the given
# lines appended to postgresql.conf, started, and the extension created in
# the postgres database.  init_args go to PostgreSQL::Test::Cluster->init.
sub preloaded_node
{
	my ($name, $conf, %init_args) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init(%init_args);
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'idempotency'\n" . ($conf // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION idempotency');
	return $node;
}

# Claims made before a move (a dump and restore, an update), checked in
# database $db after it ($after names the move): 'done', completed with
# {"paid": 10} and status 201 under the fingerprint of {"amount": 10}, and
# 'live', in progress under $live_token.
sub check_claims_kept
{
	my ($node, $db, $live_token, $after) = @_;

	is($node->safe_psql($db, q{
		SELECT outcome || ' ' || response::text || ' ' || status
		FROM idempotency.idem_claim('done', '1 day', idempotency.idem_fingerprint('{"amount": 10.0}'))}),
		'completed {"paid": 10} 201', "a completed claim replays its stored response after $after");
	is($node->safe_psql($db, q{
		SELECT outcome FROM idempotency.idem_claim('done', '1 day', idempotency.idem_fingerprint('{"amount": 11}'))}),
		'mismatch', 'and a changed payload is a mismatch');
	is($node->safe_psql($db, q{
		SELECT outcome FROM idempotency.idem_claim('live', '1 day', wait => false)}),
		'in_progress', 'a claim in progress is still in progress');
	is($node->safe_psql($db, qq{
		SELECT idempotency.idem_complete('live', $live_token, '{"ok": true}', 200)}),
		't', 'and its owner completes it with the token it had');
	return;
}

# A shard's business function for the router tests: claims the key in the
# scope orders, orders and completes, in one transaction.  Its twin on
# the router, $ROUTER_ORDERS, sends it to the key's shard.
our $SHARD_ORDERS = q{
	CREATE TABLE orders (id bigint PRIMARY KEY DEFAULT idempotency.snowflake_id()::bigint,
		key text NOT NULL, amount int NOT NULL);
	CREATE FUNCTION place_order(k text, amount int, OUT outcome text, OUT response jsonb)
	LANGUAGE plpgsql AS $$
	DECLARE
		c idempotency.idem_claim_result := idempotency.idem_claim(k, scope => 'orders');
		id bigint;
	BEGIN
		outcome := c.outcome;
		IF c.outcome IN ('claimed', 'reclaimed') THEN
			INSERT INTO orders (key, amount) VALUES (k, amount) RETURNING orders.id INTO id;
			response := jsonb_build_object('id', id::text);
			PERFORM idempotency.idem_complete(k, c.token, response, 201, 'orders');
		ELSE
			response := c.response;
		END IF;
	END $$;
};
our $ROUTER_ORDERS = q{
	CREATE FUNCTION place_order(k text, amount int, OUT outcome text, OUT response jsonb)
	LANGUAGE plproxy AS $$
		CLUSTER 'idempotency';
		RUN ON idempotency.idem_shard('orders', k);
	$$;
};

1;
