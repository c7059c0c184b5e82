# bench/pairs.sh: shared by the pgbench benchmarks (sourced after
# scripts/lib.sh).  Needs IDEM_WORK, CLIENTS, SECONDS_RUN, ROUNDS and a
# psqlq function.  QUERY_MODE is pgbench's -M: prepared (the default: the
# extended protocol with prepared statements, as drivers such as pgx,
# node-postgres and psycopg run them) or simple (each statement parsed and
# planned anew).
QUERY_MODE=${QUERY_MODE:-prepared}

# Write a pgbench script $IDEM_WORK/$1.sql with the text $2.
script() { printf '%s\n' "$2" | as_owner tee "$IDEM_WORK/$1.sql" >/dev/null; }

# tps of one pgbench run of script $1 with synchronous_commit $2, in the
# database DB_OF[$1] (an associative array a benchmark may declare), or
# postgres.
tps() {
	local db=postgres
	if declare -p DB_OF >/dev/null 2>&1 && [ -n "${DB_OF[$1]:-}" ]; then db=${DB_OF[$1]}; fi
	as_owner env PGOPTIONS="-c synchronous_commit=$2" pgbench -n -M "$QUERY_MODE" -c "$CLIENTS" \
		-j "$CLIENTS" -T "$SECONDS_RUN" -f "$IDEM_WORK/$1.sql" "$db" 2>&1 |
		sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# pair LABEL OURS THEIRS COMMIT [RESET]: alternate two scripts for ROUNDS
# rounds, running the SQL RESET before each run; print the median
# throughput of each side and the median of the rounds' ratios (each
# round's two runs are back to back, so a ratio is the steadier figure on
# a machine whose speed drifts).
pair() {
	local label=$1 ours=$2 theirs=$3 commit=$4 reset=$5 a=() b=() q=() r x y
	for r in $(seq 1 "$ROUNDS"); do
		[ -z "$reset" ] || printf '%s\n' "$reset" | psqlq
		x=$(tps "$ours" "$commit")
		[ -z "$reset" ] || printf '%s\n' "$reset" | psqlq
		y=$(tps "$theirs" "$commit")
		a+=("$x") b+=("$y")
		q+=("$(awk -v x="$x" -v y="$y" 'BEGIN { print x / y }')")
		printf '.'
	done
	printf '\r'
	local ma mb mq
	ma=$(printf '%s\n' "${a[@]}" | median)
	mb=$(printf '%s\n' "${b[@]}" | median)
	mq=$(printf '%s\n' "${q[@]}" | median)
	awk -v l="$label" -v c="$commit" -v a="$ma" -v b="$mb" -v q="$mq" -v o="$ours" -v t="$theirs" 'BEGIN {
		printf "  %-44s sync_commit=%-3s %-10s %7.0f tps  %-8s %7.0f tps  ratio %.3f\n", l, c, o, a, t, b, q
	}'
}
