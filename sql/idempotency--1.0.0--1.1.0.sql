/* idempotency--1.0.0--1.1.0.sql: from the first release to 1.1.0 */

\echo Use "ALTER EXTENSION idempotency UPDATE TO '1.1.0'" to load this file. \quit
