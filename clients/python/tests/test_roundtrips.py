"""Round trips per path, counted by a proxy between the middleware's pool
and the server (README, "Round trips").  The handler does no database
work of its own, so every trip counted is the middleware's."""

import asyncio
import io

import psycopg
import pytest

from conftest import ASGIServer, CountingProxy, WSGIServer, new_key

# path -> (single-transaction, multi-transaction)
EXPECTED = {
    "first time": (2, 2),
    "replay": (2, 1),
    "in progress": (2, 1),
    "mismatch": (2, 1),
}


@pytest.fixture
def proxy():
    p = CountingProxy()
    yield p
    p.close()


def measure(server, proxy, db):
    counts = {}
    for rnd in range(7):   # psycopg prepares statements from the 5th use on
        k = new_key()
        server.world.plan[k] = {"noop": True}
        proxy.reset()
        got = {}
        assert server.request(key=k).status == 201
        got["first time"] = proxy.reset()
        assert server.request(key=k).status == 201
        got["replay"] = proxy.reset()
        assert server.request(key=k, body=b"other").status == 422
        got["mismatch"] = proxy.reset()
        busy = new_key()
        db.execute("SELECT FROM idempotency.idem_claim(%s, lease => '1 minute')", (busy,))
        assert server.request(key=busy).status == 409
        got["in progress"] = proxy.reset()
        if rnd:
            assert got == counts, f"round {rnd}: {got} != {counts}"
        counts = got
    return counts


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
@pytest.mark.parametrize("mode", ["single", "multi"])
def test_round_trips_per_path(db, proxy, kind, mode):
    cls = WSGIServer if kind == "wsgi" else ASGIServer
    s = cls(conninfo=proxy.conninfo(), pool_max=1, multi_transaction=(mode == "multi"))
    try:
        counts = measure(s, proxy, db)
    finally:
        s.close()
    col = 0 if mode == "single" else 1
    print(f"\nround trips ({kind}, {mode}-transaction): {counts}")
    assert counts == {path: v[col] for path, v in EXPECTED.items()}


def test_wsgi_replay_is_answered_after_one_round_trip(db, proxy):
    """The replay's ROLLBACK goes out when the server closes the response."""
    from psycopg_pool import ConnectionPool
    from pg_idempotency.wsgi import IdempotencyMiddleware

    def app(environ, start_response):
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made"]

    with ConnectionPool(proxy.conninfo(), min_size=1, max_size=1) as pool:
        mw = IdempotencyMiddleware(app, pool)
        k = new_key()

        def call():
            env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/x", "QUERY_STRING": "",
                   "HTTP_IDEMPOTENCY_KEY": k, "CONTENT_LENGTH": "1", "wsgi.input": io.BytesIO(b"a")}
            seen = []
            body = mw(env, lambda status, headers: seen.append((status, headers)))
            return seen[0], body

        (status, _), body = call()
        assert status.startswith("201")
        body.close() if hasattr(body, "close") else None
        proxy.reset()
        (status, headers), body = call()
        assert status.startswith("201") and ("Idempotent-Replayed", "true") in headers
        assert b"".join(body) == b"made"
        assert proxy.reset() == 1          # the answer is ready after one round trip
        body.close()
        assert proxy.reset() == 1          # then the ROLLBACK


def test_asgi_replay_is_sent_after_one_round_trip(db, proxy):
    from psycopg_pool import AsyncConnectionPool
    from pg_idempotency.asgi import IdempotencyMiddleware

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})

    async def main():
        async with AsyncConnectionPool(proxy.conninfo(), min_size=1, max_size=1) as pool:
            mw = IdempotencyMiddleware(app, pool)
            k = new_key().encode()

            async def call():
                sent, trips_at_send = [], []

                async def receive():
                    return {"type": "http.request", "body": b"a", "more_body": False}

                async def send(msg):
                    sent.append(msg)
                    if msg["type"] == "http.response.body":
                        trips_at_send.append(proxy.reset())

                scope = {"type": "http", "method": "POST", "path": "/x", "raw_path": b"/x",
                         "query_string": b"", "headers": [(b"idempotency-key", k)]}
                await mw(scope, receive, send)
                return sent, trips_at_send[0]

            await call()
            proxy.reset()
            sent, trips = await call()
            assert (b"idempotent-replayed", b"true") in sent[0]["headers"]
            assert trips == 1
            assert proxy.reset() == 1

    asyncio.run(main())
