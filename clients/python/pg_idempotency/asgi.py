"""ASGI middleware (Starlette, FastAPI, any ASGI 3 application) over
psycopg 3's asyncio connections and a psycopg_pool.AsyncConnectionPool.

    app.add_middleware(IdempotencyMiddleware, pool=pool)      # Starlette/FastAPI
    app = IdempotencyMiddleware(app, pool)                     # plain ASGI

The flow is the WSGI middleware's (see wsgi.py and README.md); a replay,
409 or 422 is sent before its transaction is ended.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import psycopg
from psycopg import pq
from psycopg_pool import PoolTimeout

from . import _core
from ._core import Answer, ClaimResult, Context, Options, log

Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> Optional[bytes]:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None


def _target(scope: Scope) -> bytes:
    """The request-target as the client sent it (path and query).  Servers
    differ on whether raw_path holds the query: it is cut at '?'."""
    raw = scope.get("raw_path")
    if not raw:
        raw = scope.get("root_path", "").encode() + scope.get("path", "/").encode()
        from urllib.parse import quote

        raw = quote(raw, safe="/;:@&=+$,!~*'()%").encode("ascii")
    raw = raw.split(b"?", 1)[0]
    qs = scope.get("query_string", b"")
    return raw + b"?" + qs if qs else raw


async def _read_body(receive: Receive) -> Tuple[bytes, Optional[Dict[str, Any]]]:
    chunks: List[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return b"".join(chunks), msg
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(chunks), None


async def _send(send: Send, ans: Answer) -> None:
    await send({"type": "http.response.start", "status": ans.status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in ans.with_length()]})
    await send({"type": "http.response.body", "body": ans.body})


class IdempotencyMiddleware:
    """Idempotency-Key handling for an ASGI application; pool is an
    AsyncConnectionPool (opened; or opened on first use if not); see
    Options for the other keyword arguments."""

    def __init__(self, app: Callable, pool: Any, **options: Any):
        self.app = app
        self.pool = pool
        self.opts = Options(**options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = _header(scope, b"idempotency-key") or b""
        if not raw:
            if self.opts.required:
                await _send(send, _core.error_answer(400, f"{_core.HEADER} header is required"))
                return
            await self.app(scope, receive, send)
            return
        key, bad = _core.check_key(raw)
        if bad is not None:
            await _send(send, bad)
            return
        body, disconnect = await _read_body(receive)
        if disconnect is not None:
            return
        fp = _core.fingerprint(scope.get("method", "GET"), _target(scope), body)
        iscope = self.opts.scope_of(scope)
        run = self._multi if self.opts.multi_transaction else self._single
        try:
            await run(scope, receive, send, key, iscope, fp, body)
        except _core.Unavailable as exc:
            log.error("idempotency: no database connection: %s", exc)
            await _send(send, _core.error_answer(503, _core.UNAVAILABLE, retry_after=True))
        except Exception:
            log.exception("idempotency middleware failed for key in scope %r", iscope)
            await _send(send, _core.error_answer(500, _core.INTERNAL))

    # -- single-transaction mode -------------------------------------------
    async def _single(self, scope, receive, send, key, iscope, fp, body) -> None:
        params = _core.claim_params(key, fp, iscope, self.opts, lease=False)
        for attempt in range(self.opts.retries + 1):
            conn = await self._getconn()
            try:
                async with conn.pipeline():
                    await conn.execute("BEGIN", prepare=False)
                    cur = await conn.execute(_core.claim_sql(self.opts), params)
                claim = _core.claim_result(await cur.fetchone())
                if claim.outcome not in ("claimed", "reclaimed"):
                    c, conn = conn, None
                    try:
                        await _send(send, _core.answer_for(claim))
                    finally:
                        await self._end(c)
                    return
                ctx = Context(key, iscope, claim, connection=conn, pool=self.pool)
                ans = await self._call(scope, receive, body, ctx)
                if ctx.error is not None:
                    raise ctx.error
                if ans.status >= 500:
                    c, conn = conn, None
                    await self._end(c)
                    await _send(send, ans)
                    return
                async with conn.pipeline():
                    await conn.execute(_core.COMPLETE_SQL,
                                       _core.completion_params(key, claim.token, iscope, ans, self.opts.keep_headers))
                    await conn.execute("COMMIT", prepare=False)
                c, conn = conn, None
                await self.pool.putconn(c)
                await _send(send, ans)
                return
            except Exception as exc:
                if conn is None:
                    raise
                lost = _core.is_connection_lost(exc, conn)
                retry = lost or _core.is_retryable(exc)
                if lost:
                    await self.pool.putconn(conn)
                    await self._check_pool()
                else:
                    await self._end(conn)
                if not retry:
                    if isinstance(exc, psycopg.Error):
                        log.error("idempotency: %s: %s (SQLSTATE %s)", type(exc).__name__, exc, exc.sqlstate)
                    else:
                        log.exception("idempotency: the handler raised")
                    await _send(send, _core.error_answer(500, _core.INTERNAL))
                    return
                log.info("idempotency: attempt %d of %d failed (%s), retrying",
                         attempt + 1, self.opts.retries + 1, exc)
        await _send(send, _core.error_answer(503, _core.GAVE_UP, retry_after=True))

    # -- multi-transaction mode --------------------------------------------
    async def _multi(self, scope, receive, send, key, iscope, fp, body) -> None:
        params = _core.claim_params(key, fp, iscope, self.opts, lease=True)
        row = await self._autocommit(_core.claim_sql(self.opts), params)
        if row is None:
            await _send(send, _core.error_answer(503, _core.GAVE_UP, retry_after=True))
            return
        claim = _core.claim_result(row)
        if claim.outcome not in ("claimed", "reclaimed"):
            await _send(send, _core.answer_for(claim))
            return
        ctx = _MultiContext(key, iscope, claim, self)
        try:
            ans = await self._call(scope, receive, body, ctx)
            if ctx.error is not None:
                raise ctx.error
        except Exception:
            log.exception("idempotency: the handler raised")
            await self._fail(ctx)
            await _send(send, _core.error_answer(500, _core.INTERNAL))
            return
        if ans.status >= 500:
            await self._fail(ctx)
            await _send(send, ans)
            return
        try:
            done = await self._autocommit(
                _core.COMPLETE_SQL,
                _core.completion_params(key, claim.token, iscope, ans, self.opts.keep_headers),
                stale_is_final=True)
        except psycopg.Error as exc:
            if exc.sqlstate == "40001":
                await _send(send, _core.error_answer(409, _core.TOOK_OVER))
                return
            raise
        if done is None:
            await _send(send, _core.error_answer(503, _core.GAVE_UP, retry_after=True))
            return
        await _send(send, ans)

    async def _fail(self, ctx: Context) -> None:
        try:
            await self._autocommit(_core.FAIL_SQL, ctx._owner_params(), stale_is_final=True)
        except psycopg.Error as exc:
            log.warning("idempotency: could not record the failure (SQLSTATE %s)", exc.sqlstate)

    async def _autocommit(self, sql: str, params: dict,
                          stale_is_final: bool = False) -> Optional[Tuple[Any, ...]]:
        """One statement in autocommit, one round trip; see wsgi.py."""
        for _ in range(self.opts.retries + 1):
            conn = await self._getconn()
            try:
                async with conn.pipeline():
                    cur = await conn.execute(sql, params)
                row = await cur.fetchone()
                await self.pool.putconn(conn)
                return row
            except psycopg.Error as exc:
                lost = _core.is_connection_lost(exc, conn)
                await self.pool.putconn(conn)
                if lost:
                    await self._check_pool()
                    continue
                if exc.sqlstate == "40001" and stale_is_final:
                    raise
                if exc.sqlstate not in _core.RETRYABLE_SQLSTATES:
                    raise
        return None

    # -- helpers -----------------------------------------------------------
    async def _getconn(self) -> psycopg.AsyncConnection:
        if getattr(self.pool, "_opened", True) is False:
            await self.pool.open()
        try:
            conn = await self.pool.getconn()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise _core.Unavailable(str(exc)) from exc
        if not conn.autocommit:
            await conn.set_autocommit(True)
        return conn

    async def _check_pool(self) -> None:
        try:
            await self.pool.check()
        except Exception:
            pass

    async def _end(self, conn: psycopg.AsyncConnection) -> None:
        try:
            if conn.info.transaction_status != pq.TransactionStatus.IDLE and not conn.broken:
                await conn.execute("ROLLBACK", prepare=False)
        except psycopg.Error:
            pass
        finally:
            await self.pool.putconn(conn)

    async def _call(self, scope: Scope, receive: Receive, body: bytes, ctx: Context) -> Answer:
        """Run the application and buffer its whole response."""
        sent_body = False

        async def replay_receive() -> Dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        start: Dict[str, Any] = {}
        chunks: List[bytes] = []

        async def capture(msg: Dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                start.update(msg)
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))

        await self.app(dict(scope, idempotency=ctx), replay_receive, capture)
        if not start:
            raise RuntimeError("the application sent no response")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", ())]
        return Answer(int(start["status"]), headers, b"".join(chunks))


class _MultiContext(Context):
    def __init__(self, key: str, scope: str, claim: ClaimResult, mw: IdempotencyMiddleware):
        super().__init__(key, scope, claim, connection=None, pool=mw.pool, multi=True)
        self._mw = mw

    async def checkpoint(self, point: str) -> bool:
        """Record how far the work got (idem_checkpoint); one round trip."""
        row = await self._mw._autocommit(_core.CHECKPOINT_SQL, self._owner_params(point=point),
                                         stale_is_final=True)
        return bool(row and row[0])

    async def extend(self, lease: _core.Duration):
        """Renew the lease from now (idem_extend); returns its new end."""
        row = await self._mw._autocommit(
            _core.EXTEND_SQL, self._owner_params(lease=_core._duration(lease, "lease")),
            stale_is_final=True)
        return row[0] if row else None
