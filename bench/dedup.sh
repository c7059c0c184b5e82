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
# read.  dedup's rows are written as the claims' are, inserted in progress
# and then updated to completed, as a hand-written table's would be: both
# heaps then hold the same versions, and pages, where a copy of the final
# rows would pack dedup into about half as many.
dedup_completed_keys() {
	psqlq <<SQL
TRUNCATE idempotency.claims, dedup;
DO \$\$
DECLARE t bigint;
BEGIN
	FOR i IN 1..$1 LOOP
		t := (idempotency.idem_claim('r' || i, '1 day')).token;
		INSERT INTO dedup SELECT * FROM idempotency.claims WHERE scope = 'default' AND key = 'r' || i;
		PERFORM idempotency.idem_complete('r' || i, t, jsonb_build_object('id', i), 200);
		UPDATE dedup d SET state = c.state, lease_until = c.lease_until, response = c.response,
			status = c.status, body = c.body, content_type = c.content_type, headers = c.headers
		FROM idempotency.claims c
		WHERE c.scope = 'default' AND c.key = 'r' || i AND d.scope = 'default' AND d.key = 'r' || i;
	END LOOP;
END \$\$;
VACUUM ANALYZE idempotency.claims, dedup;
SQL
}
