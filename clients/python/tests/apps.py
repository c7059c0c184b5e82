"""The applications the tests serve: one Flask (WSGI) and one Starlette
(ASGI) app with the same /orders handler, steered per key by World.plan.

The handler inserts an effect row (its id a snowflake) in the request's
transaction (single-transaction mode) or in a transaction of its own
(multi-transaction mode), and answers 201 with a JSON body that tells which
run of the key it was, so a replay and a second execution differ.
"""

import asyncio
import json
import threading
import time
from collections import Counter

from flask import Flask, Response, request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response as SResponse
from starlette.routing import Route

from pg_idempotency import context

INSERT = ("INSERT INTO pyclient_effects (id, key, token, run)"
          " VALUES (idempotency.snowflake_id(), %s, %s, %s) RETURNING id")
RAISE_40001 = ("DO $$ BEGIN RAISE EXCEPTION 'simulated conflict'"
               " USING ERRCODE = 'serialization_failure'; END $$")


class World:
    """Per-test state shared by the test and the handler."""

    def __init__(self):
        self.plan = {}          # key -> dict of what the handler does
        self.runs = Counter()   # key -> how many times the handler ran
        self.ended = {}         # key -> monotonic time the last run returned
        self.lock = threading.Lock()

    def start(self, key):
        with self.lock:
            self.runs[key] += 1
            return self.runs[key], self.plan.get(key, {})

    def end(self, key):
        with self.lock:
            self.ended[key] = time.monotonic()


def _applies(plan, name, run):
    v = plan.get(name)
    return v is not None and (v == "all" or run in v)


def _answer(key, run, ctx, ident, body):
    return json.dumps({"id": ident, "key": key, "run": run, "attempts": ctx.attempts,
                       "recovery_point": ctx.recovery_point, "token": str(ctx.token),
                       "echo": body.decode()}, sort_keys=True)


def make_flask(world, pool, **options):
    from pg_idempotency.wsgi import init_flask

    app = Flask("wsgi_orders")

    @app.route("/orders", methods=["POST", "PUT"])
    @app.route("/orders/<path:rest>", methods=["POST", "PUT"])
    def orders(rest=None):
        ctx = context(flask_request)
        if ctx is None:
            return Response('{"idempotent":false}', 200, content_type="application/json")
        key = ctx.key
        run, plan = world.start(key)
        body = flask_request.get_data()
        if _applies(plan, "extend_runs", run):
            world.extended = ctx.extend(plan["extend"])
        if _applies(plan, "sleep_runs", run):
            time.sleep(plan["sleep"])
        if _applies(plan, "checkpoint_runs", run):
            ctx.checkpoint(plan["checkpoint"])
        if _applies(plan, "raise_runs", run):
            world.end(key)
            raise RuntimeError("handler failure on purpose")
        if plan.get("noop"):
            world.end(key)
            return Response("{}", 201, content_type="application/json")
        if ctx.multi_transaction:
            with ctx.pool.connection() as c:
                ident = c.execute(INSERT, (key, ctx.token, run)).fetchone()[0]
        else:
            ident = ctx.connection.execute(INSERT, (key, ctx.token, run)).fetchone()[0]
        if _applies(plan, "sqlstate_runs", run):
            ctx.connection.execute(RAISE_40001)
        status = plan.get("status", 201)
        world.end(key)
        return Response(_answer(key, run, ctx, ident, body), status,
                        headers={"Location": f"/orders/{ident}", "X-Not-Kept": "1"},
                        content_type="application/json; charset=utf-8")

    init_flask(app, pool, **options)
    return app


def make_starlette(world, pool, **options):
    from pg_idempotency.asgi import IdempotencyMiddleware

    async def orders(request: Request):
        ctx = context(request)
        if ctx is None:
            return SResponse('{"idempotent":false}', 200, media_type="application/json")
        key = ctx.key
        run, plan = world.start(key)
        body = await request.body()
        if _applies(plan, "extend_runs", run):
            world.extended = await ctx.extend(plan["extend"])
        if _applies(plan, "sleep_runs", run):
            await asyncio.sleep(plan["sleep"])
        if _applies(plan, "checkpoint_runs", run):
            await ctx.checkpoint(plan["checkpoint"])
        if _applies(plan, "raise_runs", run):
            world.end(key)
            raise RuntimeError("handler failure on purpose")
        if plan.get("noop"):
            world.end(key)
            return SResponse("{}", 201, media_type="application/json")
        if ctx.multi_transaction:
            async with ctx.pool.connection() as c:
                cur = await c.execute(INSERT, (key, ctx.token, run))
                ident = (await cur.fetchone())[0]
        else:
            cur = await ctx.connection.execute(INSERT, (key, ctx.token, run))
            ident = (await cur.fetchone())[0]
        if _applies(plan, "sqlstate_runs", run):
            await ctx.connection.execute(RAISE_40001)
        status = plan.get("status", 201)
        world.end(key)
        return SResponse(_answer(key, run, ctx, ident, body), status,
                         headers={"Location": f"/orders/{ident}", "X-Not-Kept": "1"},
                         media_type="application/json; charset=utf-8")

    app = Starlette(routes=[Route("/orders", orders, methods=["POST", "PUT"]),
                            Route("/orders/{rest:path}", orders, methods=["POST", "PUT"])])
    app.add_middleware(IdempotencyMiddleware, pool=pool, **options)
    return app
