"""Multi-transaction mode: the handler calls another system (a payment
provider, say), so the claim commits first under a lease and no database
transaction stays open while it works.  The fencing token goes with the
call, so the provider can refuse an owner that lost its lease; a
checkpoint tells whoever takes over how far this attempt got.
"""

import json

from flask import Flask, request
from psycopg_pool import ConnectionPool

from pg_idempotency import context
from pg_idempotency.wsgi import init_flask

app = Flask(__name__)
pool = ConnectionPool("", min_size=1, max_size=10, kwargs={"autocommit": True})
init_flask(app, pool, required=True, multi_transaction=True, lease=30, wait_for=10)


def charge(amount, fencing_token):          # stands for the external call
    return {"charge": f"ch_{fencing_token}", "amount": amount}


@app.post("/payments")
def pay():
    ctx = context(request)
    amount = json.loads(request.get_data())["amount"]
    if ctx.recovery_point == "charged":    # an earlier attempt got this far
        return {"status": "already charged"}, 200
    result = charge(amount, ctx.token)
    ctx.checkpoint("charged")
    ctx.extend(30)                          # more time for what follows
    return result, 201
