/* idempotency_router--1.1.0.sql */

\echo Use "CREATE EXTENSION idempotency_router CASCADE" to load this file. \quit

-- The router side of a sharded idempotency store (README "Scaling out",
-- doc/scaling-out.md).  A router database holds no claims: each function
-- here has the name, arguments and result of the idempotency extension's,
-- and PL/Proxy runs that function on one shard, an ordinary server with
-- the extension.  The shard is chosen by idem_shard(scope, key), for a
-- lease by idem_shard(scope, name): the same key always reaches the same
-- shard, where its claim, its business writes (routed the same way) and
-- its answer commit together.
--
-- The cluster is PL/Proxy's, named idempotency: a foreign server of the
-- plproxy wrapper whose options p0, p1, ... are the shards' connection
-- strings (a power of two of them), with user mappings for the roles that
-- call these functions.  Each call runs in its own transaction on the
-- shard (PL/Proxy's autocommit): a claim and its completion are two
-- calls, as with a client that claims and completes in separate
-- transactions; work that must commit with the claim goes into a
-- function on the shards, routed by the same key.

-- The schema is the extension's own, as for the idempotency extension:
-- created here, or empty and owned by the installing role.
DO $schema$
DECLARE
	nsp pg_catalog.pg_namespace;
BEGIN
	SELECT * INTO STRICT nsp FROM pg_catalog.pg_namespace n
	WHERE n.nspname OPERATOR(pg_catalog.=) 'idempotency';
	IF NOT (SELECT r.rolsuper OR r.rolname OPERATOR(pg_catalog.=) CURRENT_USER
			FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) nsp.nspowner)
		OR EXISTS (SELECT FROM pg_catalog.aclexplode(nsp.nspacl) a
			LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
			WHERE a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
			AND a.grantee OPERATOR(pg_catalog.<>) nsp.nspowner AND r.rolsuper IS NOT TRUE)
		OR EXISTS (SELECT FROM pg_catalog.pg_depend d
			WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
			AND d.refobjid OPERATOR(pg_catalog.=) nsp.oid
			AND d.classid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_extension'::pg_catalog.regclass) THEN
		RAISE EXCEPTION 'schema "idempotency" is not one the router may be installed into'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'It must be new, or empty, owned by the installing role (or a superuser), with no other role allowed to create in it.',
				  HINT = 'Drop the schema (or rename it) and run CREATE EXTENSION idempotency_router again.';
	END IF;
END
$schema$;

-- Keys are hashed as UTF-8 (idem_shard): in a database of another
-- encoding a key would be converted first, lossily for some, and two
-- routers would send one key to two shards.
DO $encoding$
BEGIN
	IF pg_catalog.getdatabaseencoding() OPERATOR(pg_catalog.<>) 'UTF8' THEN
		RAISE EXCEPTION 'the router database must be UTF8, not %', pg_catalog.getdatabaseencoding()
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Keys are hashed to shards as UTF-8; a key converted from another encoding could reach another shard than from a UTF8 router.',
				  HINT = 'Create the router database with ENCODING ''UTF8'' (and the shards'' too).';
	END IF;
END
$encoding$;

-- PL/Proxy looks a cluster up as a foreign server first and, when there is
-- none, calls plproxy.get_cluster_version() and its kin, whoever created
-- them, as the calling role.  The schema plproxy is therefore taken here:
-- created empty, the installing role's, with no right for anyone else
-- (whatever default privileges say), or refused if it exists.
DO $plproxy$
DECLARE
	a record;
BEGIN
	IF EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) 'plproxy') THEN
		RAISE EXCEPTION 'schema "plproxy" exists'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'PL/Proxy runs the cluster functions of that schema, as the caller, for every call of the router whose cluster has no foreign server; the router takes the schema, empty, for itself.',
				  HINT = 'Check what the schema holds and who made it, drop it, and run CREATE EXTENSION again.';
	END IF;
	CREATE SCHEMA plproxy;
	COMMENT ON SCHEMA plproxy IS
		'held by idempotency_router so that no other role can define PL/Proxy''s cluster functions';
	FOR a IN SELECT DISTINCT x.grantee FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) x
		WHERE n.nspname OPERATOR(pg_catalog.=) 'plproxy' AND x.grantee OPERATOR(pg_catalog.<>) n.nspowner
	LOOP
		IF a.grantee OPERATOR(pg_catalog.=) 0 THEN
			REVOKE ALL ON SCHEMA plproxy FROM PUBLIC;
		ELSE
			EXECUTE pg_catalog.format('REVOKE ALL ON SCHEMA plproxy FROM %I', pg_catalog.pg_get_userbyid(a.grantee));
		END IF;
	END LOOP;
END
$plproxy$;

GRANT USAGE ON SCHEMA idempotency TO PUBLIC;

DO $roles$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) 'idempotency_user') THEN
		CREATE ROLE idempotency_user NOLOGIN;
		COMMENT ON ROLE idempotency_user IS
			'may call the claim, lock, lease and token functions of the idempotency extension';
	END IF;
END
$roles$;

-- The shards' result types, by the same names.
CREATE TYPE idempotency.idem_outcome AS ENUM
	('claimed', 'completed', 'in_progress', 'mismatch', 'reclaimed');
CREATE TYPE idempotency.idem_claim_result AS (
	outcome idempotency.idem_outcome,
	token bigint,
	response jsonb,
	status int,
	recovery_point text,
	attempts int,
	expires_at timestamptz,
	body bytea,
	content_type text,
	headers jsonb
);

-- The shard's hash of a key in a scope: the first four bytes of the
-- SHA-256 of the scope, a zero byte and the key, in UTF-8, as a signed
-- integer.  PL/Proxy takes it modulo the number of shards (the low bits).
-- Written out in SQL so that it is the same on every router, whatever
-- PostgreSQL's own hash functions do in a later release.
CREATE FUNCTION idempotency.idem_shard(scope pg_catalog.text, key pg_catalog.text)
RETURNS pg_catalog.int4
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN (('x' OPERATOR(pg_catalog.||) pg_catalog.encode(pg_catalog.substr(pg_catalog.sha256(
		pg_catalog.convert_to(scope, 'UTF8') OPERATOR(pg_catalog.||) '\x00'::pg_catalog.bytea
		OPERATOR(pg_catalog.||) pg_catalog.convert_to(key, 'UTF8')), 1, 4), 'hex'))::pg_catalog.bit(32))::pg_catalog.int4;
COMMENT ON FUNCTION idempotency.idem_shard(pg_catalog.text, pg_catalog.text) IS
	'the hash that routes a key of a scope (or a lease name) to its shard';

-- Claims: each call on the key's shard.
CREATE FUNCTION idempotency.idem_claim(
	key text,
	ttl interval DEFAULT NULL,
	fingerprint bytea DEFAULT NULL,
	scope text DEFAULT 'default',
	lease interval DEFAULT NULL,
	wait boolean DEFAULT true,
	wait_for interval DEFAULT NULL)
RETURNS idempotency.idem_claim_result
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON idempotency.idem_shard(scope, key);
$$;

CREATE FUNCTION idempotency.idem_complete(
	key text, token bigint, response jsonb DEFAULT NULL, status int DEFAULT NULL,
	scope text DEFAULT 'default',
	body bytea DEFAULT NULL, content_type text DEFAULT NULL, headers jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON idempotency.idem_shard(scope, key);
$$;

CREATE FUNCTION idempotency.idem_fail(
	key text, token bigint, retryable boolean,
	response jsonb DEFAULT NULL, status int DEFAULT NULL, scope text DEFAULT 'default',
	body bytea DEFAULT NULL, content_type text DEFAULT NULL, headers jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON idempotency.idem_shard(scope, key);
$$;

CREATE FUNCTION idempotency.idem_checkpoint(
	key text, token bigint, recovery_point text, scope text DEFAULT 'default')
RETURNS boolean
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON idempotency.idem_shard(scope, key);
$$;

CREATE FUNCTION idempotency.idem_extend(
	key text, token bigint, lease interval, scope text DEFAULT 'default')
RETURNS timestamptz
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON idempotency.idem_shard(scope, key);
$$;

CREATE FUNCTION idempotency.idem_release(key text, token bigint, scope text DEFAULT 'default')
RETURNS boolean
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON idempotency.idem_shard(scope, key);
$$;

-- Leases: on the shard of their name.
CREATE FUNCTION idempotency.idem_lease_acquire(name text, holder text,
	ttl interval, scope text DEFAULT 'default')
RETURNS bigint
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON idempotency.idem_shard(scope, name);
$$;

CREATE FUNCTION idempotency.idem_lease_renew(name text, token bigint,
	ttl interval, scope text DEFAULT 'default')
RETURNS boolean
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON idempotency.idem_shard(scope, name);
$$;

CREATE FUNCTION idempotency.idem_lease_release(name text, token bigint,
	scope text DEFAULT 'default')
RETURNS boolean
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON idempotency.idem_shard(scope, name);
$$;

CREATE FUNCTION idempotency.idem_lease_check(name text, token bigint,
	scope text DEFAULT 'default')
RETURNS boolean
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON idempotency.idem_shard(scope, name);
$$;

-- One-time tokens: issued by any shard; a token is stored, by digest, only
-- on the shard that issued it, so a consumption asks every shard (in
-- parallel) and at most one can say yes.  That holds whatever the number
-- of shards, before and after shards are added.  Each shard commits its
-- own answer: a consumption that fails because another shard did (down,
-- say) may have used the token up on its own shard, and the retry says
-- false.  A token is never consumed twice.
CREATE FUNCTION idempotency.idem_token_issue(scope text DEFAULT 'default', ttl interval DEFAULT NULL)
RETURNS text
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON ANY;
$$;

CREATE FUNCTION idempotency.idem_token_consume_on_all(token text, scope text)
RETURNS SETOF boolean
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON ALL;
	TARGET idempotency.idem_token_consume;
$$;

CREATE FUNCTION idempotency.idem_token_consume(token text, scope text DEFAULT 'default')
RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
RETURN (SELECT COALESCE(pg_catalog.bool_or(c), false)
	FROM idempotency.idem_token_consume_on_all(token, scope) c);

-- IDs: from any shard, as bigint (the router has no snowflake type).
CREATE FUNCTION idempotency.snowflake_id()
RETURNS bigint
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON ANY;
	SELECT idempotency.snowflake_id()::bigint AS snowflake_id;
$$;

-- Every shard's node id and how it was set, with what is wrong: a node id
-- left at its default, one that another shard also has, or a shard whose
-- server does not preload the library (no IDs, no counters).  No row with
-- a problem: IDs made anywhere in the cluster are unique.
CREATE FUNCTION idempotency.idem_shard_nodes(OUT node_id int, OUT node_id_source text,
	OUT preloaded boolean, OUT server text)
RETURNS SETOF record
LANGUAGE plproxy AS $$
	CLUSTER 'idempotency';
	RUN ON ALL;
	SELECT s.setting::int AS node_id, s.source AS node_id_source,
		idempotency.idem_preloaded() AS preloaded,
		pg_catalog.format('%s:%s/%s', coalesce(pg_catalog.host(pg_catalog.inet_server_addr()), 'local'),
			pg_catalog.current_setting('port'), pg_catalog.current_database()) AS server
	FROM pg_catalog.pg_settings s WHERE s.name OPERATOR(pg_catalog.=) 'idempotency.node_id';
$$;

CREATE FUNCTION idempotency.idem_cluster_check(OUT node_id int, OUT server text, OUT problem text)
RETURNS SETOF record
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT n.node_id, n.server,
		CASE
			WHEN NOT n.preloaded THEN 'the server does not preload the idempotency library'
			WHEN n.node_id_source OPERATOR(pg_catalog.=) 'default' THEN 'idempotency.node_id is not set: every shard needs its own'
			WHEN pg_catalog.count(*) OVER (PARTITION BY n.node_id) OPERATOR(pg_catalog.>) 1 THEN
				'node id ' OPERATOR(pg_catalog.||) n.node_id OPERATOR(pg_catalog.||) ' is also another shard''s'
		END
	FROM idempotency.idem_shard_nodes() n
	ORDER BY n.node_id, n.server;
END;
COMMENT ON FUNCTION idempotency.idem_cluster_check() IS
	'one row per shard: its node id, where it is, and what is wrong (NULL when nothing): IDs are unique across the cluster when no row has a problem';

-- Rights: as on the shards, for idempotency_user alone (whatever default
-- privileges gave); the shards check them again for the role each user
-- mapping names.
DO $grants$
DECLARE
	f regprocedure;
	a record;
BEGIN
	FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
		WHERE p.pronamespace OPERATOR(pg_catalog.=) 'idempotency'::regnamespace
		AND p.proname OPERATOR(pg_catalog.<>) 'idem_shard'
	LOOP
		EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
		FOR a IN SELECT DISTINCT x.grantee FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) x
			WHERE p.oid OPERATOR(pg_catalog.=) f AND x.grantee OPERATOR(pg_catalog.<>) p.proowner
			AND x.grantee OPERATOR(pg_catalog.<>) 0
		LOOP
			EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %I', f, pg_catalog.pg_get_userbyid(a.grantee));
		END LOOP;
		EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO idempotency_user', f);
	END LOOP;
END
$grants$;
