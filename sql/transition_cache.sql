--
-- idem_transition holds its table's guard across its SELECT ... FOR UPDATE,
-- where user code runs.  Here a row-level security policy whose function,
-- at every row it is asked about, makes the guard cache drop that guard
-- (a GRANT invalidates the table), builds another guard in its place (an
-- INSERT into another guarded table), and makes the whole cache go (a
-- change to the machines).  The call must go on judging with the guard it
-- started with: the right outcomes, no crash.  The guard's memory is
-- reclaimed once the call ends.
--
SET search_path = public, idempotency;
\i sql/helpers.psql

SELECT idem_machine('chore', 'todo->doing', 'doing->done');
SELECT idem_machine('jotting', 'open->closed');
CREATE TABLE chores (id int PRIMARY KEY, state text NOT NULL, version bigint);
CREATE TABLE jottings (id serial PRIMARY KEY, body text, status text NOT NULL, rev int);
SELECT idem_guard('chores', machine => 'chore', version_column => 'version');
SELECT idem_guard('jottings', 'status', 'jotting', 'rev');
INSERT INTO chores VALUES (1, 'todo', 0), (2, 'todo', 0), (3, 'todo', 0), (4, 'todo', 0), (5, 'todo', 0);

CREATE ROLE regress_churner;
CREATE FUNCTION churn_guards(chore int) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
	GRANT TRIGGER ON public.chores TO regress_churner;
	REVOKE TRIGGER ON public.chores FROM regress_churner;
	INSERT INTO public.jottings (body, status) VALUES ('after a grant', 'open');
	UPDATE idempotency.machines SET created_at = created_at WHERE name = 'jotting';
	INSERT INTO public.jottings (body, status) VALUES ('after a machine change', 'open');
	IF chore = 5 THEN
		RAISE EXCEPTION 'chore 5 is off limits';
	END IF;
	RETURN true;
END $$;
CREATE POLICY churn ON chores USING (churn_guards(id));
ALTER TABLE chores ENABLE ROW LEVEL SECURITY;
GRANT SELECT, UPDATE ON chores TO regress_churner;

SET ROLE regress_churner;
SELECT * FROM idem_transition('chores', 1, 'doing');
SELECT * FROM idem_transition('chores', 1, 'done', 2);
SELECT * FROM idem_transition('chores', 2, 'done');
SELECT * FROM idem_transition('chores', 3, 'doing', 7);
SELECT * FROM idem_transition('chores', 3, 'doing', lock => 'nowait');
SELECT * FROM idem_transition('chores', 4, 'doing', lock => 'skip');
SELECT * FROM idem_transition('chores', 4, 'doing');
-- Failing calls (a key that is no integer; the policy raising after it
-- churned the cache) leave nothing pinned behind.
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('chores', 'x'::text, 'doing')$$) AS failed_call;
SELECT pg_temp.fails($$SELECT idempotency.idem_transition('chores', 5, 'doing')$$) AS failed_in_policy;
RESET ROLE;
SELECT id, state, version FROM chores ORDER BY id;
SELECT count(*) > 0 AS policy_ran FROM jottings;
-- The guards built meanwhile work, and plain UPDATEs of both tables too.
UPDATE chores SET state = 'done' WHERE id = 3 RETURNING id, state, version;
UPDATE jottings SET status = 'closed' WHERE id = 1 RETURNING id, status, rev;
SELECT pg_temp.fails($$UPDATE chores SET state = 'todo' WHERE id = 4$$) AS guard_still_judges;

-- The guard's memory: a cache dropped while a guard was pinned is freed
-- when the call ends (the context list shows no retired guards left).
-- PostgreSQL 18 replaced the column parent with path, the context ids
-- from the top down to the context's own (one call: ids are per call).
SELECT current_setting('server_version_num')::int >= 180000 AS context_paths \gset
\if :context_paths
WITH c AS MATERIALIZED (SELECT * FROM pg_backend_memory_contexts)
SELECT count(*) AS retired
FROM c JOIN c AS p ON p.path[p.level] = c.path[c.level - 1]
WHERE c.name = 'idempotency guards' AND p.name = 'idempotency retired guards' \gset
-- The same join must find the live cache under its parent.
WITH c AS MATERIALIZED (SELECT * FROM pg_backend_memory_contexts)
SELECT string_agg(p.name, ', ' ORDER BY p.name) AS cache_parent
FROM c JOIN c AS p ON p.path[p.level] = c.path[c.level - 1]
WHERE c.name = 'idempotency guards' \gset
\else
SELECT count(*) AS retired
FROM pg_backend_memory_contexts WHERE name = 'idempotency guards' AND parent = 'idempotency retired guards' \gset
SELECT string_agg(parent, ', ' ORDER BY parent) AS cache_parent
FROM pg_backend_memory_contexts WHERE name = 'idempotency guards' \gset
\endif
SELECT :retired AS retired_caches_left, :'cache_parent' AS cache_parent;

DROP TABLE chores, jottings;
DROP FUNCTION churn_guards(int);
DROP ROLE regress_churner;
DELETE FROM machines WHERE name IN ('chore', 'jotting');
