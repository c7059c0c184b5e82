#!/usr/bin/env bash
# bench/claims.sh: idem_claim against the hand-written dedup table it
# replaces, in one run on one cluster, with pgbench.
#
#   1. New keys: idem_claim(random key, '1 hour') against INSERT ... ON
#      CONFLICT DO NOTHING into a table with the same columns, key and
#      indexes.
#   2. Replays: idem_claim of a completed key against a plain primary-key
#      SELECT of the stored response and status.
#   3. If redis-server is installed: SET key val NX PX with appendonly and
#      appendfsync always, the durable Redis equivalent of a claim.
#
# idem_claim is called two ways.  "row": SELECT idem_claim(...), the call
# in a target list, its result one composite value.  "from": SELECT
# outcome, token (or outcome, response, status) FROM idem_claim(...), the
# form an application uses (README, "Calling it from an application");
# PostgreSQL runs a function in FROM through a function scan, which costs
# more to start than the call itself in a target list.
#
# Statements are prepared (QUERY_MODE, bench/pairs.sh), as drivers send
# them.  Each pair runs in alternating rounds (ROUNDS of SECONDS each,
# tables emptied before every new-key run); the median throughput of each
# side and the median of the rounds' ratios are reported (ratio > 1: ours
# is faster).  Both with synchronous_commit on (durable, what production
# runs) and off (CPU cost alone).
#
# Usage: bash bench/claims.sh [CLIENTS] [SECONDS] [ROUNDS]
# Defaults: 8 clients, 6 seconds, 5 rounds.  PARTS (default "new replays
# redis") picks which parts run.  Not run in CI.

source "$(dirname "$0")/../scripts/lib.sh"
IDEM_WORK=${IDEM_WORK:-/tmp/idempotency-bench-claims}
CLIENTS=${1:-8}
SECONDS_RUN=${2:-6}
ROUNDS=${3:-5}
REPLAY_KEYS=100000
PARTS=${PARTS:-new replays redis}
part() { [[ " $PARTS " == *" $1 "* ]]; }

idem_packages
idem_owner
idem_build
idem_start_cluster "max_connections = 50"

psqlq() { as_owner psql -X -q -v ON_ERROR_STOP=1 "$@"; }
source "$(dirname "$0")/pairs.sh"
source "$(dirname "$0")/dedup.sh"
dedup_create

script claim_row '\set r random(1, 1000000000)
SELECT idempotency.idem_claim(:r::text, '"'"'1 hour'"'"');'
script claim_from '\set r random(1, 1000000000)
SELECT outcome, token FROM idempotency.idem_claim(:r::text, '"'"'1 hour'"'"');'
script insert '\set r random(1, 1000000000)
INSERT INTO dedup (key, state, token, lease_until, expires_at)
VALUES (:r::text, '"'"'in_progress'"'"', 1, now() + interval '"'"'1 min'"'"', now() + interval '"'"'1 hour'"'"')
ON CONFLICT DO NOTHING;'
script replay_row "\\set r random(1, $REPLAY_KEYS)
SELECT idempotency.idem_claim('r' || :r, '1 hour');"
script replay_from "\\set r random(1, $REPLAY_KEYS)
SELECT outcome, response, status FROM idempotency.idem_claim('r' || :r, '1 hour');"
script select "\\set r random(1, $REPLAY_KEYS)
SELECT response, status FROM dedup WHERE scope = 'default' AND key = 'r' || :r;"

say "idempotency claims: $CLIENTS clients, $ROUNDS rounds of $SECONDS_RUN s per side, $QUERY_MODE statements"
reset_new="TRUNCATE idempotency.claims, dedup"
if part new; then
	for commit in on off; do
		pair "new keys: idem_claim (row) vs INSERT" claim_row insert "$commit" "$reset_new"
		pair "new keys: idem_claim (from) vs INSERT" claim_from insert "$commit" "$reset_new"
	done
fi

if part replays; then
	dedup_completed_keys "$REPLAY_KEYS"
	# The fixture's writes flushed now, not by a checkpoint under the rounds.
	psqlq -c CHECKPOINT
	for commit in on off; do
		pair "replays: idem_claim (row) vs PK SELECT" replay_row select "$commit" ""
		pair "replays: idem_claim (from) vs PK SELECT" replay_from select "$commit" ""
	done
fi

if ! part redis; then
	:
elif command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
	say "Redis, SET key val NX PX 3600000, appendonly yes, appendfsync always"
	redis_dir=$IDEM_WORK/redis
	as_owner mkdir -p "$redis_dir"
	as_owner redis-server --port 0 --unixsocket "$redis_dir/redis.sock" --dir "$redis_dir" \
		--appendonly yes --appendfsync always --save '' --daemonize yes \
		--pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
	for _ in $(seq 1 50); do [ -S "$redis_dir/redis.sock" ] && break; sleep 0.1; done
	as_owner redis-benchmark -s "$redis_dir/redis.sock" -c "$CLIENTS" -n 200000 -r 1000000000 -q \
		SET 'claim:__rand_int__' in_progress NX PX 3600000 | tr '\r' '\n' | grep -v '^$' | tail -n 1
	kill "$(cat "$redis_dir/redis.pid")"
else
	say "Redis: not installed (apt-get install redis-server to include it)"
fi
psqlq -At -c "SELECT 'server: ' || version()"
echo "machine: $(nproc) cores"
