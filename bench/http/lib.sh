# bench/http/lib.sh: shared by bench/http.sh and bench/http-crash.sh
# (sourced after scripts/lib.sh, with IDEM_WORK set).

psqlq() { as_owner psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# What the benchmarks need (PostgreSQL, Redis), the extension built and a
# cluster started, the schema, and the bench's npm packages (pg, redis) in
# the work copy.
http_setup() {
	idem_packages
	idem_apt_install redis-server
	idem_owner
	idem_build
	idem_start_cluster "max_connections = 100"
	psqlq -c 'CREATE EXTENSION IF NOT EXISTS idempotency'
	psqlq < "$(dirname "${BASH_SOURCE[0]}")/../orders.sql"
	HTTP_DIR=$IDEM_WORK/src/bench/http
	(cd "$HTTP_DIR" && as_owner env HOME="$IDEM_WORK" npm_config_cache="$IDEM_WORK/.npm" \
		npm ci --no-audit --no-fund --silent)
	trap 'http_cleanup; idem_exit $?' EXIT
}

# start_redis NAME FSYNC: a Redis on a socket in $IDEM_WORK/redis-NAME,
# with appendonly yes and appendfsync FSYNC ("no-aof": no append-only file).
start_redis() {
	local dir=$IDEM_WORK/redis-$1 aof=(--appendonly yes --appendfsync "$2")
	[ "$2" != no-aof ] || aof=(--appendonly no)
	as_owner mkdir -p "$dir"
	as_owner redis-server --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 \
		--dir "$dir" "${aof[@]}" --save '' --daemonize yes \
		--pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
	for _ in $(seq 1 100); do [ -S "$dir/redis.sock" ] && return; sleep 0.05; done
	echo "redis $1 did not start" >&2
	return 1
}

# start_app MODE PORT [REDIS_SOCKET]: bench/http/app.js in the background.
start_app() {
	local log=$IDEM_WORK/app-$2.log
	: >"$log"
	as_owner env NODE_PATH="$HTTP_DIR/node_modules" PGHOST="$PGHOST" PGPORT="$PGPORT" \
		PGUSER="$PGUSER" PGDATABASE="$PGDATABASE" \
		node "$HTTP_DIR/app.js" "$1" "$2" "${3:-}" >>"$log" 2>&1 &
	# The service's own pid (not runuser's), for kill -9.
	for _ in $(seq 1 200); do
		if grep -q "listening" "$log" 2>/dev/null; then
			sed -n 's/^listening .* pid \([0-9]*\)$/\1/p' "$log" | tail -n 1 >"$IDEM_WORK/app-$2.pid"
			return
		fi
		sleep 0.05
	done
	echo "app $1 on $2 did not start" >&2
	return 1
}

# run_load PORT CONNS SECONDS DUP PREFIX [KEYS_FILE]: one JSON line.
run_load() {
	as_owner node "$HTTP_DIR/load.js" --url "http://127.0.0.1:$1/orders" --conns "$2" \
		--seconds "$3" --dup "$4" --prefix "$5" ${6:+--keys "$6"}
}

jq_field() { node -e 'console.log(JSON.parse(process.argv[1])[process.argv[2]])' "$1" "$2"; }

http_cleanup() {
	local f
	for f in "$IDEM_WORK"/app-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
	for f in "$IDEM_WORK"/redis-*/redis.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
	return 0
}
