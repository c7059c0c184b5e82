#!/usr/bin/env bash
# bench/http.sh: end to end over HTTP, in one run on one machine, the same
# Node service made idempotent two ways (bench/http/app.js):
#
#   ext             clients/node (pg-idempotency): claim, order and stored
#                   answer in one PostgreSQL transaction
#   redis-always    the Redis + PostgreSQL design: SET key NX PX, the order
#                   in PostgreSQL, the answer stored in Redis; Redis with
#                   appendonly yes and appendfsync always
#   redis-everysec  the same with appendfsync everysec
#   ext-sql         the order written as a SQL function and served by
#                   clients/node's serve(): idem_serve claims, runs it and
#                   stores the answer in one statement per request
#   ext-mux         the same with serve()'s multiplex: 4: the statements of
#                   concurrent requests pipelined on 4 shared connections
#   ext-batch       the same with multiplex: 4 and batch: 32: the requests
#                   that wait for a shared connection sent together, in one
#                   statement and one transaction (group commit)
#   ext-fn          the claim, the order and the completion hand-written in
#                   one PL/pgSQL function, called in one statement: what a
#                   request costs here without the client's generality
#
# bench/http/load.js sends POST /orders from CONNS keep-alive connections
# for SECONDS, DUP of the requests repeating a key already sent (a
# client's retry).  Two mixes: half duplicates, and first-time requests
# only.  Rounds alternate the services; the medians of requests per
# second, p50 and p99 are printed with the ratio of ext to each Redis
# design, and the ratio to Redis "always" within each round (the rounds'
# services run back to back, so these move less with the machine).  After the runs, every key's order must exist at most once.
#
# Usage: bash bench/http.sh [CONNS] [SECONDS] [ROUNDS]
# Defaults: 32 connections, 8 seconds, 3 rounds.  Not run in CI.
# bench/http-crash.sh kills Redis and the service in the middle of a run.

source "$(dirname "$0")/../scripts/lib.sh"
IDEM_WORK=${IDEM_WORK:-/tmp/idempotency-bench-http}
CONNS=${1:-32}
SECONDS_RUN=${2:-8}
ROUNDS=${3:-3}

source "$(dirname "$0")/http/lib.sh"
http_setup
start_redis always always
start_redis everysec everysec
start_app ext 18081
start_app ext-sql 18084
start_app ext-mux 18086
start_app ext-batch 18087
start_app ext-fn 18085
start_app redis 18082 "$IDEM_WORK/redis-always/redis.sock"
start_app redis 18083 "$IDEM_WORK/redis-everysec/redis.sock"
declare -A ports=([ext]=18081 [ext-sql]=18084 [ext-mux]=18086 [ext-batch]=18087 [ext-fn]=18085 [redis-always]=18082 [redis-everysec]=18083)
services=(ext ext-sql ext-mux ext-batch ext-fn redis-always redis-everysec)

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

say "HTTP: $CONNS connections, $ROUNDS rounds of $SECONDS_RUN s per service"
for dup in 0.5 0; do
	declare -A rps=() p50=() p99=()
	for r in $(seq 1 "$ROUNDS"); do
		for s in "${services[@]}"; do
			out=$(run_load "${ports[$s]}" "$CONNS" "$SECONDS_RUN" "$dup" "$s-$dup-$r")
			rps[$s]+="$(jq_field "$out" rps) " p50[$s]+="$(jq_field "$out" p50) " p99[$s]+="$(jq_field "$out" p99) "
			printf '.'
		done
	done
	printf '\r'
	[ "$dup" = 0 ] && echo "  first-time requests only" || echo "  half the requests repeat a key"
	for s in "${services[@]}"; do
		m=$(tr ' ' '\n' <<<"${rps[$s]}" | grep . | median)
		a=$(tr ' ' '\n' <<<"${p50[$s]}" | grep . | median)
		b=$(tr ' ' '\n' <<<"${p99[$s]}" | grep . | median)
		printf '    %-16s %8.0f req/s   p50 %6.1f ms   p99 %6.1f ms\n' "$s" "$m" "$a" "$b"
		declare "med_${s//-/_}=$m"
	done
	awk -v e="$med_ext" -v q="$med_ext_sql" -v m="$med_ext_mux" -v b="$med_ext_batch" -v f="$med_ext_fn" -v a="$med_redis_always" -v v="$med_redis_everysec" 'BEGIN {
		printf "    ext / redis-always %.3f   ext / redis-everysec %.3f\n", e / a, e / v
		printf "    ext-sql / redis-always %.3f   ext-sql / redis-everysec %.3f\n", q / a, q / v
		printf "    ext-mux / redis-always %.3f   ext-mux / redis-everysec %.3f\n", m / a, m / v
		printf "    ext-batch / redis-always %.3f   ext-batch / redis-everysec %.3f\n", b / a, b / v
		printf "    ext-fn / redis-always %.3f   ext-fn / redis-everysec %.3f\n", f / a, f / v }'
	# The machine's speed drifts between rounds; a round's services ran
	# back to back, so the ratio within each round is steadier.
	for s in ext ext-sql ext-mux ext-batch; do
		paste -d' ' <(tr ' ' '\n' <<<"${rps[$s]}" | grep .) <(tr ' ' '\n' <<<"${rps[redis-always]}" | grep .) |
			awk -v s="$s" '{ r = $1 / $2; line = line sprintf(" %.3f", r)
					for (i = NR; i > 1 && v[i - 1] > r; i--) v[i] = v[i - 1]
					v[i] = r }
				END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
					printf "    %s / redis-always by round:%s (median %.3f)\n", s, line, m }'
	done
done

say "effects"
psqlq -At -c "SELECT 'orders: ' || count(*) || ', keys ordered more than once: ' ||
	(SELECT count(*) FROM (SELECT key FROM orders GROUP BY key HAVING count(*) > 1) d) FROM orders"
psqlq -At -c "SELECT 'server: ' || version()"
echo "machine: $(nproc) cores, node $(node --version), $(redis-server --version | cut -d' ' -f1-3)"
