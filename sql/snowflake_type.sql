--
-- The snowflake type: text and binary I/O, casts, operators, indexes,
-- aggregates, JSON, decoding and snowflake_at.  Needs no shared memory.
--
SET search_path = idempotency, public;

\i sql/helpers.psql

-- Text input and output.
SELECT '0'::snowflake, '  +42  '::snowflake, '9223372036854775807'::snowflake,
       '-0'::snowflake;
SELECT pg_temp.fails($$SELECT '-1'::idempotency.snowflake$$) AS negative;
SELECT pg_temp.fails($$SELECT '9223372036854775808'::idempotency.snowflake$$) AS too_big;
SELECT pg_temp.fails($$SELECT ''::idempotency.snowflake$$) AS empty;
SELECT pg_temp.fails($$SELECT '12abc'::idempotency.snowflake$$) AS trailing;
SELECT pg_temp.fails($$SELECT '0x10'::idempotency.snowflake$$) AS hex;
SELECT pg_temp.fails($$SELECT '1 2'::idempotency.snowflake$$) AS two_numbers;

-- Binary I/O round-trips, and refuses a negative value on the wire.
SELECT snowflake_send('4194316295') AS wire, int8send(4194316295) AS same_as_bigint;
CREATE TEMP TABLE bin (id snowflake);
CREATE TEMP TABLE bin_back (id snowflake);
INSERT INTO bin VALUES ('4194316295'), ('0'), ('9223372036854775807');
\copy bin TO 'results/snowflake.bin' WITH (FORMAT binary)
\copy bin_back FROM 'results/snowflake.bin' WITH (FORMAT binary)
SELECT id FROM bin_back ORDER BY id;
CREATE TEMP TABLE bin_negative (id bigint);
INSERT INTO bin_negative VALUES (-5);
\copy bin_negative TO 'results/snowflake_negative.bin' WITH (FORMAT binary)
\copy bin_back FROM 'results/snowflake_negative.bin' WITH (FORMAT binary)
SELECT count(*) AS unchanged FROM bin_back;

-- Casts to and from integers.
SELECT 4194316295::bigint::snowflake, 7::snowflake, 4194316295::snowflake::bigint;
SELECT pg_temp.fails($$SELECT (-5)::bigint::idempotency.snowflake$$) AS negative_bigint;
SELECT pg_temp.fails($$SELECT (-5)::int::idempotency.snowflake$$) AS negative_int;
CREATE TEMP TABLE assign (s snowflake, b bigint);
INSERT INTO assign VALUES (12, '13'::snowflake);   -- assignment casts both ways
SELECT * FROM assign;

-- Comparison with snowflakes and with integer literals, both ways round.
SELECT '5'::snowflake < '6'::snowflake AS lt, '5'::snowflake = 5 AS eq_int,
       5 = '5'::snowflake AS int_eq, '5'::snowflake <> 6::bigint AS ne,
       '5'::snowflake >= 5 AS ge, 4 < '5'::snowflake AS int_lt,
       '5000000000'::snowflake > 4000000000 AS gt_big;

-- Every operator class is complete and valid.
SELECT opcname, amvalidate(oid) FROM pg_opclass
WHERE opcnamespace = 'idempotency'::regnamespace ORDER BY opcname COLLATE "C";

-- A primary key, btree and hash indexes, used for snowflake and integer
-- comparisons alike.
CREATE TEMP TABLE orders (id snowflake PRIMARY KEY, n int);
INSERT INTO orders SELECT (g::bigint << 22)::snowflake, g FROM generate_series(1, 2000) g;
CREATE INDEX orders_hash ON orders USING hash (id);
ANALYZE orders;
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT n FROM orders WHERE id = 8388608;
EXPLAIN (COSTS OFF) SELECT n FROM orders WHERE id >= 8388608::bigint AND id < '12582912';
SET enable_indexscan = off;
SET enable_bitmapscan = on;
EXPLAIN (COSTS OFF) SELECT n FROM orders WHERE id = '8388608';
RESET enable_indexscan;
RESET enable_bitmapscan;
RESET enable_seqscan;
SELECT n FROM orders WHERE id = 8388608;
SELECT count(*) FROM orders WHERE id BETWEEN 8388608 AND 12582912;
SELECT pg_temp.fails($$INSERT INTO orders VALUES (8388608, 0)$$) AS duplicate;

-- Joins against bigint columns, by hash and by merge.
CREATE TEMP TABLE refs (order_id bigint);
INSERT INTO refs SELECT g::bigint << 22 FROM generate_series(1, 2000, 7) g;
SET enable_mergejoin = off;
SET enable_nestloop = off;
SELECT count(*) FROM orders o JOIN refs r ON o.id = r.order_id;
SET enable_hashjoin = off;
SET enable_mergejoin = on;
SELECT count(*) FROM orders o JOIN refs r ON r.order_id = o.id;
RESET enable_hashjoin;
RESET enable_mergejoin;
RESET enable_nestloop;

-- Aggregates.
SELECT min(id), max(id) FROM orders;
SELECT min(id) IS NULL AS empty_min FROM orders WHERE false;

-- JSON carries snowflakes as strings, which JavaScript cannot round off.
SELECT to_json('912749439402115072'::snowflake) AS json,
       to_jsonb('912749439402115072'::snowflake) AS jsonb,
       json_build_object('id', '5'::snowflake) AS object,
       jsonb_typeof(to_jsonb('5'::snowflake)) AS type;

-- Decoding: 1000 ms after the default epoch, node 3, sequence 7.
SELECT snowflake_timestamp(s) AT TIME ZONE 'UTC' AS ts, snowflake_node(s) AS node,
       snowflake_sequence(s) AS seq
FROM (VALUES (((1000::bigint << 22) | (3 << 12) | 7)::snowflake)) v(s);
SELECT snowflake_timestamp(s) AT TIME ZONE 'UTC' AS last_instant,
       snowflake_node(s) AS node, snowflake_sequence(s) AS seq
FROM (VALUES (9223372036854775807::snowflake)) v(s);
SELECT snowflake_timestamp(NULL) IS NULL AS strict;

-- snowflake_at: the smallest ID of the millisecond, rounding down.
SELECT snowflake_at('2020-01-01 00:00:01+00') = (1000::bigint << 22) AS exact,
       snowflake_at('2020-01-01 00:00:01.0009+00') = (1000::bigint << 22) AS rounds_down,
       snowflake_at('2020-01-01 00:00:00+00')::bigint AS at_epoch,
       snowflake_timestamp(snowflake_at('2026-05-04 03:02:01.123+00')) AT TIME ZONE 'UTC' AS round_trip;
SELECT pg_temp.fails($$SELECT idempotency.snowflake_at('2019-12-31 23:59:59.999+00')$$) AS before_epoch;
SELECT pg_temp.fails($$SELECT idempotency.snowflake_at('2089-09-06 15:47:35.552+00')$$) AS past_41_bits;
SELECT snowflake_at('2089-09-06 15:47:35.551+00') AS last_millisecond;
SELECT pg_temp.fails($$SELECT idempotency.snowflake_at('infinity')$$) AS infinite;

-- Volatility and parallel labels as documented.
SELECT proname, provolatile, proparallel, proisstrict
FROM pg_proc WHERE pronamespace = 'idempotency'::regnamespace
  AND proname IN ('snowflake_id', 'snowflake_timestamp', 'snowflake_node',
                  'snowflake_sequence', 'snowflake_at')
ORDER BY proname COLLATE "C";

-- Every object of the extension carries a comment.  Array types and the
-- row types of tables and views, members since PostgreSQL 17, are
-- described by the object they come with.
SELECT count(*) AS uncommented
FROM pg_depend d
WHERE d.refclassid = 'pg_extension'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'idempotency')
  AND d.deptype = 'e'
  AND d.classid <> 'pg_cast'::regclass   -- casts are described by their function
  AND NOT (d.classid = 'pg_type'::regclass AND d.objid IN (
        SELECT typarray FROM pg_type
        UNION ALL
        SELECT t.oid FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid
        WHERE c.relkind <> 'c'))
  AND obj_description(d.objid, d.classid::regclass::text) IS NULL;

DROP TABLE bin, bin_back, bin_negative, assign, orders, refs;

-- PostgreSQL 18 lists the loaded modules with the name and version from
-- their magic block: this one reports the version the control file
-- installs.  Earlier versions have no such list; the same row stands in.
SELECT current_setting('server_version_num')::int >= 180000 AS module_list \gset
\if :module_list
SELECT m.module_name, m.version = e.extversion AS version_matches
FROM pg_get_loaded_modules() AS m, pg_extension AS e
WHERE e.extname = 'idempotency' AND m.file_name LIKE 'idempotency.%' \gset
\else
SELECT 'idempotency' AS module_name, true AS version_matches \gset
\endif
SELECT :'module_name' AS module_name, :'version_matches' AS version_matches;
