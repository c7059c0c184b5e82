#!/usr/bin/env bash
# bench/sharded.sh: what the PL/Proxy router costs, in one run on one
# cluster, with pgbench (prepared statements): the same clients claiming
# new keys (idem_claim), and placing orders through a business function
# that claims, orders and completes in one transaction (place_order),
#
#   direct    on one shard's database, as an application talks to one server
#   router    through a router database with idempotency_router, over two
#             shard databases (the keys spread by idem_shard)
#   router-1  through a router with one shard: the hop alone
#
# The router and the shards are databases of the one server (this machine
# has 2 cores): what is measured is the cost of the hop, the router's
# backend, PL/Proxy's call and the shard's second backend, not a speed-up,
# which needs the shards on machines of their own.  Alternating rounds,
# medians, ratios (router / direct: above 1, the router is faster).
#
# Usage: bash bench/sharded.sh [CLIENTS] [SECONDS] [ROUNDS]
# Defaults: 8 clients, 10 seconds, 3 rounds.  Not run in CI.  Needs
# PL/Proxy (postgresql-15-plproxy, installed here for PostgreSQL 15).

source "$(dirname "$0")/../scripts/lib.sh"
IDEM_WORK=${IDEM_WORK:-/tmp/idempotency-bench-sharded}
CLIENTS=${1:-8}
SECONDS_RUN=${2:-10}
ROUNDS=${3:-3}
QUERY_MODE=prepared

idem_packages tests
idem_owner
idem_build
idem_start_cluster "max_connections = 100"

psqlq() { as_owner env PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$@"; }
source "$(dirname "$0")/pairs.sh"

orders=$(sed -n '/^our $SHARD_ORDERS = q{$/,/^};$/p' "$IDEM_SRC/t/IdempotencyTest.pm" | sed '1d;$d')
router_orders=$(sed -n '/^our $ROUTER_ORDERS = q{$/,/^};$/p' "$IDEM_SRC/t/IdempotencyTest.pm" | sed '1d;$d')
for db in shard0 shard1; do
	psqlq -d postgres -c "CREATE DATABASE $db"
	printf 'CREATE EXTENSION idempotency;\n%s\n' "$orders" | psqlq -d "$db"
done
part() { printf "p%d 'host=%s port=%s dbname=shard%d'" "$1" "$IDEM_WORK/sock" "$IDEM_PORT" "$1"; }
for r in router:"$(part 0), $(part 1)" router1:"$(part 0)"; do
	db=${r%%:*}
	psqlq -d postgres -c "CREATE DATABASE $db"
	psqlq -d "$db" <<SQL
CREATE EXTENSION idempotency_router CASCADE;
CREATE SERVER idempotency FOREIGN DATA WRAPPER plproxy OPTIONS (${r#*:});
CREATE USER MAPPING FOR PUBLIC SERVER idempotency OPTIONS (user '$IDEM_USER');
$router_orders
SQL
done

claim='\set r random(1, 1000000000)
SELECT outcome FROM idempotency.idem_claim(:client_id || '"'"'-'"'"' || :r, '"'"'1 hour'"'"');'
order='\set r random(1, 1000000000)
SELECT outcome FROM place_order(:client_id || '"'"'-'"'"' || :r, 1);'
declare -A DB_OF=()
for side in direct router router-1; do
	db=shard0
	[ "$side" = direct ] || db=${side/-/}
	script "claim-$side" "$claim"
	script "order-$side" "$order"
	DB_OF[claim-$side]=$db DB_OF[order-$side]=$db
done

say "router against one shard: $CLIENTS clients, $ROUNDS rounds of $SECONDS_RUN s per side, $QUERY_MODE statements"
# synchronous_commit on only: PL/Proxy's connections to the shards do not
# take the client's setting, so "off" would compare unlike commits.
pair "claims, new keys, 2 shards" claim-router claim-direct on ""
pair "claims, new keys, 1 shard (the hop)" claim-router-1 claim-direct on ""
pair "place_order, new keys, 2 shards" order-router order-direct on ""
pair "place_order, new keys, 1 shard (the hop)" order-router-1 order-direct on ""
psqlq -At -d postgres -c "SELECT 'server: ' || version()"
echo "machine: $(nproc) cores"
