"""The middleware's behaviour over HTTP, for WSGI (Flask) and ASGI
(Starlette) alike: issue 17's required cases and the outcome mapping."""

import json
import statistics
import time

import pytest

from conftest import effects, new_key, stored

REPLAYED = "idempotent-replayed"


def is_replay(r):
    return r.headers.get(REPLAYED) == "true"


def test_first_time_then_replay_byte_for_byte(serve, db, key):
    s = serve()
    first = s.request(key=key)
    assert first.status == 201
    assert REPLAYED not in first.headers
    assert json.loads(first.body)["run"] == 1
    again = s.request(key=key)
    assert again.status == 201 and is_replay(again)
    assert again.body == first.body
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == first.headers["content-type"] == "application/json; charset=utf-8"
    assert "x-not-kept" in first.headers and "x-not-kept" not in again.headers
    assert s.world.runs[key] == 1 and effects(db, key) == 1
    assert stored(db, key) == "completed"


def test_64_concurrent_identical_requests_execute_once(serve, db, key):
    s = serve(wait_for=20)
    rs = s.many([dict(key=key)] * 64)
    assert [r.status for r in rs] == [201] * 64
    fresh = [r for r in rs if not is_replay(r)]
    replays = [r for r in rs if is_replay(r)]
    assert len(fresh) == 1 and len(replays) == 63
    assert all(r.body == fresh[0].body for r in replays)
    assert s.world.runs[key] == 1 and effects(db, key) == 1


def test_same_key_other_request_is_422(serve, db, key):
    s = serve()
    assert s.request(key=key, body=b'{"item":"book"}').status == 201
    other = s.request(key=key, body=b'{"item":"lamp"}')
    assert other.status == 422
    assert other.headers["content-type"] == "application/json"
    assert "error" in json.loads(other.body)
    assert s.request(key=key, path="/orders/elsewhere").status == 422
    assert s.request(key=key, method="PUT").status == 422
    assert is_replay(s.request(key=key, body=b'{"item":"book"}'))
    assert s.world.runs[key] == 1


def test_handler_that_raises_stores_nothing_and_runs_again(serve, db, key):
    s = serve()
    s.world.plan[key] = {"raise_runs": {1}}
    r = s.request(key=key)
    assert r.status == 500
    assert stored(db, key) is None and effects(db, key) == 0
    r = s.request(key=key)
    assert r.status == 201 and not is_replay(r)
    assert json.loads(r.body)["run"] == 2
    assert effects(db, key) == 1


def test_5xx_answer_stores_nothing(serve, db, key):
    s = serve()
    s.world.plan[key] = {"status": 503}
    assert s.request(key=key).status == 503
    assert stored(db, key) is None and effects(db, key) == 0
    s.world.plan[key] = {}
    r = s.request(key=key)
    assert r.status == 201 and json.loads(r.body)["run"] == 2


def test_40001_runs_the_transaction_again(serve, db, key):
    s = serve()
    s.world.plan[key] = {"sqlstate_runs": {1}}
    r = s.request(key=key)
    assert r.status == 201 and not is_replay(r)
    assert json.loads(r.body)["run"] == 2
    assert s.world.runs[key] == 2
    assert effects(db, key) == 1        # the first attempt's insert rolled back


def test_40001_every_time_gives_503_after_the_retries(serve, db, key):
    s = serve(retries=2)
    s.world.plan[key] = {"sqlstate_runs": "all"}
    r = s.request(key=key)
    assert r.status == 503 and r.headers["retry-after"] == "1"
    assert s.world.runs[key] == 3
    assert stored(db, key) is None and effects(db, key) == 0


def test_missing_key(serve, db):
    assert serve().request().status == 200           # runs without idempotency
    r = serve(required=True).request()
    assert r.status == 400 and "error" in json.loads(r.body)


def test_key_length_limit(serve, db):
    s = serve()
    assert s.request(key="k" * 256).status == 400
    k = new_key()
    k = k + "x" * (255 - len(k))
    assert s.request(key=k).status == 201


def test_in_progress_is_409_at_once(serve, db, key):
    s = serve()
    s.world.plan[key] = {"sleep_runs": {1}, "sleep": 1.0}
    owner = s.start(key=key)
    time.sleep(0.3)
    t0 = time.monotonic()
    dup = s.request(key=key)
    assert dup.status == 409 and dup.headers["retry-after"] == "1"
    assert dup.t - t0 < 0.5
    assert owner.result().status == 201
    assert s.world.runs[key] == 1


def test_scope_separates_keys(serve, db, key):
    def tenant(request):
        if "headers" in request:           # ASGI scope
            return dict(request["headers"]).get(b"x-tenant", b"default").decode()
        return request.get("HTTP_X_TENANT", "default")  # WSGI environ

    s = serve(scope=tenant)
    a = s.request(key=key, headers={"X-Tenant": "tenant-a"})
    b = s.request(key=key, headers={"X-Tenant": "tenant-b"})
    assert a.status == b.status == 201 and not is_replay(b)
    assert s.world.runs[key] == 2
    assert stored(db, key, "tenant-a") == stored(db, key, "tenant-b") == "completed"
    assert stored(db, key) is None


def test_snowflake_is_a_decimal_string(serve, db, key):
    s = serve()
    ident = json.loads(s.request(key=key).body)["id"]
    assert isinstance(ident, str) and int(ident) > 2 ** 53
    row = db.execute("SELECT key, id FROM pyclient_effects WHERE id OPERATOR(idempotency.=) %s::idempotency.snowflake",
                     (ident,)).fetchone()
    assert row == (key, ident)
    assert isinstance(db.execute("SELECT idempotency.snowflake_id()").fetchone()[0], str)


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_16_waiting_duplicates_get_the_answer_within_100ms(serve, db, key, mode):
    s = serve(wait_for=10, multi_transaction=(mode == "multi"))
    s.world.plan[key] = {"sleep_runs": {1}, "sleep": 1.0}
    owner = s.start(key=key)
    time.sleep(0.3)
    dups = s.many([dict(key=key)] * 16)
    first = owner.result()
    assert first.status == 201 and not is_replay(first)
    assert all(d.status == 201 and is_replay(d) and d.body == first.body for d in dups)
    # The handler returned before the commit: the latencies are upper bounds.
    lat = sorted((d.t - s.world.ended[key]) * 1000 for d in dups)
    dist = "min %.1f p50 %.1f p90 %.1f max %.1f ms" % (
        lat[0], statistics.median(lat), lat[int(0.9 * (len(lat) - 1))], lat[-1])
    print(f"\nwaiting latency ({s.kind}, {mode}-transaction, 16 duplicates): {dist}")
    assert lat[-1] < 100, dist
    assert s.world.runs[key] == 1


def test_lease_run_out_is_taken_over_exactly_once(serve, db, key):
    s = serve(multi_transaction=True, lease=1)
    s.world.plan[key] = {"sleep_runs": {1}, "sleep": 2.5}
    owner = s.start(key=key)
    time.sleep(1.4)                        # the owner's lease is over
    dups = s.many([dict(key=key)] * 8)
    took = [d for d in dups if d.status == 201 and not is_replay(d)]
    assert len(took) == 1, [d.status for d in dups]
    assert all(d.status in (201, 409) for d in dups)
    assert json.loads(took[0].body)["attempts"] == 2
    late = owner.result()
    assert late.status == 409                  # its completion was fenced off
    assert s.world.runs[key] == 2
    after = s.request(key=key)
    assert is_replay(after) and after.body == took[0].body


@pytest.mark.parametrize("case", ["multi, lease runs out", "multi, owner fails", "single, owner rolls back"])
def test_waiting_duplicates_take_over_once(serve, db, key, case):
    multi = case.startswith("multi")
    s = serve(multi_transaction=multi, lease=1 if "lease" in case else None, wait_for=10)
    plan = {"sleep_runs": {1}, "sleep": 2.5 if "lease" in case else 1.0}
    if "lease" not in case:
        plan["raise_runs"] = {1}
    s.world.plan[key] = plan
    owner = s.start(key=key)
    time.sleep(0.3)
    dups = s.many([dict(key=key)] * 8)
    took = [d for d in dups if not is_replay(d)]
    assert len(took) == 1 and took[0].status == 201, [(d.status, d.body) for d in dups]
    assert all(d.status == 201 and d.body == took[0].body for d in dups)
    assert json.loads(took[0].body)["run"] == 2
    assert owner.result().status == (409 if "lease" in case else 500)
    assert s.world.runs[key] == 2


def test_multi_transaction_extend_keeps_the_key(serve, db, key):
    s = serve(multi_transaction=True, lease=1)
    s.world.plan[key] = {"extend_runs": {1}, "extend": 5, "sleep_runs": {1}, "sleep": 1.6}
    owner = s.start(key=key)
    time.sleep(1.3)                        # past the first lease, within the extended one
    assert s.request(key=key).status == 409
    assert owner.result().status == 201
    assert s.world.extended is not None and s.world.runs[key] == 1


def test_multi_transaction_checkpoint_reaches_the_next_owner(serve, db, key):
    s = serve(multi_transaction=True)
    s.world.plan[key] = {"checkpoint_runs": {1}, "checkpoint": "charged", "raise_runs": {1}}
    assert s.request(key=key).status == 500
    assert stored(db, key) == "failed"
    r = s.request(key=key)
    assert r.status == 201
    body = json.loads(r.body)
    assert (body["run"], body["attempts"], body["recovery_point"]) == (2, 2, "charged")
    assert is_replay(s.request(key=key))


def test_fingerprint_is_sha256_of_method_target_and_body(serve, db, key):
    import hashlib

    s = serve()
    body = b'{"b": 1,  "a": 2}'
    target = "/orders/a%20b%7E?z=1&a=%41"
    assert s.request(key=key, body=body, path=target).status == 201
    fp = db.execute("SELECT fingerprint FROM idempotency.claims WHERE key = %s", (key,)).fetchone()[0]
    assert fp == hashlib.sha256(b"POST " + target.encode() + b"\n" + body).digest()
    # The query as sent: another order of its parameters is another request.
    assert s.request(key=key, body=body, path="/orders/a%20b%7E?a=%41&z=1").status == 422
