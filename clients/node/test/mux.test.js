'use strict'
// serve() with `multiplex`: the statements of concurrent requests share a
// few pipelined connections.  Each stays its own transaction, an error ends
// only its own request, a lost connection costs only the requests in
// flight on it, and the connections go back to the pool when idle.

const test = require('node:test')
const assert = require('node:assert/strict')
const { serve, wrap } = require('..')
const h = require('./helpers')

const HANDLER = 'node_mux_order(text, bytea)'
const FUNCTION = `CREATE OR REPLACE FUNCTION node_mux_order(key text, request bytea,
      OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
    LANGUAGE plpgsql AS $$
    DECLARE
      amount int := (convert_from(request, 'UTF8')::jsonb ->> 'amount')::int;  -- 'x' fails: 22P02
    BEGIN
      IF amount = 0 THEN PERFORM pg_sleep(0.05); END IF;
      IF amount = 1000 THEN PERFORM pg_sleep(0.6); END IF;
      -- would leave its session read-only, but idem_serve undoes a handler's settings
      IF amount = 2000 THEN PERFORM set_config('default_transaction_read_only', 'on', false); END IF;
      -- drops the session's prepared statements: the next idem_node_serve there fails (26000)
      IF amount = 3000 THEN EXECUTE 'DEALLOCATE ALL'; END IF;
      INSERT INTO node_effects (key, run) VALUES (key, 1);
      status := 201;
      body := convert_to(format('{"amount": %s, "backend": %s, "nonce": "%s"}',
                                amount, pg_backend_pid(), md5(random()::text)), 'UTF8');
      content_type := 'application/json';
    END $$`

const db = h.fixture(FUNCTION)

// Run f with a server on a pool of its own (so that its connections can
// be counted), then close both (the pool unless f ended it).
async function withMux(multiplex, f, counter = null, options = {}) {
  const pool = h.makePool({ max: 10, counter })
  const srv = await h.serve(serve(pool, HANDLER, { ...h.quiet, ...options, multiplex }), counter)
  try {
    await f({ pool, srv })
  } finally {
    await srv.close()
    if (!pool.ending) await pool.end()
  }
}

test('options: a pool without pipeline mode, a bad size and wrap() are refused', async () => {
  const plain = h.makePool({ pipeline: false })
  try {
    assert.throws(() => serve(plain, HANDLER, { multiplex: 2 }), /pipeline: true/)
    assert.doesNotThrow(() => serve(plain, HANDLER, { multiplex: 0 }))
  } finally {
    await plain.end()
  }
  const pool = h.makePool()
  try {
    assert.throws(() => serve(pool, HANDLER, { multiplex: -1 }), RangeError)
    assert.throws(() => serve(pool, HANDLER, { multiplex: 1.5 }), RangeError)
    assert.throws(() => wrap(pool, () => {}, { multiplex: 2 }), /serve\(\) only/)
    assert.throws(() => serve({ query() {} }, HANDLER, { multiplex: 2 }), TypeError)
    assert.throws(() => serve(pool, HANDLER, { multiplex: 10 }), /less than the pool's max \(10\)/)
    assert.doesNotThrow(() => serve(pool, HANDLER, { multiplex: 9 }))
  } finally {
    await pool.end()
  }
  const timed = h.makePool({ query_timeout: 1000 })
  try {
    assert.throws(() => serve(timed, HANDLER, { multiplex: 2 }), /statement_timeout/)
  } finally {
    await timed.end()
  }
})

// The duplicates that find the key in progress are sent again with waitFor,
// each on a connection of its own; without it they would get 409.
test('64 concurrent identical requests on 2 shared connections: one effect, 63 byte-identical replays', async () => {
  await withMux(2, async (s) => {
    await h.identicalStorm(s.srv, db.pool, 'mux-storm')
    assert.equal(s.pool.idleCount, s.pool.totalCount)
  }, null, { waitFor: 20000 })
})

test('64 requests at once on 2 shared connections: 2 connections, given back afterwards', async () => {
  await withMux(2, async (s) => {
    const keys = Array.from({ length: 64 }, (_, i) => h.uniqueKey(`mux-many${i}`))
    const many = await Promise.all(keys.map((k) => h.request(s.srv, { key: k, body: '{"amount": 3}' })))
    assert.deepEqual([...new Set(many.map((a) => a.status))], [201])
    const backends = new Set(many.map((a) => JSON.parse(a.body).backend))
    assert.ok(backends.size <= 2, `statements ran on ${backends.size} backends`)
    assert.ok(s.pool.totalCount <= 2, `the pool opened ${s.pool.totalCount} connections`)
    assert.equal(s.pool.idleCount, s.pool.totalCount)
    for (const k of keys) assert.equal(await h.effects(db.pool, k), 1, k)
  }, null, { stallMs: 5000 }) // (a busy machine may hold a statement up 50 ms)
})

test('without multiplex the same burst takes a connection per statement', async () => {
  await withMux(0, async (s) => {
    const keys = Array.from({ length: 32 }, (_, i) => h.uniqueKey(`nomux${i}`))
    const many = await Promise.all(keys.map((k) => h.request(s.srv, { key: k, body: '{"amount": 0}' })))
    assert.ok(new Set(many.map((a) => JSON.parse(a.body).backend)).size > 2)
  })
})

test('one round trip per request, and an error ends only its own request', async () => {
  const counter = { roundTrips: 0 }
  await withMux(1, async (s) => {
    const key = h.uniqueKey('mux-one')
    const first = await h.request(s.srv, { key, body: '{"amount": 4}' })
    assert.equal(first.status, 201)
    assert.equal(first.headers['x-test-round-trips'], '1')
    // Good and failing requests pipelined on the one connection.
    const good = Array.from({ length: 20 }, (_, i) => h.uniqueKey(`mux-good${i}`))
    const bad = Array.from({ length: 20 }, (_, i) => h.uniqueKey(`mux-bad${i}`))
    const sent = []
    for (let i = 0; i < 20; i++) {
      sent.push(h.request(s.srv, { key: good[i], body: '{"amount": 5}' }))
      sent.push(h.request(s.srv, { key: bad[i], body: '{"amount": "x"}' }))
    }
    const answers = await Promise.all(sent)
    for (let i = 0; i < 20; i++) {
      assert.equal(answers[2 * i].status, 201, good[i])
      assert.equal(answers[2 * i + 1].status, 500, bad[i])
      assert.equal(await h.effects(db.pool, good[i]), 1)
      assert.equal(await h.effects(db.pool, bad[i]), 0)
    }
    // A failed request stored nothing: sent again right, it runs.
    assert.equal((await h.request(s.srv, { key: bad[0], body: '{"amount": "x"}' })).status, 500)
    assert.equal((await h.request(s.srv, { key: bad[1], body: '{"amount": 6}' })).status, 201)
    assert.equal(s.pool.totalCount, 1)
  }, counter, { stallMs: 5000 })
})

test('a shared connection killed mid-storm: its requests get 503, none runs twice, the pool recovers', async () => {
  await withMux(2, async (s) => {
    const codes = await h.killStorm(s.srv, db.pool, 'mux-kill', 80, '{"amount": 0}')
    assert.ok(codes.includes(503), 'the kill failed no request')
    assert.equal(s.pool.idleCount, s.pool.totalCount)
  })
})

test('a slow statement holds up only the requests already queued behind it', async () => {
  await withMux(1, async (s) => {
    const slow = h.request(s.srv, { key: h.uniqueKey('mux-slow'), body: '{"amount": 1000}' })
    await h.sleep(150)
    const fast = await Promise.all(
      Array.from({ length: 10 }, (_, i) => h.request(s.srv, { key: h.uniqueKey(`mux-fast${i}`), body: '{"amount": 7}' })))
    const slowBackend = JSON.parse((await slow).body).backend
    for (const a of fast) {
      assert.equal(a.status, 201)
      assert.notEqual(JSON.parse(a.body).backend, slowBackend, 'a fast request waited behind the slow one')
    }
  })
})

// The statuses of n requests sent one after the other, after one with body.
async function statusesAfter(srv, body, n) {
  assert.equal((await h.request(srv, { key: h.uniqueKey('mux-first'), body })).status, 201)
  const statuses = []
  for (let i = 0; i < n; i++) {
    statuses.push((await h.request(srv, { key: h.uniqueKey(`mux-after${i}`), body: '{"amount": 8}' })).status)
  }
  return statuses
}

test('a statement that failed closes its connection: what it left in the session goes with it', async () => {
  await withMux(1, async (s) => {
    // The next statement on that session fails (its prepared statement is
    // gone); the connection is closed, and the others run on a new one.
    assert.deepEqual(await statusesAfter(s.srv, '{"amount": 3000}', 10), [500, 201, 201, 201, 201, 201, 201, 201, 201, 201])
  })
})

test("a handler's settings do not outlive it on a shared connection", async () => {
  await withMux(1, async (s) => {
    assert.deepEqual(await statusesAfter(s.srv, '{"amount": 2000}', 5), [201, 201, 201, 201, 201])
  })
})

test('after pool.end() no statement is sent, and end() does not wait for the load', async () => {
  await withMux(2, async (s) => {
    const before = await Promise.all(Array.from({ length: 8 }, (_, i) => h.request(s.srv, { key: h.uniqueKey(`mux-end${i}`), body: '{"amount": 0}' })))
    assert.deepEqual([...new Set(before.map((a) => a.status))], [201])
    const inFlight = Array.from({ length: 8 }, (_, i) => h.request(s.srv, { key: h.uniqueKey(`mux-ending${i}`), body: '{"amount": 0}' }))
    await h.sleep(20)
    const ended = s.pool.end()
    const after = await h.request(s.srv, { key: h.uniqueKey('mux-ended'), body: '{"amount": 0}' })
    assert.ok(after.status >= 500, `a request after end() got ${after.status}`)
    await ended
    await Promise.all(inFlight)
  })
})

test("with the pool's other connections taken, requests share the one the Mux has", async () => {
  const pool = h.makePool({ max: 3 })
  const srv = await h.serve(serve(pool, HANDLER, { ...h.quiet, multiplex: 2 }))
  const taken = [await pool.connect(), await pool.connect()]
  try {
    const burst = Promise.all(Array.from({ length: 40 }, (_, i) => h.request(srv, { key: h.uniqueKey(`mux-short${i}`), body: '{"amount": 3}' })))
    const answers = await h.orHung(burst, 15000)
    assert.notEqual(answers, 'hung', 'requests waited for a connection the application held')
    assert.deepEqual([...new Set(answers.map((a) => a.status))], [201])
  } finally {
    for (const c of taken) c.release()
    await srv.close()
    await pool.end()
  }
})

test('a connection is counted in use before it is handed out', async () => {
  const { Mux } = require('../lib/mux')
  const pool = h.fakePool({
    client(c) {
      c.answers = []
      c.query = () => {
        if (pool.released.some(([id]) => id === c.id)) return Promise.reject(new Error(`query on released client ${c.id}`))
        return new Promise((resolve) => c.answers.push(resolve))
      }
    },
  })
  const mux = new Mux(pool, 1, 5000) // (a busy machine may sleep 50 ms instead of 5)
  const first = mux.query({})
  await h.sleep(5)
  const [client] = mux.held
  // The first answer arrives and a new request comes in the same turn.
  client.answers.shift()({ rows: [1] })
  const second = mux.query({})
  await first
  await h.sleep(5)
  assert.deepEqual(pool.released, [], 'the connection went back to the pool with a statement about to be sent')
  client.answers.shift()({ rows: [2] })
  assert.deepEqual((await second).rows, [2])
  assert.deepEqual(pool.released, [[client.id, null]])
})

test('a connection that fails as it is handed over is dropped, and the request runs on another', async () => {
  const { Mux, GroupCommit } = require('../lib/mux')
  for (const make of [(p) => new Mux(p, 2, 5000), (p) => new GroupCommit(p, 2, 5000, 16, () => ({}), () => 0)]) {
    // pg-pool hands a connection just given back to a waiting connect()
    // in the same turn; the message that ends its session may be read in
    // that turn too.
    const pool = h.fakePool({
      client(c) {
        c.query = async () => ({ rows: [`on ${c.id}`] })
      },
      sync: true,
      handedOver(c) {
        if (c.id === 1) c.emit('error', new Error('terminating connection due to administrator command'))
      },
    })
    assert.deepEqual((await make(pool).query({ values: [] })).rows, ['on 2'])
    assert.deepEqual(pool.released[0], [1, 'terminating connection due to administrator command'])
  }
})

test('after pool.end(), a request waiting for a connection to open fails within stallMs', async () => {
  const { Mux, GroupCommit } = require('../lib/mux')
  for (const make of [(p) => new Mux(p, 1, 20), (p) => new GroupCommit(p, 1, 20, 16, () => ({}), () => 0)]) {
    const pool = h.fakePool()
    pool.connect = () => {} // pg-pool leaves a connect() waiting at end() unsettled
    const waiting = make(pool).query({ values: [] })
    pool.ending = true
    const outcome = await h.orHung(waiting.then(() => 'answered', (err) => err.message), 3000)
    assert.match(outcome, /after calling end/)
  }
})
