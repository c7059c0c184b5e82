/* idempotency--1.1.0.sql */

\echo Use "CREATE EXTENSION idempotency" to load this file. \quit

-- How this script stays safe to run as a superuser: every function and
-- operator it calls, and every one it binds into a constraint, a default,
-- an operator or an operator class, is named with its schema, and it
-- generates no DDL (no EXECUTE of built strings): what it creates is
-- written out below.  Function bodies are resolved when called, under the
-- search_path each function pins.

--------------------------------------------------------------------------
-- Schema and roles
--
-- The schema is created by CREATE EXTENSION (control file: schema), owned
-- by the installing role.  If it existed before, whoever could create
-- objects in it could have planted functions or operators that this
-- script, run as a superuser, would pick up, so a schema that a role
-- other than the installing one or a superuser owns (a restored dump
-- hands it to its first installer), that grants CREATE to such a role, or
-- that holds anything already is refused before anything else runs.
--------------------------------------------------------------------------

DO $schema$
DECLARE
	nsp pg_catalog.pg_namespace;
BEGIN
	SELECT * INTO STRICT nsp FROM pg_catalog.pg_namespace n
	WHERE n.nspname OPERATOR(pg_catalog.=) 'idempotency';
	IF NOT (SELECT r.rolsuper OR r.rolname OPERATOR(pg_catalog.=) CURRENT_USER
			FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) nsp.nspowner) THEN
		RAISE EXCEPTION 'schema "idempotency" is owned by role "%", which is neither the installing role nor a superuser',
				pg_catalog.pg_get_userbyid(nsp.nspowner)
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'CREATE EXTENSION idempotency runs as a superuser, and would use objects another role could have put into that schema.',
				  HINT = 'Drop the schema (or rename it) and run CREATE EXTENSION again, or have a superuser take it over with ALTER SCHEMA idempotency OWNER TO its installing role after checking its contents.';
	END IF;
	IF EXISTS (SELECT FROM pg_catalog.aclexplode(nsp.nspacl) a
			LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
			WHERE a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
			AND a.grantee OPERATOR(pg_catalog.<>) nsp.nspowner
			AND r.rolsuper IS NOT TRUE) THEN
		RAISE EXCEPTION 'schema "idempotency" lets roles other than its owner create objects in it'
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'REVOKE CREATE ON SCHEMA idempotency FROM the other roles, check what they created, and run CREATE EXTENSION again.';
	END IF;
	IF EXISTS (SELECT FROM pg_catalog.pg_depend d
			WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
			AND d.refobjid OPERATOR(pg_catalog.=) nsp.oid
			AND d.classid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_extension'::pg_catalog.regclass) THEN
		RAISE EXCEPTION 'schema "idempotency" is not empty'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'The extension creates its objects in a schema of its own.',
				  HINT = 'Move or drop what the schema holds (or drop the schema), and run CREATE EXTENSION again.';
	END IF;
END
$schema$;

-- Every role may use the types and functions in the schema that are
-- granted to PUBLIC; the rest are granted through the roles of the
-- extension.
GRANT USAGE ON SCHEMA idempotency TO PUBLIC;

-- The extension's two roles (see "Privileges" at the end).  Roles belong
-- to the cluster, not to a database: a second database's CREATE EXTENSION
-- finds them, and DROP EXTENSION leaves them.  Creating a role only if it
-- is missing takes a DO block; the statements in it are written out.
DO $roles$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) 'idempotency_user') THEN
		CREATE ROLE idempotency_user NOLOGIN;
		COMMENT ON ROLE idempotency_user IS
			'may call the claim, lock, lease and token functions of the idempotency extension';
	END IF;
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) 'idempotency_admin') THEN
		CREATE ROLE idempotency_admin NOLOGIN;
		COMMENT ON ROLE idempotency_admin IS
			'manages machines, guards and policies of the idempotency extension';
	END IF;
END
$roles$;

--------------------------------------------------------------------------
-- Snowflake IDs
--
-- A snowflake is stored exactly like a non-negative bigint, so comparison,
-- hashing and min/max bind PostgreSQL's own int8 functions (LANGUAGE
-- internal); only I/O, casts from integers and decoding are our own C.
--------------------------------------------------------------------------

CREATE TYPE idempotency.snowflake;

CREATE FUNCTION idempotency.snowflake_in(cstring) RETURNS idempotency.snowflake
	AS 'MODULE_PATHNAME', 'snowflake_in'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION idempotency.snowflake_out(idempotency.snowflake) RETURNS cstring
	AS 'MODULE_PATHNAME', 'snowflake_out'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION idempotency.snowflake_recv(internal) RETURNS idempotency.snowflake
	AS 'MODULE_PATHNAME', 'snowflake_recv'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION idempotency.snowflake_send(idempotency.snowflake) RETURNS bytea
	AS 'MODULE_PATHNAME', 'snowflake_send'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE idempotency.snowflake (
	INPUT = idempotency.snowflake_in,
	OUTPUT = idempotency.snowflake_out,
	RECEIVE = idempotency.snowflake_recv,
	SEND = idempotency.snowflake_send,
	LIKE = pg_catalog.int8
);
COMMENT ON TYPE idempotency.snowflake IS
	'64-bit time-ordered ID: 41 bits of milliseconds since idempotency.epoch, 10 bits of node, 12 bits of sequence';
COMMENT ON FUNCTION idempotency.snowflake_in(cstring) IS 'snowflake text input';
COMMENT ON FUNCTION idempotency.snowflake_out(idempotency.snowflake) IS 'snowflake text output';
COMMENT ON FUNCTION idempotency.snowflake_recv(internal) IS 'snowflake binary input';
COMMENT ON FUNCTION idempotency.snowflake_send(idempotency.snowflake) IS 'snowflake binary output';

-- Generation and decoding.

CREATE FUNCTION idempotency.snowflake_id() RETURNS idempotency.snowflake
	AS 'MODULE_PATHNAME', 'snowflake_id'
	LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake_id() IS
	'a new snowflake ID, unique and increasing across all sessions of this server';

CREATE FUNCTION idempotency.snowflake_timestamp(idempotency.snowflake) RETURNS timestamptz
	AS 'MODULE_PATHNAME', 'snowflake_timestamp'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake_timestamp(idempotency.snowflake) IS
	'the millisecond a snowflake was generated in';

CREATE FUNCTION idempotency.snowflake_node(idempotency.snowflake) RETURNS int
	AS 'MODULE_PATHNAME', 'snowflake_node'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake_node(idempotency.snowflake) IS
	'the node number (idempotency.node_id) a snowflake was generated on';

CREATE FUNCTION idempotency.snowflake_sequence(idempotency.snowflake) RETURNS int
	AS 'MODULE_PATHNAME', 'snowflake_sequence'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake_sequence(idempotency.snowflake) IS
	'the sequence number of a snowflake within its millisecond';

CREATE FUNCTION idempotency.snowflake_at(timestamptz) RETURNS idempotency.snowflake
	AS 'MODULE_PATHNAME', 'snowflake_at'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake_at(timestamptz) IS
	'the smallest snowflake of the millisecond holding the given instant, for range scans';

-- Casts.

CREATE FUNCTION idempotency.snowflake(bigint) RETURNS idempotency.snowflake
	AS 'MODULE_PATHNAME', 'snowflake_from_int8'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake(bigint) IS 'cast bigint to snowflake';
CREATE FUNCTION idempotency.snowflake(int) RETURNS idempotency.snowflake
	AS 'MODULE_PATHNAME', 'snowflake_from_int4'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake(int) IS 'cast integer to snowflake';

CREATE CAST (bigint AS idempotency.snowflake)
	WITH FUNCTION idempotency.snowflake(bigint) AS ASSIGNMENT;
CREATE CAST (int AS idempotency.snowflake)
	WITH FUNCTION idempotency.snowflake(int) AS ASSIGNMENT;
CREATE CAST (idempotency.snowflake AS bigint)
	WITHOUT FUNCTION AS ASSIGNMENT;

-- Comparison: snowflake with snowflake, and with bigint in both orders so
-- that "id = 42" and "id > $1::bigint" use the same indexes.  The functions
-- bind int8's own; the loop writes the 21 functions and 18 operators.

CREATE FUNCTION idempotency.snowflake_hash(idempotency.snowflake) RETURNS int
	AS 'hashint8' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake_hash(idempotency.snowflake) IS
	'hash support; equal to the hash of the same bigint';
CREATE FUNCTION idempotency.snowflake_hash_extended(idempotency.snowflake, bigint) RETURNS bigint
	AS 'hashint8extended' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake_hash_extended(idempotency.snowflake, bigint) IS
	'seeded hash support; equal to the hash of the same bigint';
CREATE FUNCTION idempotency.snowflake_larger(idempotency.snowflake, idempotency.snowflake)
	RETURNS idempotency.snowflake
	AS 'int8larger' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake_larger(idempotency.snowflake, idempotency.snowflake) IS
	'the larger of two snowflakes';
CREATE FUNCTION idempotency.snowflake_smaller(idempotency.snowflake, idempotency.snowflake)
	RETURNS idempotency.snowflake
	AS 'int8smaller' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.snowflake_smaller(idempotency.snowflake, idempotency.snowflake) IS
	'the smaller of two snowflakes';


-- Comparison: for (snowflake, snowflake), (snowflake, bigint) and
-- (bigint, snowflake), a btree comparison function and the six operators,
-- each bound to PostgreSQL's own int8 function.

-- (idempotency.snowflake, idempotency.snowflake)
CREATE FUNCTION idempotency.snowflake_cmp(idempotency.snowflake, idempotency.snowflake) RETURNS int
	AS 'btint8cmp' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_cmp(idempotency.snowflake, idempotency.snowflake) IS 'btree comparison: -1, 0 or 1';
CREATE FUNCTION idempotency.snowflake_eq(idempotency.snowflake, idempotency.snowflake) RETURNS bool
	AS 'int8eq' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_eq(idempotency.snowflake, idempotency.snowflake) IS 'implementation of the = operator';
CREATE OPERATOR idempotency.= (
	LEFTARG = idempotency.snowflake, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_eq,
	COMMUTATOR = OPERATOR(idempotency.=), NEGATOR = OPERATOR(idempotency.<>),
	RESTRICT = pg_catalog.eqsel, JOIN = pg_catalog.eqjoinsel,
	HASHES, MERGES);
COMMENT ON OPERATOR idempotency.= (idempotency.snowflake, idempotency.snowflake) IS 'equal';
CREATE FUNCTION idempotency.snowflake_ne(idempotency.snowflake, idempotency.snowflake) RETURNS bool
	AS 'int8ne' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_ne(idempotency.snowflake, idempotency.snowflake) IS 'implementation of the <> operator';
CREATE OPERATOR idempotency.<> (
	LEFTARG = idempotency.snowflake, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_ne,
	COMMUTATOR = OPERATOR(idempotency.<>), NEGATOR = OPERATOR(idempotency.=),
	RESTRICT = pg_catalog.neqsel, JOIN = pg_catalog.neqjoinsel);
COMMENT ON OPERATOR idempotency.<> (idempotency.snowflake, idempotency.snowflake) IS 'not equal';
CREATE FUNCTION idempotency.snowflake_lt(idempotency.snowflake, idempotency.snowflake) RETURNS bool
	AS 'int8lt' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_lt(idempotency.snowflake, idempotency.snowflake) IS 'implementation of the < operator';
CREATE OPERATOR idempotency.< (
	LEFTARG = idempotency.snowflake, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_lt,
	COMMUTATOR = OPERATOR(idempotency.>), NEGATOR = OPERATOR(idempotency.>=),
	RESTRICT = pg_catalog.scalarltsel, JOIN = pg_catalog.scalarltjoinsel);
COMMENT ON OPERATOR idempotency.< (idempotency.snowflake, idempotency.snowflake) IS 'less than';
CREATE FUNCTION idempotency.snowflake_le(idempotency.snowflake, idempotency.snowflake) RETURNS bool
	AS 'int8le' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_le(idempotency.snowflake, idempotency.snowflake) IS 'implementation of the <= operator';
CREATE OPERATOR idempotency.<= (
	LEFTARG = idempotency.snowflake, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_le,
	COMMUTATOR = OPERATOR(idempotency.>=), NEGATOR = OPERATOR(idempotency.>),
	RESTRICT = pg_catalog.scalarlesel, JOIN = pg_catalog.scalarlejoinsel);
COMMENT ON OPERATOR idempotency.<= (idempotency.snowflake, idempotency.snowflake) IS 'less than or equal';
CREATE FUNCTION idempotency.snowflake_gt(idempotency.snowflake, idempotency.snowflake) RETURNS bool
	AS 'int8gt' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_gt(idempotency.snowflake, idempotency.snowflake) IS 'implementation of the > operator';
CREATE OPERATOR idempotency.> (
	LEFTARG = idempotency.snowflake, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_gt,
	COMMUTATOR = OPERATOR(idempotency.<), NEGATOR = OPERATOR(idempotency.<=),
	RESTRICT = pg_catalog.scalargtsel, JOIN = pg_catalog.scalargtjoinsel);
COMMENT ON OPERATOR idempotency.> (idempotency.snowflake, idempotency.snowflake) IS 'greater than';
CREATE FUNCTION idempotency.snowflake_ge(idempotency.snowflake, idempotency.snowflake) RETURNS bool
	AS 'int8ge' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_ge(idempotency.snowflake, idempotency.snowflake) IS 'implementation of the >= operator';
CREATE OPERATOR idempotency.>= (
	LEFTARG = idempotency.snowflake, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_ge,
	COMMUTATOR = OPERATOR(idempotency.<=), NEGATOR = OPERATOR(idempotency.<),
	RESTRICT = pg_catalog.scalargesel, JOIN = pg_catalog.scalargejoinsel);
COMMENT ON OPERATOR idempotency.>= (idempotency.snowflake, idempotency.snowflake) IS 'greater than or equal';

-- (idempotency.snowflake, bigint)
CREATE FUNCTION idempotency.snowflake_cmp(idempotency.snowflake, bigint) RETURNS int
	AS 'btint8cmp' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_cmp(idempotency.snowflake, bigint) IS 'btree comparison: -1, 0 or 1';
CREATE FUNCTION idempotency.snowflake_eq(idempotency.snowflake, bigint) RETURNS bool
	AS 'int8eq' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_eq(idempotency.snowflake, bigint) IS 'implementation of the = operator';
CREATE OPERATOR idempotency.= (
	LEFTARG = idempotency.snowflake, RIGHTARG = bigint, FUNCTION = idempotency.snowflake_eq,
	COMMUTATOR = OPERATOR(idempotency.=), NEGATOR = OPERATOR(idempotency.<>),
	RESTRICT = pg_catalog.eqsel, JOIN = pg_catalog.eqjoinsel,
	HASHES, MERGES);
COMMENT ON OPERATOR idempotency.= (idempotency.snowflake, bigint) IS 'equal';
CREATE FUNCTION idempotency.snowflake_ne(idempotency.snowflake, bigint) RETURNS bool
	AS 'int8ne' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_ne(idempotency.snowflake, bigint) IS 'implementation of the <> operator';
CREATE OPERATOR idempotency.<> (
	LEFTARG = idempotency.snowflake, RIGHTARG = bigint, FUNCTION = idempotency.snowflake_ne,
	COMMUTATOR = OPERATOR(idempotency.<>), NEGATOR = OPERATOR(idempotency.=),
	RESTRICT = pg_catalog.neqsel, JOIN = pg_catalog.neqjoinsel);
COMMENT ON OPERATOR idempotency.<> (idempotency.snowflake, bigint) IS 'not equal';
CREATE FUNCTION idempotency.snowflake_lt(idempotency.snowflake, bigint) RETURNS bool
	AS 'int8lt' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_lt(idempotency.snowflake, bigint) IS 'implementation of the < operator';
CREATE OPERATOR idempotency.< (
	LEFTARG = idempotency.snowflake, RIGHTARG = bigint, FUNCTION = idempotency.snowflake_lt,
	COMMUTATOR = OPERATOR(idempotency.>), NEGATOR = OPERATOR(idempotency.>=),
	RESTRICT = pg_catalog.scalarltsel, JOIN = pg_catalog.scalarltjoinsel);
COMMENT ON OPERATOR idempotency.< (idempotency.snowflake, bigint) IS 'less than';
CREATE FUNCTION idempotency.snowflake_le(idempotency.snowflake, bigint) RETURNS bool
	AS 'int8le' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_le(idempotency.snowflake, bigint) IS 'implementation of the <= operator';
CREATE OPERATOR idempotency.<= (
	LEFTARG = idempotency.snowflake, RIGHTARG = bigint, FUNCTION = idempotency.snowflake_le,
	COMMUTATOR = OPERATOR(idempotency.>=), NEGATOR = OPERATOR(idempotency.>),
	RESTRICT = pg_catalog.scalarlesel, JOIN = pg_catalog.scalarlejoinsel);
COMMENT ON OPERATOR idempotency.<= (idempotency.snowflake, bigint) IS 'less than or equal';
CREATE FUNCTION idempotency.snowflake_gt(idempotency.snowflake, bigint) RETURNS bool
	AS 'int8gt' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_gt(idempotency.snowflake, bigint) IS 'implementation of the > operator';
CREATE OPERATOR idempotency.> (
	LEFTARG = idempotency.snowflake, RIGHTARG = bigint, FUNCTION = idempotency.snowflake_gt,
	COMMUTATOR = OPERATOR(idempotency.<), NEGATOR = OPERATOR(idempotency.<=),
	RESTRICT = pg_catalog.scalargtsel, JOIN = pg_catalog.scalargtjoinsel);
COMMENT ON OPERATOR idempotency.> (idempotency.snowflake, bigint) IS 'greater than';
CREATE FUNCTION idempotency.snowflake_ge(idempotency.snowflake, bigint) RETURNS bool
	AS 'int8ge' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_ge(idempotency.snowflake, bigint) IS 'implementation of the >= operator';
CREATE OPERATOR idempotency.>= (
	LEFTARG = idempotency.snowflake, RIGHTARG = bigint, FUNCTION = idempotency.snowflake_ge,
	COMMUTATOR = OPERATOR(idempotency.<=), NEGATOR = OPERATOR(idempotency.<),
	RESTRICT = pg_catalog.scalargesel, JOIN = pg_catalog.scalargejoinsel);
COMMENT ON OPERATOR idempotency.>= (idempotency.snowflake, bigint) IS 'greater than or equal';

-- (bigint, idempotency.snowflake)
CREATE FUNCTION idempotency.snowflake_cmp(bigint, idempotency.snowflake) RETURNS int
	AS 'btint8cmp' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_cmp(bigint, idempotency.snowflake) IS 'btree comparison: -1, 0 or 1';
CREATE FUNCTION idempotency.snowflake_eq(bigint, idempotency.snowflake) RETURNS bool
	AS 'int8eq' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_eq(bigint, idempotency.snowflake) IS 'implementation of the = operator';
CREATE OPERATOR idempotency.= (
	LEFTARG = bigint, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_eq,
	COMMUTATOR = OPERATOR(idempotency.=), NEGATOR = OPERATOR(idempotency.<>),
	RESTRICT = pg_catalog.eqsel, JOIN = pg_catalog.eqjoinsel,
	HASHES, MERGES);
COMMENT ON OPERATOR idempotency.= (bigint, idempotency.snowflake) IS 'equal';
CREATE FUNCTION idempotency.snowflake_ne(bigint, idempotency.snowflake) RETURNS bool
	AS 'int8ne' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_ne(bigint, idempotency.snowflake) IS 'implementation of the <> operator';
CREATE OPERATOR idempotency.<> (
	LEFTARG = bigint, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_ne,
	COMMUTATOR = OPERATOR(idempotency.<>), NEGATOR = OPERATOR(idempotency.=),
	RESTRICT = pg_catalog.neqsel, JOIN = pg_catalog.neqjoinsel);
COMMENT ON OPERATOR idempotency.<> (bigint, idempotency.snowflake) IS 'not equal';
CREATE FUNCTION idempotency.snowflake_lt(bigint, idempotency.snowflake) RETURNS bool
	AS 'int8lt' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_lt(bigint, idempotency.snowflake) IS 'implementation of the < operator';
CREATE OPERATOR idempotency.< (
	LEFTARG = bigint, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_lt,
	COMMUTATOR = OPERATOR(idempotency.>), NEGATOR = OPERATOR(idempotency.>=),
	RESTRICT = pg_catalog.scalarltsel, JOIN = pg_catalog.scalarltjoinsel);
COMMENT ON OPERATOR idempotency.< (bigint, idempotency.snowflake) IS 'less than';
CREATE FUNCTION idempotency.snowflake_le(bigint, idempotency.snowflake) RETURNS bool
	AS 'int8le' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_le(bigint, idempotency.snowflake) IS 'implementation of the <= operator';
CREATE OPERATOR idempotency.<= (
	LEFTARG = bigint, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_le,
	COMMUTATOR = OPERATOR(idempotency.>=), NEGATOR = OPERATOR(idempotency.>),
	RESTRICT = pg_catalog.scalarlesel, JOIN = pg_catalog.scalarlejoinsel);
COMMENT ON OPERATOR idempotency.<= (bigint, idempotency.snowflake) IS 'less than or equal';
CREATE FUNCTION idempotency.snowflake_gt(bigint, idempotency.snowflake) RETURNS bool
	AS 'int8gt' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_gt(bigint, idempotency.snowflake) IS 'implementation of the > operator';
CREATE OPERATOR idempotency.> (
	LEFTARG = bigint, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_gt,
	COMMUTATOR = OPERATOR(idempotency.<), NEGATOR = OPERATOR(idempotency.<=),
	RESTRICT = pg_catalog.scalargtsel, JOIN = pg_catalog.scalargtjoinsel);
COMMENT ON OPERATOR idempotency.> (bigint, idempotency.snowflake) IS 'greater than';
CREATE FUNCTION idempotency.snowflake_ge(bigint, idempotency.snowflake) RETURNS bool
	AS 'int8ge' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
COMMENT ON FUNCTION idempotency.snowflake_ge(bigint, idempotency.snowflake) IS 'implementation of the >= operator';
CREATE OPERATOR idempotency.>= (
	LEFTARG = bigint, RIGHTARG = idempotency.snowflake, FUNCTION = idempotency.snowflake_ge,
	COMMUTATOR = OPERATOR(idempotency.<=), NEGATOR = OPERATOR(idempotency.<),
	RESTRICT = pg_catalog.scalargesel, JOIN = pg_catalog.scalargejoinsel);
COMMENT ON OPERATOR idempotency.>= (bigint, idempotency.snowflake) IS 'greater than or equal';

-- Operator classes.  One btree family and one hash family hold snowflake
-- and bigint together, so cross-type comparisons can use an index and
-- merge or hash joins.  The (bigint, bigint) members are PostgreSQL's own,
-- listed so that each family is complete for both types.

CREATE OPERATOR FAMILY idempotency.snowflake_ops USING btree;
CREATE OPERATOR CLASS idempotency.snowflake_ops
	DEFAULT FOR TYPE idempotency.snowflake USING btree FAMILY idempotency.snowflake_ops AS
	OPERATOR 1 idempotency.<,
	OPERATOR 2 idempotency.<=,
	OPERATOR 3 idempotency.=,
	OPERATOR 4 idempotency.>=,
	OPERATOR 5 idempotency.>,
	FUNCTION 1 idempotency.snowflake_cmp(idempotency.snowflake, idempotency.snowflake),
	FUNCTION 2 (idempotency.snowflake, idempotency.snowflake) pg_catalog.btint8sortsupport(internal),
	FUNCTION 4 (idempotency.snowflake, idempotency.snowflake) pg_catalog.btequalimage(oid);
ALTER OPERATOR FAMILY idempotency.snowflake_ops USING btree ADD
	OPERATOR 1 idempotency.< (idempotency.snowflake, bigint),
	OPERATOR 2 idempotency.<= (idempotency.snowflake, bigint),
	OPERATOR 3 idempotency.= (idempotency.snowflake, bigint),
	OPERATOR 4 idempotency.>= (idempotency.snowflake, bigint),
	OPERATOR 5 idempotency.> (idempotency.snowflake, bigint),
	FUNCTION 1 idempotency.snowflake_cmp(idempotency.snowflake, bigint),
	OPERATOR 1 idempotency.< (bigint, idempotency.snowflake),
	OPERATOR 2 idempotency.<= (bigint, idempotency.snowflake),
	OPERATOR 3 idempotency.= (bigint, idempotency.snowflake),
	OPERATOR 4 idempotency.>= (bigint, idempotency.snowflake),
	OPERATOR 5 idempotency.> (bigint, idempotency.snowflake),
	FUNCTION 1 idempotency.snowflake_cmp(bigint, idempotency.snowflake),
	OPERATOR 1 pg_catalog.< (bigint, bigint),
	OPERATOR 2 pg_catalog.<= (bigint, bigint),
	OPERATOR 3 pg_catalog.= (bigint, bigint),
	OPERATOR 4 pg_catalog.>= (bigint, bigint),
	OPERATOR 5 pg_catalog.> (bigint, bigint),
	FUNCTION 1 pg_catalog.btint8cmp(bigint, bigint),
	FUNCTION 2 (bigint, bigint) pg_catalog.btint8sortsupport(internal),
	FUNCTION 4 (bigint, bigint) pg_catalog.btequalimage(oid);

COMMENT ON OPERATOR FAMILY idempotency.snowflake_ops USING btree IS
	'btree ordering of snowflakes, also against bigint';
COMMENT ON OPERATOR CLASS idempotency.snowflake_ops USING btree IS
	'default btree operator class for snowflake';

CREATE OPERATOR FAMILY idempotency.snowflake_hash_ops USING hash;
CREATE OPERATOR CLASS idempotency.snowflake_hash_ops
	DEFAULT FOR TYPE idempotency.snowflake USING hash FAMILY idempotency.snowflake_hash_ops AS
	OPERATOR 1 idempotency.=,
	FUNCTION 1 idempotency.snowflake_hash(idempotency.snowflake),
	FUNCTION 2 idempotency.snowflake_hash_extended(idempotency.snowflake, bigint);
ALTER OPERATOR FAMILY idempotency.snowflake_hash_ops USING hash ADD
	OPERATOR 1 idempotency.= (idempotency.snowflake, bigint),
	OPERATOR 1 idempotency.= (bigint, idempotency.snowflake),
	OPERATOR 1 pg_catalog.= (bigint, bigint),
	FUNCTION 1 pg_catalog.hashint8(bigint),
	FUNCTION 2 pg_catalog.hashint8extended(bigint, bigint);
COMMENT ON OPERATOR FAMILY idempotency.snowflake_hash_ops USING hash IS
	'hash equality of snowflakes, also against bigint';
COMMENT ON OPERATOR CLASS idempotency.snowflake_hash_ops USING hash IS
	'default hash operator class for snowflake';

-- Aggregates.

CREATE AGGREGATE idempotency.min(idempotency.snowflake) (
	SFUNC = idempotency.snowflake_smaller,
	STYPE = idempotency.snowflake,
	COMBINEFUNC = idempotency.snowflake_smaller,
	SORTOP = OPERATOR(idempotency.<),
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE idempotency.min(idempotency.snowflake) IS 'the smallest snowflake';
CREATE AGGREGATE idempotency.max(idempotency.snowflake) (
	SFUNC = idempotency.snowflake_larger,
	STYPE = idempotency.snowflake,
	COMBINEFUNC = idempotency.snowflake_larger,
	SORTOP = OPERATOR(idempotency.>),
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE idempotency.max(idempotency.snowflake) IS 'the largest snowflake';

--------------------------------------------------------------------------
-- Idempotency-key claims
--
-- One row per (scope, key) in idempotency.claims.  The functions that read
-- and write it are in C (src/claim.c).  They take no lock of their own: the
-- rows are the locks, so claims of one key wait for each other through
-- PostgreSQL's row and unique-index waits, and claims of different keys
-- never do.
--------------------------------------------------------------------------

CREATE TYPE idempotency.idem_outcome AS ENUM
	('claimed', 'completed', 'in_progress', 'mismatch', 'reclaimed');
COMMENT ON TYPE idempotency.idem_outcome IS
	'what idem_claim found: claimed (do the work), completed (replay), in_progress (409), mismatch (422), reclaimed (take over)';

CREATE TYPE idempotency.idem_claim_state AS ENUM ('in_progress', 'completed', 'failed');
COMMENT ON TYPE idempotency.idem_claim_state IS
	'state of a claim: in_progress (owned, under a lease), completed (response stored), failed (retryable failure, free to take over)';

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
COMMENT ON TYPE idempotency.idem_claim_result IS 'result of idem_claim';

CREATE SEQUENCE idempotency.claim_tokens AS bigint NO CYCLE;
COMMENT ON SEQUENCE idempotency.claim_tokens IS
	'source of fencing tokens: one sequence for all keys, so a token is never reused, even after its claim was purged';
-- Idempotency state is data, not configuration: pg_dump keeps the live
-- claims, one-time tokens and leases and the position of both token
-- sequences, so that a database moved by dump and restore answers every
-- retry as before (replay, mismatch, fencing, exactly once).  Expired rows
-- count as absent and are left out.
SELECT pg_catalog.pg_extension_config_dump('idempotency.claim_tokens', '');

CREATE TABLE idempotency.claims (
	scope text NOT NULL DEFAULT 'default',
	key text NOT NULL,
	fingerprint bytea CHECK (pg_catalog.octet_length(fingerprint) OPERATOR(pg_catalog.=) 32),
	state idempotency.idem_claim_state NOT NULL,
	token bigint NOT NULL,
	attempts int NOT NULL DEFAULT 1 CHECK (attempts OPERATOR(pg_catalog.>) 0),
	lease_until timestamptz,
	recovery_point text,
	response jsonb,
	status int,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	expires_at timestamptz NOT NULL,
	body bytea,
	content_type text,
	headers jsonb,
	PRIMARY KEY (scope, key)
);
COMMENT ON TABLE idempotency.claims IS
	'idempotency-key claims, one row per (scope, key); rows past expires_at count as absent';
COMMENT ON COLUMN idempotency.claims.fingerprint IS 'SHA-256 of the request payload (idem_fingerprint), if given';
COMMENT ON COLUMN idempotency.claims.token IS 'fencing token of the current owner; strictly increases per key';
COMMENT ON COLUMN idempotency.claims.attempts IS 'how many owners the key has had (1 + takeovers)';
COMMENT ON COLUMN idempotency.claims.lease_until IS 'the owner''s lease; once past, the next caller takes over';
COMMENT ON COLUMN idempotency.claims.recovery_point IS 'where the last owner got to (idem_checkpoint), handed to the next';
COMMENT ON COLUMN idempotency.claims.response IS 'stored response, replayed to later callers';
COMMENT ON COLUMN idempotency.claims.status IS 'stored status (for example an HTTP status), replayed with the response';
COMMENT ON COLUMN idempotency.claims.body IS 'stored response body as the client sent it, replayed byte for byte';
COMMENT ON COLUMN idempotency.claims.content_type IS 'content type of the stored body';
COMMENT ON COLUMN idempotency.claims.headers IS 'response headers kept with the body: a JSON object of strings or arrays of strings';
CREATE INDEX claims_expires_at ON idempotency.claims (expires_at);
SELECT pg_catalog.pg_extension_config_dump('idempotency.claims',
	'WHERE expires_at OPERATOR(pg_catalog.>) pg_catalog.now()');

CREATE FUNCTION idempotency.idem_claim(
	key text,
	ttl interval DEFAULT NULL,
	fingerprint bytea DEFAULT NULL,
	scope text DEFAULT 'default',
	lease interval DEFAULT NULL,
	wait boolean DEFAULT true,
	wait_for interval DEFAULT NULL)
RETURNS idempotency.idem_claim_result
	AS 'MODULE_PATHNAME', 'idem_claim'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval) IS
	'claim an idempotency key: claimed, completed (replay), in_progress, mismatch or reclaimed; ttl and lease default to the scope''s policy; wait_for waits up to that long for a claim in progress to end';
REVOKE ALL ON FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_claim(text, interval, bytea, text, interval, boolean, interval) TO idempotency_user;

CREATE FUNCTION idempotency.idem_complete(
	key text, token bigint, response jsonb DEFAULT NULL, status int DEFAULT NULL,
	scope text DEFAULT 'default',
	body bytea DEFAULT NULL, content_type text DEFAULT NULL, headers jsonb DEFAULT NULL)
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_complete'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_complete(text, bigint, jsonb, int, text, bytea, text, jsonb) IS
	'store the response of a claim (a jsonb response, or a body as bytes with its content type and headers); true if completed now, false if this token had already completed it';
REVOKE ALL ON FUNCTION idempotency.idem_complete(text, bigint, jsonb, int, text, bytea, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_complete(text, bigint, jsonb, int, text, bytea, text, jsonb) TO idempotency_user;

CREATE FUNCTION idempotency.idem_fail(
	key text, token bigint, retryable boolean,
	response jsonb DEFAULT NULL, status int DEFAULT NULL, scope text DEFAULT 'default',
	body bytea DEFAULT NULL, content_type text DEFAULT NULL, headers jsonb DEFAULT NULL)
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_fail'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_fail(text, bigint, boolean, jsonb, int, text, bytea, text, jsonb) IS
	'record a failed attempt: retryable frees the key for the next caller (reclaimed), otherwise the response is replayed like a completion';
REVOKE ALL ON FUNCTION idempotency.idem_fail(text, bigint, boolean, jsonb, int, text, bytea, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_fail(text, bigint, boolean, jsonb, int, text, bytea, text, jsonb) TO idempotency_user;

CREATE FUNCTION idempotency.idem_checkpoint(
	key text, token bigint, recovery_point text, scope text DEFAULT 'default')
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_checkpoint'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_checkpoint(text, bigint, text, text) IS
	'record how far the owner got, for whoever takes over';
REVOKE ALL ON FUNCTION idempotency.idem_checkpoint(text, bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_checkpoint(text, bigint, text, text) TO idempotency_user;

CREATE FUNCTION idempotency.idem_extend(
	key text, token bigint, lease interval, scope text DEFAULT 'default')
RETURNS timestamptz
	AS 'MODULE_PATHNAME', 'idem_extend'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_extend(text, bigint, interval, text) IS
	'renew the owner''s lease from now; returns the new end of the lease';
REVOKE ALL ON FUNCTION idempotency.idem_extend(text, bigint, interval, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_extend(text, bigint, interval, text) TO idempotency_user;

CREATE FUNCTION idempotency.idem_release(key text, token bigint, scope text DEFAULT 'default')
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_release'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_release(text, bigint, text) IS
	'give a claim up without a result: the key is free again; false if there was no claim';
REVOKE ALL ON FUNCTION idempotency.idem_release(text, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_release(text, bigint, text) TO idempotency_user;

-- Parallel unsafe: a policy not yet cached is read with a snapshot of its
-- own, which parallel mode does not allow.
CREATE FUNCTION idempotency.idem_lookup(key text, scope text DEFAULT 'default')
RETURNS idempotency.claims
	AS 'MODULE_PATHNAME', 'idem_lookup'
	LANGUAGE C STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_lookup(text, text) IS
	'the live claim of a key, or NULL if there is none (or it has expired); changes nothing';
REVOKE ALL ON FUNCTION idempotency.idem_lookup(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_lookup(text, text) TO idempotency_user;

-- One request in one statement: claim the key, run the handler, store its
-- answer, in the caller's transaction (or the statement's own), with the
-- caller's rights.  The handler is a function of the caller's:
-- handler(key text, request bytea, OUT status int, OUT body bytea,
-- OUT content_type text, OUT headers jsonb), checked in its catalog row
-- before it runs, so that no cast of anyone else's applies to its result;
-- it runs under the caller's search_path.  An answer of status 500 or more
-- is not stored, and what the handler wrote is undone with the claim, so
-- that a retry runs again (src/serve.c).
CREATE TYPE idempotency.idem_serve_result AS (
	outcome idempotency.idem_outcome,
	status int,
	body bytea,
	content_type text,
	headers jsonb
);
COMMENT ON TYPE idempotency.idem_serve_result IS 'result of idem_serve: the outcome and the answer';

CREATE FUNCTION idempotency.idem_serve(
	handler regprocedure,
	key text,
	request bytea DEFAULT NULL,
	fingerprint bytea DEFAULT NULL,
	scope text DEFAULT 'default',
	ttl interval DEFAULT NULL,
	wait_for interval DEFAULT NULL)
RETURNS SETOF idempotency.idem_serve_result
	AS 'MODULE_PATHNAME', 'idem_serve'
	LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1;
COMMENT ON FUNCTION idempotency.idem_serve(regprocedure, text, bytea, bytea, text, interval, interval) IS
	'one request in one statement: claim the key, run handler(key, request) with the caller''s rights, store its answer (status below 500); replays, in_progress and mismatch as idem_claim';
REVOKE ALL ON FUNCTION idempotency.idem_serve(regprocedure, text, bytea, bytea, text, interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_serve(regprocedure, text, bytea, bytea, text, interval, interval) TO idempotency_user;

CREATE FUNCTION idempotency.idem_fingerprint(payload jsonb, paths text[] DEFAULT NULL)
RETURNS bytea
	AS 'MODULE_PATHNAME', 'idem_fingerprint'
	LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.idem_fingerprint(jsonb, text[]) IS
	'SHA-256 of the canonical form of a JSON document, or of the values at the given paths (dotted, or text arrays as #> takes them)';

--------------------------------------------------------------------------
-- Per-scope policies
--
-- One row per scope that needs other limits than the defaults; a scope
-- without a row gets the column defaults (src/policy.c repeats them).
-- Every session caches what it read and drops it when the table changes.
--------------------------------------------------------------------------

-- Positive, and no part of it negative ('1 day -23 hours' would be a ttl
-- of one hour, '1 month -29 days' one that depends on the month).
CREATE FUNCTION idempotency.idem_interval_forward(i interval) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT i OPERATOR(pg_catalog.>) interval '0'
		AND pg_catalog.extract('year', i) OPERATOR(pg_catalog.>=) 0
		AND pg_catalog.extract('month', i) OPERATOR(pg_catalog.>=) 0
		AND pg_catalog.extract('day', i) OPERATOR(pg_catalog.>=) 0
		AND (i OPERATOR(pg_catalog.-) pg_catalog.date_trunc('day', i)) OPERATOR(pg_catalog.>=) interval '0'
$$;
COMMENT ON FUNCTION idempotency.idem_interval_forward(interval) IS
	'true if the interval is positive with no negative part: what policies accept as a duration';

CREATE TABLE idempotency.policies (
	scope text PRIMARY KEY
		CONSTRAINT policies_scope_length CHECK (pg_catalog.octet_length(scope) OPERATOR(pg_catalog.>=) 1
			AND pg_catalog.octet_length(scope) OPERATOR(pg_catalog.<=) 255),
	default_ttl interval NOT NULL DEFAULT '24 hours',
	max_ttl interval NOT NULL DEFAULT '30 days',
	lease interval NOT NULL DEFAULT '60 seconds',
	max_key_length int NOT NULL DEFAULT 255
		CONSTRAINT policies_max_key_length CHECK (max_key_length OPERATOR(pg_catalog.>=) 1
			AND max_key_length OPERATOR(pg_catalog.<=) 255),
	require_fingerprint boolean NOT NULL DEFAULT false,
	allowed_roles pg_catalog.regrole[],
	CONSTRAINT policies_positive CHECK (idempotency.idem_interval_forward(default_ttl)
		AND idempotency.idem_interval_forward(max_ttl) AND idempotency.idem_interval_forward(lease)),
	CONSTRAINT policies_max_ttl_limit CHECK (max_ttl OPERATOR(pg_catalog.<=) '366 days')
);
COMMENT ON TABLE idempotency.policies IS
	'per-scope limits of claims and tokens, and who may use the scope; a scope without a row gets the column defaults';
COMMENT ON COLUMN idempotency.policies.default_ttl IS 'ttl of a claim that gives none (max_ttl if that is shorter)';
COMMENT ON COLUMN idempotency.policies.max_ttl IS 'longest ttl of a claim or token, and longest lease renewal';
COMMENT ON COLUMN idempotency.policies.lease IS 'lease of a claim that gives none (never longer than its ttl)';
COMMENT ON COLUMN idempotency.policies.max_key_length IS 'longest key a claim may use, in bytes';
COMMENT ON COLUMN idempotency.policies.require_fingerprint IS 'claims must pass a payload fingerprint';
COMMENT ON COLUMN idempotency.policies.allowed_roles IS
	'roles whose members may use the scope (claims, keyed locks, leases, one-time tokens); NULL: every member of idempotency_user; idempotency_admin members may use every scope';
SELECT pg_catalog.pg_extension_config_dump('idempotency.policies', '');

--------------------------------------------------------------------------
-- State-transition guards
--
-- Machines are data: idempotency.machines and idempotency.transitions,
-- which a DBA may edit directly (every change invalidates the per-backend
-- cache of every session at commit).  A guard is a C trigger on the user's
-- table whose arguments name the machine and the columns, so it is dumped,
-- restored and renamed with the table.
--------------------------------------------------------------------------

CREATE TABLE idempotency.machines (
	name text PRIMARY KEY CHECK (name OPERATOR(pg_catalog.<>) ''
		AND pg_catalog.octet_length(name) OPERATOR(pg_catalog.<) 128),
	initial_states text[],
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE idempotency.machines IS 'state machines for guarded tables';
COMMENT ON COLUMN idempotency.machines.initial_states IS
	'states a new row may start in; NULL: the states no transition leads to';

CREATE TABLE idempotency.transitions (
	machine text NOT NULL REFERENCES idempotency.machines ON UPDATE CASCADE ON DELETE CASCADE,
	from_state text NOT NULL CHECK (from_state OPERATOR(pg_catalog.<>) ''),
	to_state text NOT NULL
		CHECK (to_state OPERATOR(pg_catalog.<>) '' AND to_state OPERATOR(pg_catalog.<>) from_state),
	PRIMARY KEY (machine, from_state, to_state)
);
COMMENT ON TABLE idempotency.transitions IS
	'the allowed state changes of each machine; a state with none leading out of it is terminal';

SELECT pg_catalog.pg_extension_config_dump('idempotency.machines', '');
SELECT pg_catalog.pg_extension_config_dump('idempotency.transitions', '');
GRANT SELECT ON idempotency.machines, idempotency.transitions TO PUBLIC;

-- Tell every session, at commit, that machines, transitions or policies changed.
CREATE FUNCTION idempotency.idem_config_changed() RETURNS trigger
	AS 'MODULE_PATHNAME', 'idem_config_changed'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_config_changed() IS
	'trigger: invalidate what every session cached of machines, transitions or policies when they change';
CREATE TRIGGER machines_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON idempotency.machines FOR EACH STATEMENT EXECUTE FUNCTION idempotency.idem_config_changed();
CREATE TRIGGER transitions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON idempotency.transitions FOR EACH STATEMENT EXECUTE FUNCTION idempotency.idem_config_changed();
CREATE TRIGGER policies_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON idempotency.policies FOR EACH STATEMENT EXECUTE FUNCTION idempotency.idem_config_changed();

CREATE FUNCTION idempotency.idem_guard_trigger() RETURNS trigger
	AS 'MODULE_PATHNAME', 'idem_guard_trigger'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_guard_trigger() IS
	'trigger installed by idem_guard: enforces a state machine and a version column';
REVOKE ALL ON FUNCTION idempotency.idem_guard_trigger() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_guard_trigger() TO idempotency_admin;

-- The same rules, placed by the planner into UPDATEs of guarded tables so
-- that they check themselves without the row trigger (src/guard_update.c).
-- Not meant to be called directly; they run with the updater's rights.
CREATE FUNCTION idempotency.idem_guard_check(tbl oid, guard oid, row_id tid,
	old_state anyelement, new_state anyelement, version_set boolean,
	old_version "any", new_version "any")
RETURNS anyelement
	AS 'MODULE_PATHNAME', 'idem_guard_check'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_guard_check(oid, oid, tid, anyelement, anyelement, boolean, "any", "any") IS
	'internal: the new state of a row in a guarded UPDATE, if its machine allows it';
CREATE FUNCTION idempotency.idem_guard_bump(tbl oid, guard oid, old_version integer,
	version_set boolean, new_version integer)
RETURNS integer
	AS 'MODULE_PATHNAME', 'idem_guard_bump'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_guard_bump(oid, oid, integer, boolean, integer) IS
	'internal: the next version of a row in a guarded UPDATE';
CREATE FUNCTION idempotency.idem_guard_bump(tbl oid, guard oid, old_version bigint,
	version_set boolean, new_version bigint)
RETURNS bigint
	AS 'MODULE_PATHNAME', 'idem_guard_bump'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_guard_bump(oid, oid, bigint, boolean, bigint) IS
	'internal: the next version of a row in a guarded UPDATE';
CREATE FUNCTION idempotency.idem_guard_differs(tbl oid, guard oid, row_id tid,
	old_state anyelement, new_state anyelement, VARIADIC "any")
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_guard_differs'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_guard_differs(oid, oid, tid, anyelement, anyelement, "any") IS
	'internal: false when a guarded UPDATE repeats the state of the current row and changes nothing else';

CREATE FUNCTION idempotency.idem_machine(name text, VARIADIC transitions text[])
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	edge text;
	parts text[];
	froms text[] := '{}';
	tos text[] := '{}';
	initial text[];
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION 'machine name must not be null'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Name the machine after what it governs, such as ''order''.';
	END IF;
	IF name = '' THEN
		RAISE EXCEPTION 'machine name must not be empty'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Name the machine after what it governs, such as ''order''.';
	END IF;
	IF octet_length(name) >= 128 THEN
		RAISE EXCEPTION 'machine name "%" is too long', name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A machine name may have at most 127 bytes.',
				  HINT = 'Use a shorter name.';
	END IF;
	IF transitions IS NULL OR cardinality(transitions) = 0 THEN
		RAISE EXCEPTION 'machine "%" needs at least one transition', name
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Write each transition as ''from->to'', such as ''pending->paid''.';
	END IF;
	IF array_position(transitions, NULL) IS NOT NULL THEN
		RAISE EXCEPTION 'transitions of machine "%" must not contain null', name
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Write each transition as ''from->to'', such as ''pending->paid''.';
	END IF;
	FOREACH edge IN ARRAY transitions LOOP
		parts := regexp_match(edge, '^\s*([^\s>-](?:[^>]*[^\s>-])?)\s*->\s*([^\s>-](?:[^>]*[^\s>-])?)\s*$');
		IF parts IS NULL OR parts[1] LIKE '%->%' OR parts[2] LIKE '%->%' THEN
			RAISE EXCEPTION 'invalid transition "%" for machine "%"', edge, name
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Write each transition as ''from->to'', such as ''pending->paid''.';
		END IF;
		IF parts[1] = parts[2] THEN
			RAISE EXCEPTION 'transition "%" of machine "%" leads back to its own state', edge, name
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Leave it out: an update that keeps the state is always allowed.';
		END IF;
		IF EXISTS (SELECT FROM unnest(froms, tos) AS e(f, t) WHERE f = parts[1] AND t = parts[2]) THEN
			RAISE EXCEPTION 'transition "%" appears twice in machine "%"', edge, name
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'List each transition once.';
		END IF;
		froms := froms || parts[1];
		tos := tos || parts[2];
	END LOOP;

	initial := ARRAY(SELECT DISTINCT f FROM unnest(froms) AS f WHERE f <> ALL (tos));
	IF cardinality(initial) = 0 AND NOT EXISTS (
		SELECT FROM idempotency.machines m
		WHERE m.name = idem_machine.name AND m.initial_states IS NOT NULL) THEN
		RAISE EXCEPTION 'machine "%" has no initial state', name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Every state has a transition leading into it.',
				  HINT = 'Add a state that new rows start in, or set idempotency.machines.initial_states.';
	END IF;

	INSERT INTO idempotency.machines AS m (name) VALUES (idem_machine.name)
		ON CONFLICT ON CONSTRAINT machines_pkey DO NOTHING;
	DELETE FROM idempotency.transitions t WHERE t.machine = idem_machine.name;
	INSERT INTO idempotency.transitions (machine, from_state, to_state)
		SELECT idem_machine.name, f, t FROM unnest(froms, tos) AS e(f, t);
	RETURN name;
END
$$;
COMMENT ON FUNCTION idempotency.idem_machine(text, text[]) IS
	'define or redefine a state machine from transitions written ''from->to''';
REVOKE ALL ON FUNCTION idempotency.idem_machine(text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_machine(text, text[]) TO idempotency_admin;

CREATE FUNCTION idempotency.idem_guard(
	tbl regclass,
	state_column name DEFAULT 'state',
	machine text DEFAULT NULL,
	version_column name DEFAULT NULL,
	strict_version boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	machine_name text := coalesce(machine, (SELECT c.relname::text FROM pg_class c WHERE c.oid = tbl));
	state_type oid;
	state_is_enum boolean;
	version_type oid;
	missing text;
BEGIN
	IF tbl IS NULL OR state_column IS NULL OR strict_version IS NULL THEN
		RAISE EXCEPTION 'tbl, state_column and strict_version must not be null'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Leave out an argument to use its default.';
	END IF;
	IF NOT EXISTS (SELECT FROM idempotency.machines m WHERE m.name = machine_name) THEN
		RAISE EXCEPTION 'machine "%" does not exist', machine_name
			USING ERRCODE = 'undefined_object',
				  HINT = 'Define it first with idem_machine(), or pass machine => the name of an existing one.';
	END IF;

	SELECT a.atttypid INTO state_type FROM pg_attribute a
	WHERE a.attrelid = tbl AND a.attname = state_column AND a.attnum > 0 AND NOT a.attisdropped;
	IF state_type IS NULL THEN
		RAISE EXCEPTION 'column "%" of relation % does not exist', state_column, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Pass state_column => the column that holds the state.';
	END IF;
	state_is_enum := (SELECT t.typtype = 'e' FROM pg_type t WHERE t.oid = state_type);
	IF NOT (state_type IN ('text'::regtype, 'varchar'::regtype) OR state_is_enum) THEN
		RAISE EXCEPTION 'state column "%" of relation % has type %', state_column, tbl, state_type::regtype
			USING ERRCODE = 'datatype_mismatch',
				  HINT = 'A state column must be text, varchar or an enum.';
	END IF;
	IF state_is_enum THEN
		SELECT string_agg(DISTINCT s, ', ' ORDER BY s) INTO missing
		FROM (SELECT from_state AS s FROM idempotency.transitions WHERE transitions.machine = machine_name
			  UNION SELECT to_state FROM idempotency.transitions WHERE transitions.machine = machine_name) st
		WHERE NOT EXISTS (SELECT FROM pg_enum e WHERE e.enumtypid = state_type AND e.enumlabel = st.s);
		IF missing IS NOT NULL THEN
			RAISE EXCEPTION 'machine "%" has states that type % lacks: %', machine_name, state_type::regtype, missing
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Add the labels with ALTER TYPE ... ADD VALUE, or fix the machine.';
		END IF;
	END IF;

	IF version_column IS NOT NULL THEN
		SELECT a.atttypid INTO version_type FROM pg_attribute a
		WHERE a.attrelid = tbl AND a.attname = version_column AND a.attnum > 0 AND NOT a.attisdropped;
		IF version_type IS NULL THEN
			RAISE EXCEPTION 'column "%" of relation % does not exist', version_column, tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Pass version_column => an int or bigint column, or leave it out.';
		END IF;
		IF version_type NOT IN ('int4'::regtype, 'int8'::regtype) THEN
			RAISE EXCEPTION 'version column "%" of relation % has type %', version_column, tbl, version_type::regtype
				USING ERRCODE = 'datatype_mismatch',
					  HINT = 'A version column must be int or bigint.';
		END IF;
	ELSIF strict_version THEN
		RAISE EXCEPTION 'strict_version needs a version column'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass version_column => the column to check.';
	END IF;

	IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'idem_guard') THEN
		EXECUTE format('DROP TRIGGER idem_guard ON %s', tbl);
	END IF;
	EXECUTE format('CREATE TRIGGER idem_guard BEFORE INSERT OR UPDATE ON %s FOR EACH ROW '
				   'EXECUTE FUNCTION idempotency.idem_guard_trigger(%L, %L, %L, %L)',
				   tbl, machine_name, state_column, coalesce(version_column, ''),
				   CASE WHEN strict_version THEN 'strict' ELSE 'lenient' END);
END
$$;
COMMENT ON FUNCTION idempotency.idem_guard(regclass, name, text, name, boolean) IS
	'guard a table: its state column must follow the machine, its version column must match';
REVOKE ALL ON FUNCTION idempotency.idem_guard(regclass, name, text, name, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_guard(regclass, name, text, name, boolean) TO idempotency_admin;

CREATE FUNCTION idempotency.idem_unguard(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	found boolean;
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'tbl must not be null'
			USING ERRCODE = 'null_value_not_allowed', HINT = 'Name the guarded table.';
	END IF;
	found := EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'idem_guard');
	IF found THEN
		EXECUTE format('DROP TRIGGER idem_guard ON %s', tbl);
	END IF;
	RETURN found;
END
$$;
COMMENT ON FUNCTION idempotency.idem_unguard(regclass) IS
	'remove the guard of a table; false if it had none';
REVOKE ALL ON FUNCTION idempotency.idem_unguard(regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_unguard(regclass) TO idempotency_admin;

--------------------------------------------------------------------------
-- Pessimistic flows
--
-- The transition executor, keyed locks, leases with fencing tokens,
-- one-time tokens (src/transition.c, lock.c, lease.c, token.c).
-- idem_transition runs with the caller's rights on the caller's table; the
-- lock, lease and token functions, like the claim functions, check the
-- caller's access to the scope and then work on the extension's tables
-- with its owner's rights.
--------------------------------------------------------------------------

CREATE TYPE idempotency.idem_transition_outcome AS ENUM
	('applied', 'unchanged', 'illegal', 'stale', 'locked', 'not_found');
COMMENT ON TYPE idempotency.idem_transition_outcome IS 'outcome of idem_transition';

CREATE TYPE idempotency.idem_transition_result AS (
	outcome idempotency.idem_transition_outcome,
	state text,
	version bigint
);
COMMENT ON TYPE idempotency.idem_transition_result IS
	'result of idem_transition: the outcome, and the row''s state and version afterwards';

CREATE FUNCTION idempotency.idem_transition(tbl regclass, id anycompatible, to_state text,
	expected_version bigint DEFAULT NULL, lock text DEFAULT 'wait')
RETURNS idempotency.idem_transition_result
	AS 'MODULE_PATHNAME', 'idem_transition'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_transition(regclass, anycompatible, text, bigint, text) IS
	'lock a guarded row by primary key (wait, nowait or skip), check its machine and version, and move it to a new state';

-- The secret keyed lock ids are made with (src/lock.c): 32 random bytes
-- (from two version 4 UUIDs, 244 random bits), made here and readable only
-- by the extension's owner, so that nobody can aim a key of one scope at
-- the lock of another.  It is not dumped: a restored database makes its
-- own, and no lock outlives its transaction.
CREATE TABLE idempotency.lock_secret (
	secret bytea NOT NULL
		CHECK (pg_catalog.octet_length(secret) OPERATOR(pg_catalog.=) 32)
);
COMMENT ON TABLE idempotency.lock_secret IS
	'the secret of keyed lock ids (HMAC-SHA-256 of scope and key); readable by the extension owner only';
INSERT INTO idempotency.lock_secret
SELECT pg_catalog.decode(pg_catalog.replace(pg_catalog.gen_random_uuid()::pg_catalog.text
	OPERATOR(pg_catalog.||) pg_catalog.gen_random_uuid()::pg_catalog.text, '-', ''), 'hex');

CREATE FUNCTION idempotency.idem_lock(key text, scope text DEFAULT 'default')
RETURNS void
	AS 'MODULE_PATHNAME', 'idem_lock'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_lock(text, text) IS
	'take a keyed lock until the end of the transaction, waiting for it';
REVOKE ALL ON FUNCTION idempotency.idem_lock(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_lock(text, text) TO idempotency_user;
CREATE FUNCTION idempotency.idem_try_lock(key text, scope text DEFAULT 'default')
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_try_lock'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_try_lock(text, text) IS
	'take a keyed lock until the end of the transaction if it is free; false if another transaction holds it';
REVOKE ALL ON FUNCTION idempotency.idem_try_lock(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_try_lock(text, text) TO idempotency_user;
CREATE FUNCTION idempotency.idem_lock_id(key text, scope text DEFAULT 'default')
RETURNS bigint
	AS 'MODULE_PATHNAME', 'idem_lock_id'
	LANGUAGE C STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_lock_id(text, text) IS
	'the 64-bit lock id of a key: classid << 32 | objid of its advisory lock in pg_locks, where objsubid is 73';

CREATE SEQUENCE idempotency.lease_tokens AS bigint NO CYCLE;
COMMENT ON SEQUENCE idempotency.lease_tokens IS
	'source of lease fencing tokens: one sequence for all names, so tokens of a name only grow, even after its lease was purged';
SELECT pg_catalog.pg_extension_config_dump('idempotency.lease_tokens', '');

CREATE TABLE idempotency.leases (
	scope text NOT NULL DEFAULT 'default',
	name text NOT NULL,
	holder text NOT NULL,
	token bigint NOT NULL,
	acquired_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	PRIMARY KEY (scope, name)
);
CREATE INDEX leases_expires_at ON idempotency.leases (expires_at);
SELECT pg_catalog.pg_extension_config_dump('idempotency.leases',
	'WHERE expires_at OPERATOR(pg_catalog.>) pg_catalog.now()');
COMMENT ON TABLE idempotency.leases IS
	'leases: who holds each name of a scope, with which fencing token, until when';

CREATE FUNCTION idempotency.idem_lease_acquire(name pg_catalog.text, holder pg_catalog.text,
	ttl pg_catalog.interval, scope pg_catalog.text DEFAULT 'default')
RETURNS pg_catalog.int8
	AS 'MODULE_PATHNAME', 'idem_lease_acquire'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_lease_acquire(pg_catalog.text, pg_catalog.text, pg_catalog.interval, pg_catalog.text) IS
	'acquire a lease for ttl: a new fencing token, or NULL while another holder''s lease is live';
REVOKE ALL ON FUNCTION idempotency.idem_lease_acquire(pg_catalog.text, pg_catalog.text, pg_catalog.interval, pg_catalog.text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_lease_acquire(pg_catalog.text, pg_catalog.text, pg_catalog.interval, pg_catalog.text) TO idempotency_user;

CREATE FUNCTION idempotency.idem_lease_renew(name pg_catalog.text, token pg_catalog.int8,
	ttl pg_catalog.interval, scope pg_catalog.text DEFAULT 'default')
RETURNS pg_catalog.bool
	AS 'MODULE_PATHNAME', 'idem_lease_renew'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_lease_renew(pg_catalog.text, pg_catalog.int8, pg_catalog.interval, pg_catalog.text) IS
	'extend a live lease to ttl from now; false if the token is no longer current or the lease ran out';
REVOKE ALL ON FUNCTION idempotency.idem_lease_renew(pg_catalog.text, pg_catalog.int8, pg_catalog.interval, pg_catalog.text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_lease_renew(pg_catalog.text, pg_catalog.int8, pg_catalog.interval, pg_catalog.text) TO idempotency_user;

CREATE FUNCTION idempotency.idem_lease_release(name pg_catalog.text, token pg_catalog.int8,
	scope pg_catalog.text DEFAULT 'default')
RETURNS pg_catalog.bool
	AS 'MODULE_PATHNAME', 'idem_lease_release'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_lease_release(pg_catalog.text, pg_catalog.int8, pg_catalog.text) IS
	'end a lease; false if the token is no longer current or the lease had run out';
REVOKE ALL ON FUNCTION idempotency.idem_lease_release(pg_catalog.text, pg_catalog.int8, pg_catalog.text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_lease_release(pg_catalog.text, pg_catalog.int8, pg_catalog.text) TO idempotency_user;

CREATE FUNCTION idempotency.idem_lease_check(name pg_catalog.text, token pg_catalog.int8,
	scope pg_catalog.text DEFAULT 'default')
RETURNS pg_catalog.bool
	AS 'MODULE_PATHNAME', 'idem_lease_check'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_lease_check(pg_catalog.text, pg_catalog.int8, pg_catalog.text) IS
	'true if the token holds the live lease (and keeps it from being taken over until commit); raises otherwise';
REVOKE ALL ON FUNCTION idempotency.idem_lease_check(pg_catalog.text, pg_catalog.int8, pg_catalog.text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_lease_check(pg_catalog.text, pg_catalog.int8, pg_catalog.text) TO idempotency_user;

CREATE TABLE idempotency.tokens (
	scope text NOT NULL,
	digest bytea NOT NULL CHECK (pg_catalog.octet_length(digest) OPERATOR(pg_catalog.=) 32),
	created_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	PRIMARY KEY (scope, digest)
);
CREATE INDEX tokens_expires_at ON idempotency.tokens (expires_at);
SELECT pg_catalog.pg_extension_config_dump('idempotency.tokens',
	'WHERE expires_at OPERATOR(pg_catalog.>) pg_catalog.now()');
COMMENT ON TABLE idempotency.tokens IS
	'one-time tokens not yet consumed, by SHA-256 digest: the tokens themselves are never stored';

CREATE FUNCTION idempotency.idem_token_issue(scope text DEFAULT 'default', ttl interval DEFAULT NULL)
RETURNS text
	AS 'MODULE_PATHNAME', 'idem_token_issue'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_token_issue(text, interval) IS
	'issue a one-time token: 192 random bits, URL-safe base64, valid for ttl (by default an hour, or the scope''s max_ttl if shorter)';
REVOKE ALL ON FUNCTION idempotency.idem_token_issue(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_token_issue(text, interval) TO idempotency_user;
CREATE FUNCTION idempotency.idem_token_consume(token text, scope text DEFAULT 'default')
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_token_consume'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_token_consume(text, text) IS
	'consume a one-time token: true exactly once, false if unknown, consumed or expired';
REVOKE ALL ON FUNCTION idempotency.idem_token_consume(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_token_consume(text, text) TO idempotency_user;

--------------------------------------------------------------------------
-- Counters
--
-- Cluster-wide, kept in shared memory (src/stats.c), since the last reset
-- or server start.
--------------------------------------------------------------------------

CREATE FUNCTION idempotency.idem_stats(
	OUT claims_claimed bigint, OUT claims_replayed bigint, OUT claims_in_progress bigint,
	OUT claims_mismatched bigint, OUT claims_reclaimed bigint, OUT purged_rows bigint,
	OUT ids_generated bigint, OUT guard_rejections bigint, OUT stale_versions bigint,
	OUT clock_regressions bigint, OUT stats_reset timestamptz)
RETURNS record
	AS 'MODULE_PATHNAME', 'idem_stats'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_stats() IS
	'the counters of idempotency.stats';
CREATE VIEW idempotency.stats AS SELECT * FROM idempotency.idem_stats();
COMMENT ON VIEW idempotency.stats IS
	'cluster-wide counters since the last idem_stats_reset() or server start';
GRANT SELECT ON idempotency.stats TO PUBLIC;

CREATE FUNCTION idempotency.idem_stats_reset()
RETURNS void
	AS 'MODULE_PATHNAME', 'idem_stats_reset'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idempotency.idem_stats_reset() IS
	'start every counter of idempotency.stats from zero';
REVOKE ALL ON FUNCTION idempotency.idem_stats_reset() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_stats_reset() TO idempotency_admin;

--------------------------------------------------------------------------
-- Expiry
--------------------------------------------------------------------------

-- It deletes nothing but expired rows, so it runs as the extension's owner
-- and may be granted freely.  Every name in it is qualified.
CREATE FUNCTION idempotency.idem_purge()
RETURNS bigint
	AS 'MODULE_PATHNAME', 'idem_purge'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION idempotency.idem_purge() IS
	'delete every expired claim, one-time token and lease now, in batches of idempotency.purge_batch_size; returns how many rows went';
REVOKE ALL ON FUNCTION idempotency.idem_purge() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idempotency.idem_purge() TO idempotency_admin;

--------------------------------------------------------------------------
-- Privileges
--
-- PUBLIC keeps what is harmless: snowflake IDs, idem_fingerprint,
-- idem_lock_id (a keyed hash), idem_transition (which needs the caller's own
-- rights on the table it changes), reading machines, transitions, policies
-- and the counters, and the functions that guarded UPDATEs call (they
-- refuse to run outside such an UPDATE).
--
-- idempotency_user: the claim, lock, lease and token functions, and no
-- right on their tables or sequences: the functions check the caller's
-- access to the scope (policies.allowed_roles), then read and write the
-- tables with the extension owner's rights.
--
-- idempotency_admin: machines, guards and policies, reading claims, leases
-- and tokens, resetting counters and purging on demand.
--------------------------------------------------------------------------

-- The functions' own grants stand next to each of them, above.
GRANT SELECT ON idempotency.claims, idempotency.leases, idempotency.tokens TO idempotency_admin;

GRANT SELECT ON idempotency.policies TO PUBLIC;
GRANT INSERT, UPDATE, DELETE
	ON idempotency.machines, idempotency.transitions, idempotency.policies TO idempotency_admin;

--------------------------------------------------------------------------
-- Preloading
--
-- Without shared_preload_libraries = 'idempotency' the snowflake
-- generator, the counters and the purge worker are absent.  Say so when
-- the extension is created, rather than at the first snowflake_id().
--------------------------------------------------------------------------

CREATE FUNCTION idempotency.idem_preloaded()
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_preloaded'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.idem_preloaded() IS
	'whether the server preloads the library (shared_preload_libraries), which snowflake IDs, the counters and the purge worker need';

DO $preload$
BEGIN
	IF NOT idempotency.idem_preloaded() THEN
		RAISE WARNING 'idempotency is not loaded via "shared_preload_libraries"'
			USING DETAIL = 'snowflake_id(), the counters in idempotency.stats and the purge worker need it; the other functions work.',
				  HINT = 'Add idempotency to "shared_preload_libraries" in postgresql.conf and restart the server.';
	END IF;
END
$preload$;
