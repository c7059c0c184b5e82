/* idempotency--1.0.0--1.1.0.sql: from the first release to 1.1.0 */

\echo Use "ALTER EXTENSION idempotency UPDATE TO '1.1.0'" to load this file. \quit

-- Preloading: whether the server preloads the library.
CREATE FUNCTION idempotency.idem_preloaded()
RETURNS boolean
	AS 'MODULE_PATHNAME', 'idem_preloaded'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION idempotency.idem_preloaded() IS
	'whether the server preloads the library (shared_preload_libraries), which snowflake IDs, the counters and the purge worker need';
