# bench/dedup.sh: the tables the claim benchmarks compare (sourced after
# scripts/lib.sh and a psqlq function).

# The extension, and its hand-written equivalent: a table with the same
# columns, key and expiry index as idempotency.claims.
dedup_create() {
	psqlq <<'SQL'
CREATE EXTENSION idempotency;
CREATE TABLE dedup (LIKE idempotency.claims INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE dedup ADD PRIMARY KEY (scope, key);
CREATE INDEX ON dedup (expires_at);
SQL
}

# Keys 'r1' .. 'rN' claimed and completed with the response {"id": i}
# and status 200, and the same rows in dedup, both vacuumed: what replays
# read.
dedup_completed_keys() {
	psqlq <<SQL
TRUNCATE idempotency.claims, dedup;
DO \$\$
DECLARE t bigint;
BEGIN
	FOR i IN 1..$1 LOOP
		t := (idempotency.idem_claim('r' || i, '1 day')).token;
		PERFORM idempotency.idem_complete('r' || i, t, jsonb_build_object('id', i), 200);
	END LOOP;
END \$\$;
INSERT INTO dedup SELECT * FROM idempotency.claims;
VACUUM ANALYZE idempotency.claims, dedup;
SQL
}
