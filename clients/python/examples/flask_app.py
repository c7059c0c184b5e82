"""Flask: POST /orders creates an order once per Idempotency-Key.

    createdb shop && psql shop -c 'CREATE EXTENSION idempotency' \
        -c 'CREATE TABLE orders (id idempotency.snowflake PRIMARY KEY, item text)'
    PGDATABASE=shop flask --app examples/flask_app.py run
    curl -i -X POST localhost:5000/orders -H 'Idempotency-Key: k1' -d '{"item":"book"}'
"""

import json

from flask import Flask, request
from psycopg_pool import ConnectionPool

from pg_idempotency import context
from pg_idempotency.wsgi import init_flask

app = Flask(__name__)
pool = ConnectionPool("", min_size=1, max_size=10, kwargs={"autocommit": True})
init_flask(app, pool, required=True, wait_for=5)


@app.post("/orders")
def create_order():
    conn = context(request).connection          # the transaction that holds the claim
    item = json.loads(request.get_data())["item"]
    (order_id,) = conn.execute(
        "INSERT INTO orders VALUES (idempotency.snowflake_id(), %s) RETURNING id", (item,)
    ).fetchone()                                # a snowflake arrives as a str
    return {"id": order_id, "item": item}, 201, {"Location": f"/orders/{order_id}"}
