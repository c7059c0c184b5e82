--
-- idem_serve: one request in one statement (claim, handler, stored
-- answer), the handler a function of the caller's with the caller's rights.
--
SET search_path = public;
\i sql/helpers.psql
\pset null '∅'

CREATE TABLE serve_orders (id serial PRIMARY KEY, key text, amount int);
CREATE FUNCTION place_order(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE plpgsql AS $$
DECLARE
	amount int := (convert_from(request, 'UTF8')::jsonb ->> 'amount')::int;
	id int;
BEGIN
	IF amount IS NULL THEN
		status := 400; body := convert_to('{"error": "amount"}', 'UTF8');
		content_type := 'application/json';
		RETURN;
	END IF;
	IF amount < 0 THEN
		-- A server error: not stored, and the order undone.
		INSERT INTO serve_orders (key, amount) VALUES (key, amount);
		status := 503; body := 'try again'; content_type := 'text/plain';
		RETURN;
	END IF;
	INSERT INTO serve_orders (key, amount) VALUES (key, amount) RETURNING serve_orders.id INTO id;
	status := 201;
	body := convert_to(format('{"id": %s,  "amount": %s}', id, amount), 'UTF8');
	content_type := 'application/json';
	headers := jsonb_build_object('location', '/orders/' || id);
END $$;

-- First time: the handler runs and its answer is stored; again: replayed.
SELECT outcome, status, convert_from(body, 'UTF8') AS body, content_type, headers
FROM idempotency.idem_serve('place_order(text, bytea)', 's-1', '{"amount": 7}');
SELECT outcome, status, convert_from(body, 'UTF8') AS body, content_type, headers
FROM idempotency.idem_serve('place_order(text, bytea)', 's-1', '{"amount": 7}');
SELECT key, amount FROM serve_orders ORDER BY id;

-- A client error is stored like any answer below 500.
SELECT outcome, status, convert_from(body, 'UTF8') AS body
FROM idempotency.idem_serve('place_order(text, bytea)', 's-2', '{}');
SELECT outcome, status FROM idempotency.idem_serve('place_order(text, bytea)', 's-2', '{"amount": 1}');

-- A server error: answered, not stored, its writes undone; a retry runs again.
SELECT outcome, status, convert_from(body, 'UTF8') AS body, content_type
FROM idempotency.idem_serve('place_order(text, bytea)', 's-3', '{"amount": -1}');
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-3';
SELECT count(*) AS orders FROM serve_orders WHERE key = 's-3';

-- A fingerprint: the same key with another request is a mismatch.
SELECT outcome FROM idempotency.idem_serve('place_order(text, bytea)', 's-4', '{"amount": 4}',
	fingerprint => sha256('{"amount": 4}'));
SELECT outcome, status, body FROM idempotency.idem_serve('place_order(text, bytea)', 's-4', '{"amount": 5}',
	fingerprint => sha256('{"amount": 5}'));

-- A handler that raises: the statement fails and leaves nothing.
CREATE FUNCTION failing(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$;
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('failing(text, bytea)', 's-5', 'x')$$) AS raises;
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-5';

-- A handler of another shape is refused before anything is claimed.
CREATE FUNCTION wrong(k text) RETURNS int LANGUAGE sql AS 'SELECT 1';
SELECT pg_temp.fails($$SELECT * FROM idempotency.idem_serve('wrong(text)', 's-6', 'x')$$) AS wrong_shape;
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-6';

-- The handler runs with the caller's rights: a caller who may not run it,
-- or not write what it writes, is refused, and nothing is claimed.
CREATE ROLE regress_serve_app IN ROLE idempotency_user;
GRANT USAGE ON SCHEMA public TO regress_serve_app;
SET ROLE regress_serve_app;
SELECT split_part(pg_temp.fails($$SELECT * FROM idempotency.idem_serve('place_order(text, bytea)', 's-7', '{"amount": 1}')$$), ' | ', 1) AS no_right;
RESET ROLE;
SELECT count(*) AS claims FROM idempotency.claims WHERE key = 's-7';
REVOKE USAGE ON SCHEMA public FROM regress_serve_app;
DROP ROLE regress_serve_app;

DROP FUNCTION place_order(text, bytea), failing(text, bytea), wrong(text);
DROP TABLE serve_orders;
DELETE FROM idempotency.claims WHERE key LIKE 's-%';
