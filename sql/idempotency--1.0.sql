/* idempotency--1.0.sql */

\echo Use "CREATE EXTENSION idempotency" to load this file. \quit

-- The schema is created by CREATE EXTENSION (control file: schema).  Every
-- role may use the types and functions in it that are granted to PUBLIC;
-- the rest are granted through the roles of the extension.
GRANT USAGE ON SCHEMA idempotency TO PUBLIC;

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


DO $$
DECLARE
	pair text[];
	op record;
BEGIN
	FOREACH pair SLICE 1 IN ARRAY ARRAY[
		['idempotency.snowflake', 'idempotency.snowflake'],
		['idempotency.snowflake', 'bigint'],
		['bigint', 'idempotency.snowflake']]
	LOOP
		EXECUTE format(
			'CREATE FUNCTION idempotency.snowflake_cmp(%s, %s) RETURNS int '
			'AS ''btint8cmp'' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF', pair[1], pair[2]);
		EXECUTE format('COMMENT ON FUNCTION idempotency.snowflake_cmp(%s, %s) IS %L',
			pair[1], pair[2], 'btree comparison: -1, 0 or 1');

		FOR op IN SELECT * FROM (VALUES
			('=',  'eq', '=',  '<>', 'eqsel',       'eqjoinsel',       ', HASHES, MERGES', 'equal'),
			('<>', 'ne', '<>', '=',  'neqsel',      'neqjoinsel',      '',                 'not equal'),
			('<',  'lt', '>',  '>=', 'scalarltsel', 'scalarltjoinsel', '',                 'less than'),
			('<=', 'le', '>=', '>',  'scalarlesel', 'scalarlejoinsel', '',                 'less than or equal'),
			('>',  'gt', '<',  '<=', 'scalargtsel', 'scalargtjoinsel', '',                 'greater than'),
			('>=', 'ge', '<=', '<',  'scalargesel', 'scalargejoinsel', '',                 'greater than or equal'))
			AS t(sym, fn, com, neg, rsel, jsel, extra, meaning)
		LOOP
			EXECUTE format(
				'CREATE FUNCTION idempotency.snowflake_%s(%s, %s) RETURNS bool '
				'AS %L LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF',
				op.fn, pair[1], pair[2], 'int8' || op.fn);
			EXECUTE format('COMMENT ON FUNCTION idempotency.snowflake_%s(%s, %s) IS %L',
				op.fn, pair[1], pair[2], 'implementation of the ' || op.sym || ' operator');
			EXECUTE format(
				'CREATE OPERATOR idempotency.%s (LEFTARG = %s, RIGHTARG = %s, '
				'FUNCTION = idempotency.snowflake_%s, COMMUTATOR = OPERATOR(idempotency.%s), '
				'NEGATOR = OPERATOR(idempotency.%s), RESTRICT = %s, JOIN = %s%s)',
				op.sym, pair[1], pair[2], op.fn, op.com, op.neg, op.rsel, op.jsel, op.extra);
			EXECUTE format('COMMENT ON OPERATOR idempotency.%s (%s, %s) IS %L',
				op.sym, pair[1], pair[2], op.meaning);
		END LOOP;
	END LOOP;
END
$$;

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
