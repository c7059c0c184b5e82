"""WSGI middleware (Flask, any PEP 3333 application) over psycopg 3's
blocking connections and a psycopg_pool.ConnectionPool.

    app.wsgi_app = IdempotencyMiddleware(app.wsgi_app, pool)

Round trips (README.md): BEGIN and the claim go in one pipeline, the
completion and COMMIT in another; a replay, 409 or 422 is answered after
the first, and its transaction is ended (ROLLBACK) once the answer is
handed to the server, in the response iterable's close().
"""

from __future__ import annotations

import io
import sys
from typing import Any, Callable, Iterable, List, Optional, Tuple
from urllib.parse import quote

import psycopg
from psycopg import pq
from psycopg_pool import PoolTimeout

from . import _core
from ._core import Answer, ClaimResult, Context, Options, log


def _target(environ: dict) -> bytes:
    """The request-target as the client sent it (path and query)."""
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if raw:
        raw_b = raw.encode("latin-1")
        if raw_b.startswith(b"/") or raw_b == b"*":
            return raw_b
        # An absolute-form target: keep what follows the authority.
        i = raw_b.find(b"/", raw_b.find(b"//") + 2)
        return raw_b[i:] if i >= 0 else b"/"
    path = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1")
    t = quote(path, safe="/;:@&=+$,!~*'()%").encode("ascii")
    qs = environ.get("QUERY_STRING", "")
    return t + b"?" + qs.encode("latin-1") if qs else t


def _read_body(environ: dict) -> bytes:
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    length = environ.get("CONTENT_LENGTH") or ""
    if length.strip().isdigit():
        return stream.read(int(length))
    if environ.get("wsgi.input_terminated"):
        return stream.read()
    return b""


class _Ending(list):
    """The answer's body, with close() ending the transaction after the
    server has sent it (so a replay waits for one round trip only)."""

    def __init__(self, body: bytes, finish: Callable[[], None]):
        super().__init__([body])
        self._finish = finish

    def close(self) -> None:
        self._finish()


class IdempotencyMiddleware:
    """Idempotency-Key handling for a WSGI application; see Options for
    the keyword arguments."""

    def __init__(self, app: Callable, pool: Any, **options: Any):
        self.app = app
        self.pool = pool
        self.opts = Options(**options)

    # -- entry ------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        raw = environ.get("HTTP_IDEMPOTENCY_KEY", "")
        if not raw:
            if self.opts.required:
                return self._send(start_response, _core.error_answer(400, f"{_core.HEADER} header is required"))
            return self.app(environ, start_response)
        key, bad = _core.check_key(raw.encode("latin-1"))
        if bad is not None:
            return self._send(start_response, bad)
        body = _read_body(environ)
        fp = _core.fingerprint(environ.get("REQUEST_METHOD", "GET"), _target(environ), body)
        scope = self.opts.scope_of(environ)
        run = self._multi if self.opts.multi_transaction else self._single
        try:
            return run(environ, start_response, key, scope, fp, body)  # type: ignore[arg-type]
        except _core.Unavailable as exc:
            log.error("idempotency: no database connection: %s", exc)
            return self._send(start_response, _core.error_answer(503, _core.UNAVAILABLE, retry_after=True))
        except Exception:
            log.exception("idempotency middleware failed for key in scope %r", scope)
            return self._send(start_response, _core.error_answer(500, _core.INTERNAL))

    # -- single-transaction mode -------------------------------------------
    def _single(self, environ, start_response, key, scope, fp, body):
        params = _core.claim_params(key, fp, scope, self.opts, lease=False)
        for attempt in range(self.opts.retries + 1):
            conn = self._getconn()
            try:
                with conn.pipeline():
                    conn.execute("BEGIN", prepare=False)
                    cur = conn.execute(_core.claim_sql(self.opts), params)
                claim = _core.claim_result(cur.fetchone())
                if claim.outcome not in ("claimed", "reclaimed"):
                    ans = _core.answer_for(claim)
                    return self._send(start_response, ans, lambda c=conn: self._end(c))
                ctx = Context(key, scope, claim, connection=conn, pool=self.pool)
                ans = self._call(environ, body, ctx)
                if ctx.error is not None:
                    raise ctx.error
                if ans.status >= 500:
                    self._end(conn)
                    conn = None
                    return self._send(start_response, ans)
                with conn.pipeline():
                    conn.execute(_core.COMPLETE_SQL,
                                 _core.completion_params(key, claim.token, scope, ans, self.opts.keep_headers))
                    conn.execute("COMMIT", prepare=False)
                self.pool.putconn(conn)
                conn = None
                return self._send(start_response, ans)
            except Exception as exc:
                if conn is None:
                    raise
                retry = _core.is_retryable(exc) or _core.is_connection_lost(exc, conn)
                if _core.is_connection_lost(exc, conn):
                    self.pool.putconn(conn)
                    self._check_pool()
                else:
                    self._end(conn)
                conn = None
                if not retry:
                    if isinstance(exc, psycopg.Error):
                        log.error("idempotency: %s: %s (SQLSTATE %s)", type(exc).__name__, exc, exc.sqlstate)
                    else:
                        log.exception("idempotency: the handler raised")
                    return self._send(start_response, _core.error_answer(500, _core.INTERNAL))
                log.info("idempotency: attempt %d of %d failed (%s), retrying",
                         attempt + 1, self.opts.retries + 1, exc)
        return self._send(start_response, _core.error_answer(503, _core.GAVE_UP, retry_after=True))

    # -- multi-transaction mode --------------------------------------------
    def _multi(self, environ, start_response, key, scope, fp, body):
        params = _core.claim_params(key, fp, scope, self.opts, lease=True)
        row = self._autocommit(_core.claim_sql(self.opts), params, retry_lost=True)
        if row is None:
            return self._send(start_response, _core.error_answer(503, _core.GAVE_UP, retry_after=True))
        claim = _core.claim_result(row)
        if claim.outcome not in ("claimed", "reclaimed"):
            return self._send(start_response, _core.answer_for(claim))
        ctx = _MultiContext(key, scope, claim, self)
        try:
            ans = self._call(environ, body, ctx)
            if ctx.error is not None:
                raise ctx.error
        except Exception:
            log.exception("idempotency: the handler raised")
            self._fail(ctx)
            return self._send(start_response, _core.error_answer(500, _core.INTERNAL))
        if ans.status >= 500:
            self._fail(ctx)
            return self._send(start_response, ans)
        try:
            done = self._autocommit(_core.COMPLETE_SQL,
                                    _core.completion_params(key, claim.token, scope, ans, self.opts.keep_headers),
                                    retry_lost=True, stale_is_final=True)
        except psycopg.Error as exc:
            if exc.sqlstate == "40001":
                # The lease ran out and another request took over.
                return self._send(start_response, _core.error_answer(409, _core.TOOK_OVER))
            raise
        if done is None:
            return self._send(start_response, _core.error_answer(503, _core.GAVE_UP, retry_after=True))
        return self._send(start_response, ans)

    def _fail(self, ctx: Context) -> None:
        try:
            self._autocommit(_core.FAIL_SQL, ctx._owner_params(), retry_lost=True, stale_is_final=True)
        except psycopg.Error as exc:
            log.warning("idempotency: could not record the failure (SQLSTATE %s)", exc.sqlstate)

    def _autocommit(self, sql: str, params: dict, retry_lost: bool = False,
                    stale_is_final: bool = False) -> Optional[Tuple[Any, ...]]:
        """One statement in autocommit, one round trip; retried on 40001/40P01
        (unless stale_is_final: then 40001 is raised) and on a lost
        connection.  None when the retries ran out."""
        for _ in range(self.opts.retries + 1):
            conn = self._getconn()
            try:
                with conn.pipeline():
                    cur = conn.execute(sql, params)
                row = cur.fetchone()
                self.pool.putconn(conn)
                return row
            except psycopg.Error as exc:
                lost = _core.is_connection_lost(exc, conn)
                self.pool.putconn(conn)
                if lost:
                    self._check_pool()
                    if retry_lost:
                        continue
                    raise
                if exc.sqlstate == "40001" and stale_is_final:
                    raise
                if exc.sqlstate not in _core.RETRYABLE_SQLSTATES:
                    raise
        return None

    # -- helpers -----------------------------------------------------------
    def _getconn(self) -> psycopg.Connection:
        try:
            conn = self.pool.getconn()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise _core.Unavailable(str(exc)) from exc
        if not conn.autocommit:
            conn.autocommit = True  # BEGIN and COMMIT are ours, pipelined
        return conn

    def _check_pool(self) -> None:
        try:
            self.pool.check()
        except Exception:  # the server may still be down: the pool retries
            pass

    def _end(self, conn: psycopg.Connection) -> None:
        """Roll back whatever is open and give the connection back."""
        try:
            if conn.info.transaction_status != pq.TransactionStatus.IDLE and not conn.broken:
                conn.execute("ROLLBACK", prepare=False)
        except psycopg.Error:
            pass
        finally:
            self.pool.putconn(conn)

    def _call(self, environ: dict, body: bytes, ctx: Context) -> Answer:
        """Run the application and buffer its whole response."""
        env = dict(environ)
        env["wsgi.input"] = io.BytesIO(body)
        env["CONTENT_LENGTH"] = str(len(body))
        env["idempotency"] = ctx
        got: List[Any] = []
        chunks: List[bytes] = []

        def start_response(status, headers, exc_info=None):
            if exc_info is not None and got:
                raise exc_info[1].with_traceback(exc_info[2])
            got[:] = [status, list(headers)]
            return chunks.append

        result = self.app(env, start_response)
        try:
            for chunk in result:
                chunks.append(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not got:
            raise RuntimeError("the application did not call start_response")
        return Answer(_core.parse_status(got[0]), got[1], b"".join(chunks))

    def _send(self, start_response: Callable, ans: Answer,
              finish: Optional[Callable[[], None]] = None) -> Iterable[bytes]:
        start_response(_core.status_line(ans.status), ans.with_length())
        return _Ending(ans.body, finish) if finish else [ans.body]


class _MultiContext(Context):
    def __init__(self, key: str, scope: str, claim: ClaimResult, mw: IdempotencyMiddleware):
        super().__init__(key, scope, claim, connection=None, pool=mw.pool, multi=True)
        self._mw = mw

    def checkpoint(self, point: str) -> bool:
        """Record how far the work got (idem_checkpoint); one round trip."""
        row = self._mw._autocommit(_core.CHECKPOINT_SQL, self._owner_params(point=point),
                                   retry_lost=True, stale_is_final=True)
        return bool(row and row[0])

    def extend(self, lease: _core.Duration):
        """Renew the lease from now (idem_extend); returns its new end."""
        row = self._mw._autocommit(_core.EXTEND_SQL,
                                   self._owner_params(lease=_core._duration(lease, "lease")),
                                   retry_lost=True, stale_is_final=True)
        return row[0] if row else None


def init_flask(app: Any, pool: Any, **options: Any) -> IdempotencyMiddleware:
    """Wrap a Flask application: app.wsgi_app becomes the middleware, and an
    exception that Flask turns into a 500 still reaches it (so that a
    40001 raised in a view is retried)."""
    from flask import request

    mw = IdempotencyMiddleware(app.wsgi_app, pool, **options)
    app.wsgi_app = mw

    @app.teardown_request
    def _keep_error(exc: Optional[BaseException]) -> None:
        if exc is not None:
            ctx = request.environ.get("idempotency")
            if ctx is not None:
                ctx.error = exc

    return mw
