"""pg_ctl restart -m immediate in the middle of a storm loses no request
that was answered 2xx: afterwards every such key replays the same body,
and its effect row exists exactly once."""

import os
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import effects, new_key

KEYS = 160
WORKERS = 8


def restart_server():
    pg_ctl = os.path.join(os.environ["PG_BIN"], "pg_ctl")
    log = os.path.join(os.environ.get("IDEM_CLIENT_WORK", "/tmp"), "postgres-restart.log")
    subprocess.run([pg_ctl, "-D", os.environ["IDEM_PGDATA"], "-l", log, "-m", "immediate",
                    "-w", "-t", "60", "restart"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


@pytest.mark.skipif(not (os.environ.get("PG_BIN") and os.environ.get("IDEM_PGDATA")),
                    reason="needs PG_BIN and IDEM_PGDATA to restart the server")
def test_restart_in_a_storm_loses_no_2xx(serve, db):
    s = serve(pool_max=8)
    keys = [new_key() for _ in range(KEYS)]
    answered = {}           # key -> body of its 2xx answer
    failures = []
    lock = threading.Lock()
    restarted = threading.Event()
    before_restart = []

    def worker(mine):
        for k in mine:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    r = s.request(key=k)
                except Exception as exc:   # the connection to the app broke
                    r = None
                    with lock:
                        failures.append(repr(exc))
                if r is not None and not 200 <= r.status < 300:
                    with lock:
                        failures.append(r.status)
                if r is not None and 200 <= r.status < 300:
                    with lock:
                        answered[k] = r.body
                        if not restarted.is_set():
                            before_restart.append(k)
                    break
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(keys[i::WORKERS],)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    while len(answered) < KEYS // 4:
        time.sleep(0.01)
    restart_server()
    restarted.set()
    for t in threads:
        t.join()
    with psycopg.connect(autocommit=True) as check:   # db's backend is gone
        print(f"\nrestart storm ({s.kind}): {len(before_restart)} keys answered before the restart,"
              f" {KEYS - len(before_restart)} after; refused or failed on the way: {failures}")
        assert KEYS // 4 <= len(before_restart) < KEYS
        assert len(answered) == KEYS, f"{KEYS - len(answered)} keys never answered 2xx"
        for k, body in answered.items():
            r = s.request(key=k)
            assert r.status == 201 and r.headers.get("idempotent-replayed") == "true", (k, r.status)
            assert r.body == body, k
            assert effects(check, k) == 1, k
