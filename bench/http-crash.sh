#!/usr/bin/env bash
# bench/http-crash.sh: what each design does when a process is killed with
# SIGKILL in the middle of a run of bench/http/load.js (16 connections,
# 30% of requests repeating a key), after which every key sent is sent
# again until it gets an answer, as clients retry.  Then, per key: how
# many orders exist.  More than one is a customer charged twice.
#
#   ext, app killed              the Node service on this extension, killed
#                                twice and restarted
#   ext, PostgreSQL killed       pg_ctl stop -m immediate, then started again
#   ext-mux, ...                 the same with serve() and multiplex: 4 (the
#                                statements of many requests in flight on
#                                each connection when it is lost)
#   ext-batch, ...               the same with multiplex: 4 and batch: 32 (up
#                                to 32 requests in each transaction lost)
#   redis-always, Redis killed   Redis (appendfsync always) killed and
#                                restarted: it reloads its append-only file
#   redis-always, app killed     the service killed twice, some requests
#                                between the order's commit and the answer's
#                                write to Redis
#   redis-no-aof, Redis killed   Redis without an append-only file
#
# Usage: bash bench/http-crash.sh [SECONDS]   (default 12).  Not run in CI.

source "$(dirname "$0")/../scripts/lib.sh"
IDEM_WORK=${IDEM_WORK:-/tmp/idempotency-bench-http-crash}
SECONDS_RUN=${1:-12}

source "$(dirname "$0")/http/lib.sh"
http_setup

kill_app() {
	local port=$1 mode=$2 sock=${3:-}
	kill -9 "$(cat "$IDEM_WORK/app-$port.pid")" 2>/dev/null || true
	sleep 0.5
	start_app "$mode" "$port" "$sock"
}

kill_redis() {
	local name=$1 fsync=$2
	kill -9 "$(cat "$IDEM_WORK/redis-$name/redis.pid")" 2>/dev/null || true
	rm -f "$IDEM_WORK/redis-$name/redis.sock"
	sleep 0.5
	start_redis "$name" "$fsync"
}

kill_postgres() {
	as_owner "$PG_BIN/pg_ctl" -D "$IDEM_WORK/data" -m immediate -w stop >/dev/null
	sleep 0.5
	as_owner "$PG_BIN/pg_ctl" -D "$IDEM_WORK/data" -l "$IDEM_WORK/postgres.log" -w start >/dev/null
}

# scenario NAME PORT MODE REDIS_SOCKET KILL...: a run with the kills at a
# third and two thirds of it, the retry pass, and the audit.
scenario() {
	local name=$1 port=$2 prefix=crash$RANDOM-$2 keys=$IDEM_WORK/keys-$2-$RANDOM
	shift 2
	local kill=("$@")
	run_load "$port" 16 "$SECONDS_RUN" 0.3 "$prefix" "$keys" >"$IDEM_WORK/run.json" &
	local load=$!
	sleep "$(awk -v s="$SECONDS_RUN" 'BEGIN {print s / 3}')"
	"${kill[@]}"
	sleep "$(awk -v s="$SECONDS_RUN" 'BEGIN {print s / 3}')"
	"${kill[@]}"
	wait "$load"
	local sent answered retried
	sent=$(wc -l <"$keys")
	answered=$(awk '$2 >= 200 && $2 < 300' "$keys" | wc -l)
	retried=$(as_owner node "$HTTP_DIR/load.js" --url "http://127.0.0.1:$port/orders" --conns 16 --retry "$keys")
	psqlq -At -v prefix="$prefix-%" -v name="$name" -v sent="$sent" -v answered="$answered" <<'SQL'
SELECT format('  %-30s keys %s (2xx during the run %s), ordered twice or more: %s, never ordered: %s',
	:'name', :'sent', :'answered',
	count(*) FILTER (WHERE n > 1), :'sent'::int - count(*))
FROM (SELECT key, count(*) AS n FROM orders WHERE key LIKE :'prefix' GROUP BY key) k;
SQL
	echo "    retry pass: $retried"
}

start_redis always always
start_redis no-aof no-aof
start_app ext 18081
start_app ext-mux 18086
start_app ext-batch 18087
start_app redis 18082 "$IDEM_WORK/redis-always/redis.sock"
start_app redis 18084 "$IDEM_WORK/redis-no-aof/redis.sock"

say "SIGKILL in the middle of $SECONDS_RUN s runs, then every key sent again"
scenario "ext, app killed" 18081 kill_app 18081 ext
scenario "ext, PostgreSQL killed" 18081 kill_postgres
scenario "ext-mux, app killed" 18086 kill_app 18086 ext-mux
scenario "ext-mux, PostgreSQL killed" 18086 kill_postgres
scenario "ext-batch, app killed" 18087 kill_app 18087 ext-batch
scenario "ext-batch, PostgreSQL killed" 18087 kill_postgres
scenario "redis-always, Redis killed" 18082 kill_redis always always
scenario "redis-always, app killed" 18082 kill_app 18082 redis "$IDEM_WORK/redis-always/redis.sock"
scenario "redis-no-aof, Redis killed" 18084 kill_redis no-aof no-aof
