"""Fixtures: a real server (libpq's PG* environment), the two apps served
for real (Flask under werkzeug's threaded HTTP server; Starlette through
httpx's ASGI transport on an event loop of its own), and a counting proxy
for round trips."""

import asyncio
import os
import select
import socket
import sys
import threading
import time
import uuid
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from apps import World, make_flask, make_starlette  # noqa: E402

Resp = namedtuple("Resp", "status headers body t")

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS idempotency;
CREATE TABLE IF NOT EXISTS pyclient_effects (
    id idempotency.snowflake PRIMARY KEY,
    key text NOT NULL,
    token bigint,
    run int
);
"""


@pytest.fixture(scope="session")
def schema():
    with psycopg.connect(autocommit=True) as conn:
        conn.execute(SCHEMA)


@pytest.fixture
def db(schema):
    """A connection of the test's own (a fresh one: a test may restart the server)."""
    with psycopg.connect(autocommit=True) as conn:
        yield conn


@pytest.fixture
def key():
    return "py-" + uuid.uuid4().hex


def new_key():
    return "py-" + uuid.uuid4().hex


def effects(db, key):
    return db.execute("SELECT count(*) FROM pyclient_effects WHERE key = %s", (key,)).fetchone()[0]


def stored(db, key, scope="default"):
    """The live claim row's state, or None (idem_lookup)."""
    row = db.execute("SELECT (c).state::text FROM idempotency.idem_lookup(%s, %s) c", (key, scope)).fetchone()
    return row[0] if row else None


class WSGIServer:
    kind = "wsgi"

    def __init__(self, conninfo="", pool_max=20, **options):
        from werkzeug.serving import make_server

        self.world = World()
        self.pool = ConnectionPool(conninfo, min_size=1, max_size=pool_max,
                                   kwargs={"autocommit": True}, open=True)
        self.app = make_flask(self.world, self.pool, **options)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.client = httpx.Client(base_url=self.base, timeout=60,
                                   limits=httpx.Limits(max_connections=100))

    def request(self, key=None, body=b'{"item":"book"}', path="/orders", method="POST", headers=None):
        h = dict(headers or {})
        if key is not None:
            h["Idempotency-Key"] = key
        r = self.client.request(method, path, content=body, headers=h)
        return Resp(r.status_code, r.headers, r.content, time.monotonic())

    def many(self, calls):
        """calls: list of kwargs for request(), sent concurrently."""
        with ThreadPoolExecutor(max_workers=len(calls)) as ex:
            return list(ex.map(lambda kw: self.request(**kw), calls))

    def start(self, **kw):
        """Send one request in the background; .result() gives its Resp."""
        ex = ThreadPoolExecutor(max_workers=1)
        fut = ex.submit(self.request, **kw)
        ex.shutdown(wait=False)
        return fut

    def close(self):
        self.server.shutdown()
        self.client.close()
        self.pool.close()


class ASGIServer:
    kind = "asgi"

    def __init__(self, conninfo="", pool_max=20, **options):
        self.world = World()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def setup():
            self.pool = AsyncConnectionPool(conninfo, min_size=1, max_size=pool_max,
                                            kwargs={"autocommit": True}, open=False)
            await self.pool.open()
            self.app = make_starlette(self.world, self.pool, **options)
            self.client = httpx.AsyncClient(app=self.app, base_url="http://test", timeout=60)

        self._run(setup())

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _request(self, key=None, body=b'{"item":"book"}', path="/orders", method="POST", headers=None):
        h = dict(headers or {})
        if key is not None:
            h["Idempotency-Key"] = key
        r = await self.client.request(method, path, content=body, headers=h)
        return Resp(r.status_code, r.headers, r.content, time.monotonic())

    def request(self, **kw):
        return self._run(self._request(**kw))

    def many(self, calls):
        async def all_of():
            return await asyncio.gather(*(self._request(**kw) for kw in calls))
        return self._run(all_of())

    def start(self, **kw):
        return asyncio.run_coroutine_threadsafe(self._request(**kw), self.loop)

    def close(self):
        async def down():
            await self.client.aclose()
            await self.pool.close()
        self._run(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(params=["wsgi", "asgi"])
def serve(request, db):
    """serve(**options) -> a running server of the parametrised kind."""
    made = []

    def make(**options):
        cls = WSGIServer if request.param == "wsgi" else ASGIServer
        s = cls(**options)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


class CountingProxy:
    """A TCP proxy in front of the server's Unix socket that counts round
    trips: a round trip is the client sending after the server has
    answered (or for the first time).  Pipelined statements sent together
    count once, as they should."""

    def __init__(self):
        host = os.environ.get("PGHOST", "/var/run/postgresql")
        port = os.environ.get("PGPORT", "5432")
        self.target = os.path.join(host, f".s.PGSQL.{port}")
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.trips = 0
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def conninfo(self):
        return f"host=127.0.0.1 port={self.port} sslmode=disable"

    def reset(self):
        time.sleep(0.05)   # let the last replies through
        with self.lock:
            n, self.trips = self.trips, 0
        return n

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.target)
            threading.Thread(target=self._pump, args=(c, s), daemon=True).start()

    def _pump(self, client, server):
        last = "server"
        try:
            while True:
                r, _, _ = select.select([client, server], [], [])
                for sock in r:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        server.sendall(data)
                        if last == "server":
                            with self.lock:
                                self.trips += 1
                        last = "client"
                    else:
                        client.sendall(data)
                        last = "server"
        except OSError:
            pass
        finally:
            client.close()
            server.close()

    def close(self):
        self.stopped = True
        self.listener.close()
