"""What the WSGI and ASGI middleware share: options, SQL, fingerprints,
outcome-to-HTTP answers.

Nothing here does I/O.  The two middleware run the same flow (see
README.md, "How a request goes"), one with psycopg's blocking connections,
the other with its asyncio ones.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger("pg_idempotency")

HEADER = "Idempotency-Key"
MAX_KEY_BYTES = 255
RETRYABLE_SQLSTATES = ("40001", "40P01")

Duration = Union[None, int, float, datetime.timedelta]


def _duration(value: Duration, name: str) -> Optional[datetime.timedelta]:
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        d = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        d = datetime.timedelta(seconds=value)
    else:
        raise TypeError(f"{name} must be seconds or a timedelta, not {type(value).__name__}")
    if d <= datetime.timedelta(0):
        raise ValueError(f"{name} must be positive")
    return d


@dataclass
class Options:
    """The middleware's options (keyword arguments of either middleware)."""

    required: bool = False
    scope: Union[str, Callable[[Any], str]] = "default"
    keep_headers: Sequence[str] = ("location",)
    retries: int = 3
    wait_for: Duration = None
    multi_transaction: bool = False
    lease: Duration = None
    ttl: Duration = None

    def __post_init__(self) -> None:
        if isinstance(self.keep_headers, str):
            raise TypeError("keep_headers must be a list of header names, not a string")
        self.keep_headers = tuple(h.lower() for h in self.keep_headers)
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        self.wait_for = _duration(self.wait_for, "wait_for")
        if self.wait_for is not None and self.wait_for > datetime.timedelta(hours=1):
            raise ValueError("wait_for must be at most an hour")
        self.lease = _duration(self.lease, "lease")
        self.ttl = _duration(self.ttl, "ttl")

    def scope_of(self, request: Any) -> str:
        return self.scope(request) if callable(self.scope) else self.scope


@dataclass
class ClaimResult:
    """A row of idempotency.idem_claim, as Python values (see README, Types)."""

    outcome: str
    token: Optional[int]
    status: Optional[int]
    recovery_point: Optional[str]
    attempts: Optional[int]
    expires_at: Optional[datetime.datetime]
    body: Optional[bytes]
    content_type: Optional[str]
    headers: Optional[Dict[str, Any]]
    response: Any


# One statement per call, every argument named and typed, so that the
# server resolves the function once and psycopg may prepare it.
CLAIM_SQL = (
    "SELECT outcome::text, token, status, recovery_point, attempts, expires_at,"
    " body, content_type, headers, response"
    " FROM idempotency.idem_claim(%(key)s, ttl => %(ttl)s::interval,"
    " fingerprint => %(fingerprint)s::bytea, scope => %(scope)s::text,"
    " lease => %(lease)s::interval, wait => %(wait)s::boolean)"
)
# wait_for is named only when the option is set, so that a server from
# before wait_for serves the rest.
CLAIM_WAIT_SQL = CLAIM_SQL[:-1] + ", wait_for => %(wait_for)s::interval)"


def claim_sql(opts: "Options") -> str:
    return CLAIM_SQL if opts.wait_for is None else CLAIM_WAIT_SQL
COMPLETE_SQL = (
    "SELECT idempotency.idem_complete(%(key)s, %(token)s::bigint, status => %(status)s::int,"
    " scope => %(scope)s::text, body => %(body)s::bytea,"
    " content_type => %(content_type)s::text, headers => %(headers)s::jsonb)"
)
FAIL_SQL = (
    "SELECT idempotency.idem_fail(%(key)s, %(token)s::bigint, true, scope => %(scope)s::text)"
)
CHECKPOINT_SQL = (
    "SELECT idempotency.idem_checkpoint(%(key)s, %(token)s::bigint, %(point)s::text,"
    " %(scope)s::text)"
)
EXTEND_SQL = (
    "SELECT idempotency.idem_extend(%(key)s, %(token)s::bigint, %(lease)s::interval,"
    " %(scope)s::text)"
)


def claim_params(key: str, fp: bytes, scope: str, opts: Options, lease: bool) -> Dict[str, Any]:
    return {
        "key": key,
        "ttl": opts.ttl,
        "fingerprint": fp,
        "scope": scope,
        "lease": opts.lease if lease else None,
        # Without wait_for a duplicate is told at once (409), whether the
        # claim it meets is committed or not; with it, the server waits for
        # the owner up to the bound.  When several wait and the owner
        # ends, one takes over and the server keeps the others waiting for
        # it (since f22dfc4; before, they were told in_progress at once and
        # this client claimed again with what was left of the bound).
        "wait": opts.wait_for is not None,
        **({} if opts.wait_for is None else {"wait_for": opts.wait_for}),
    }


def claim_result(row: Tuple[Any, ...]) -> ClaimResult:
    return ClaimResult(*row)


def fingerprint(method: str, target: bytes, body: bytes) -> bytes:
    """SHA-256 of METHOD + " " + request-target + "\\n" + body (32 bytes)."""
    h = hashlib.sha256()
    h.update(method.upper().encode("ascii", "replace"))
    h.update(b" ")
    h.update(target)
    h.update(b"\n")
    h.update(body)
    return h.digest()


def check_key(raw: bytes) -> Tuple[Optional[str], Optional["Answer"]]:
    """The key as text, or the 400 answer for a key that cannot be one."""
    if len(raw) > MAX_KEY_BYTES:
        return None, error_answer(400, f"{HEADER} is longer than {MAX_KEY_BYTES} bytes")
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, error_answer(400, f"{HEADER} is not valid UTF-8")


def is_retryable(exc: BaseException) -> bool:
    """A serialization failure or deadlock anywhere in the exception's chain."""
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, psycopg.Error) and e.sqlstate in RETRYABLE_SQLSTATES:
            return True
        e = e.__cause__ or e.__context__
    return False


def is_connection_lost(exc: BaseException, conn: Any) -> bool:
    """The connection broke (server restart, network): the request may run
    again.  (psycopg raises a plain DatabaseError for a connection lost in
    a pipeline: the connection's state tells.)"""
    return isinstance(exc, psycopg.Error) and conn is not None and conn.broken


class Unavailable(Exception):
    """No connection could be had from the pool: answered 503."""


UNAVAILABLE = "the database is unavailable; retry the request"


@dataclass
class Answer:
    """A complete HTTP response: status, headers (name, value), body bytes."""

    status: int
    headers: List[Tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def with_length(self) -> List[Tuple[str, str]]:
        hs = [(k, v) for k, v in self.headers if k.lower() != "content-length"]
        hs.append(("Content-Length", str(len(self.body))))
        return hs


def error_answer(status: int, message: str, retry_after: bool = False) -> Answer:
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    headers = [("Content-Type", "application/json")]
    if retry_after:
        headers.append(("Retry-After", "1"))
    return Answer(status, headers, body)


IN_PROGRESS = "a request with this Idempotency-Key is in progress"
MISMATCH = "this Idempotency-Key was used with another request"
TOOK_OVER = "another request took this Idempotency-Key over"
GAVE_UP = "the request kept conflicting with others; retry it"
INTERNAL = "internal error"


def answer_for(c: ClaimResult) -> Answer:
    """The answer to an outcome that does not run the handler."""
    if c.outcome == "completed":
        return replay(c)
    if c.outcome == "in_progress":
        return error_answer(409, IN_PROGRESS, retry_after=True)
    if c.outcome == "mismatch":
        return error_answer(422, MISMATCH)
    raise ValueError(f"unexpected outcome {c.outcome!r}")


def replay(c: ClaimResult) -> Answer:
    """The stored response, byte for byte, marked Idempotent-Replayed."""
    headers: List[Tuple[str, str]] = []
    for name, value in (c.headers or {}).items():
        for v in value if isinstance(value, list) else [value]:
            headers.append((name, str(v)))
    body, ctype = c.body, c.content_type
    if body is None and c.response is not None:
        # Completed by an SQL caller with a jsonb response only.
        body = json.dumps(c.response, separators=(",", ":")).encode()
        ctype = ctype or "application/json"
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    headers.append(("Idempotent-Replayed", "true"))
    return Answer(c.status if c.status is not None else 200, headers, body or b"")


def completion_params(key: str, token: int, scope: str, ans: Answer, keep: Sequence[str]) -> Dict[str, Any]:
    kept: Dict[str, Any] = {}
    for name, value in ans.headers:
        n = name.lower()
        if n in keep and n != "content-type":
            if n in kept:
                prev = kept[n]
                kept[n] = (prev if isinstance(prev, list) else [prev]) + [value]
            else:
                kept[n] = value
    return {
        "key": key,
        "token": token,
        "status": ans.status,
        "scope": scope,
        "body": ans.body,
        "content_type": ans.header("content-type"),
        "headers": Jsonb(kept) if kept else None,
    }


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def parse_status(line: str) -> int:
    return int(line.split(None, 1)[0])


class Context:
    """What the handler gets: environ["idempotency"] (WSGI) or
    scope["idempotency"] (ASGI).

    Single-transaction mode: ``connection`` is the request's connection, in
    the transaction that holds the claim; run the handler's queries on it
    and do not commit.  Multi-transaction mode: ``connection`` is None; the
    claim is committed, ``token`` is the fencing token for other systems,
    and ``checkpoint``/``extend`` record progress and renew the lease.
    """

    def __init__(self, key: str, scope: str, claim: ClaimResult, connection: Any = None,
                 pool: Any = None, multi: bool = False):
        self.key = key
        self.scope = scope
        self.token: int = claim.token  # type: ignore[assignment]
        self.attempts: int = claim.attempts  # type: ignore[assignment]
        self.recovery_point: Optional[str] = claim.recovery_point
        self.outcome = claim.outcome
        self.connection = connection
        self.pool = pool
        self.multi_transaction = multi
        # An exception the framework turned into a 500 (Flask: set by
        # init_flask's teardown hook); treated as if the handler raised it.
        self.error: Optional[BaseException] = None

    def _owner_params(self, **extra: Any) -> Dict[str, Any]:
        return dict(key=self.key, token=self.token, scope=self.scope, **extra)


def context(request: Any) -> Optional[Context]:
    """The Context of a request: pass a WSGI environ, an ASGI scope, or an
    object with one (Flask's request.environ, Starlette's request.scope)."""
    for attr in ("environ", "scope"):
        inner = getattr(request, attr, None)
        if isinstance(inner, dict):
            request = inner
            break
    return request.get("idempotency") if isinstance(request, dict) else None
