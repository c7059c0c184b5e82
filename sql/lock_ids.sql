--
-- Keyed lock ids cannot be aimed across scopes.  A plain hash of scope and
-- key can be run backwards: the key below, in scope shop_b, was computed
-- to have the id that the lock of 'invoice:42' in shop_a had, and so let
-- a role of shop_b hold shop_a's lock.  Ids are now an HMAC under a secret
-- only the extension's owner can read.  Lock behaviour: keyed_lock.spec.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

SELECT idem_lock_id('collide-key:RD6j=` K=~8k', 'shop_b')
    <> idem_lock_id('invoice:42', 'shop_a') AS no_collision,
       idem_lock_id('invoice:42', 'shop_a')
    <> hashtextextended('invoice:42', hashtextextended('shop_a', x'6964656d6c6f636b'::bigint)) AS not_the_public_hash,
       idem_lock_id('ab', 'c') <> idem_lock_id('a', 'bc') AS framed,
       idem_lock_id('invoice:42', 'shop_a') = idem_lock_id('invoice:42', 'shop_a') AS stable;
SELECT idem_lock_id('invoice:42', 'shop_a') AS id_before \gset
\c -
SET search_path = public, idempotency;
\i sql/helpers.psql
SELECT idem_lock_id('invoice:42', 'shop_a') = :id_before AS same_in_another_session;

-- Held, the lock shows in pg_locks under that id; the aimed key takes a
-- lock of its own, a second one.
CREATE ROLE regress_lock_a IN ROLE idempotency_user;
CREATE ROLE regress_lock_b IN ROLE idempotency_user;
INSERT INTO policies (scope, allowed_roles) VALUES ('shop_a', '{regress_lock_a}'), ('shop_b', '{regress_lock_b}');
BEGIN;
SET LOCAL ROLE regress_lock_a;
SELECT idem_lock('invoice:42', 'shop_a');
SELECT count(*) AS held FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 73 AND pid = pg_backend_pid()
  AND ((classid::bigint << 32) | objid::bigint) = (idem_lock_id('invoice:42', 'shop_a') & x'ffffffffffffffff'::bigint);
SET LOCAL ROLE regress_lock_b;
SELECT pg_temp.fails($$SELECT idempotency.idem_lock('invoice:42', 'shop_a')$$) AS other_scope;
SELECT idem_try_lock('collide-key:RD6j=` K=~8k', 'shop_b') AS aimed_key_taken;
SELECT count(*) AS keyed_locks_held FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 73 AND pid = pg_backend_pid();
COMMIT;

-- The secret is nobody's to read but the owner's.
SET ROLE regress_lock_a;
SELECT pg_temp.fails($$SELECT * FROM idempotency.lock_secret$$) AS user_reads_secret;
RESET ROLE;
SET ROLE idempotency_admin;
SELECT pg_temp.fails($$SELECT * FROM idempotency.lock_secret$$) AS admin_reads_secret;
RESET ROLE;
SELECT count(*) AS rows, min(octet_length(secret)) AS bytes FROM lock_secret;

DELETE FROM policies WHERE scope IN ('shop_a', 'shop_b');
DROP ROLE regress_lock_a, regress_lock_b;
