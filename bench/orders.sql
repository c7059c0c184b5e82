-- bench/orders.sql: the order table and the two ways of placing an order
-- once that bench/http.sh (services ext-sql and ext-fn) and
-- bench/instructions.sh compare: place_order, a handler for idem_serve,
-- and order_once, the claim, the order and the completion hand-written in
-- one PL/pgSQL function.  Both claim in the scope 'orders'.
DROP TABLE IF EXISTS orders;
CREATE TABLE orders (id bigserial PRIMARY KEY, key text NOT NULL, amount int NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now());
-- The handler of app.js's ext-sql mode: the JavaScript handler's work.
CREATE OR REPLACE FUNCTION place_order(key text, request bytea,
	OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
LANGUAGE plpgsql AS $$
DECLARE
	amount int := (convert_from(request, 'UTF8')::jsonb ->> 'amount')::int;
	id bigint;
BEGIN
	INSERT INTO orders (key, amount) VALUES (key, amount) RETURNING orders.id INTO id;
	status := 201;
	body := convert_to(json_build_object('id', id::text, 'amount', amount)::text, 'UTF8');
	content_type := 'application/json';
END $$;
-- app.js's ext-fn mode: the claim, the order and the completion written
-- out in one function, as a team would without the client.
CREATE OR REPLACE FUNCTION order_once(k text, request bytea, fp bytea,
	OUT outcome idempotency.idem_outcome, OUT status int, OUT body bytea)
LANGUAGE plpgsql AS $$
DECLARE
	c idempotency.idem_claim_result := idempotency.idem_claim(k, NULL, fp, 'orders');
	amount int;
	id bigint;
BEGIN
	outcome := c.outcome;
	IF c.outcome NOT IN ('claimed', 'reclaimed') THEN
		status := c.status;
		body := c.body;
		RETURN;
	END IF;
	amount := (convert_from(request, 'UTF8')::jsonb ->> 'amount')::int;
	INSERT INTO orders (key, amount) VALUES (k, amount) RETURNING orders.id INTO id;
	status := 201;
	body := convert_to(json_build_object('id', id::text, 'amount', amount)::text, 'UTF8');
	PERFORM idempotency.idem_complete(k, c.token, NULL, status, 'orders', body, 'application/json');
END $$;
