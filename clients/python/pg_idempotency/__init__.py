"""Idempotency-Key middleware for WSGI and ASGI applications over the
idempotency PostgreSQL extension (psycopg 3).

    from pg_idempotency.wsgi import IdempotencyMiddleware, init_flask   # Flask, WSGI
    from pg_idempotency.asgi import IdempotencyMiddleware               # Starlette, FastAPI
    from pg_idempotency import context   # context(request) -> Context or None
"""

from ._core import ClaimResult, Context, Options, context, fingerprint

__all__ = ["ClaimResult", "Context", "Options", "context", "fingerprint"]
__version__ = "0.1.0"
