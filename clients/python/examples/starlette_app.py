"""Starlette (FastAPI alike: app.add_middleware takes the same arguments).

    uvicorn examples.starlette_app:app
"""

import json
from contextlib import asynccontextmanager

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pg_idempotency import context
from pg_idempotency.asgi import IdempotencyMiddleware

pool = AsyncConnectionPool("", min_size=1, max_size=10, kwargs={"autocommit": True}, open=False)


async def create_order(request: Request):
    conn = context(request).connection          # AsyncConnection, in the claim's transaction
    item = json.loads(await request.body())["item"]
    cur = await conn.execute(
        "INSERT INTO orders VALUES (idempotency.snowflake_id(), %s) RETURNING id", (item,))
    (order_id,) = await cur.fetchone()
    return JSONResponse({"id": order_id, "item": item}, 201, {"Location": f"/orders/{order_id}"})


@asynccontextmanager
async def lifespan(app):
    await pool.open()
    yield
    await pool.close()


app = Starlette(routes=[Route("/orders", create_order, methods=["POST"])], lifespan=lifespan)
app.add_middleware(IdempotencyMiddleware, pool=pool, required=True, wait_for=5)
