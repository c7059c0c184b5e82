'use strict'
// serve() with `batch` (group commit): requests that come while the shared
// connections are busy go in one statement, one transaction.  Each request
// is still its own claim, work and stored answer; a failure costs the
// batch a rerun of each request alone, never a committed effect twice;
// no setting one handler makes reaches the next request.

const test = require('node:test')
const assert = require('node:assert/strict')
const { serve, wrap } = require('..')
const h = require('./helpers')

const HANDLER = 'node_batch_order(text, bytea)'
const FUNCTION = `CREATE OR REPLACE FUNCTION node_batch_order(key text, request bytea,
      OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
    LANGUAGE plpgsql AS $$
    DECLARE
      amount int := (convert_from(request, 'UTF8')::jsonb ->> 'amount')::int;  -- 'x' fails: 22P02
      seen text := coalesce(nullif(current_setting('app.user', true), ''), '-');
    BEGIN
      IF amount = 0 THEN PERFORM pg_sleep(0.03); END IF;
      IF amount = 500 THEN PERFORM pg_sleep(0.3); END IF;
      IF amount = 1000 THEN PERFORM pg_sleep(0.6); END IF;
      -- what a row-level security policy would read: set for this request only
      PERFORM set_config('app.user', key, true);
      INSERT INTO node_effects (key, run) VALUES (key, 1);
      status := 201;
      body := convert_to(json_build_object('key', key, 'seen', seen, 'xact', txid_current()::text,
                                           'nonce', md5(random()::text))::text, 'UTF8');
      content_type := 'application/json';
    END $$`

const db = h.fixture(FUNCTION)

async function withBatch(multiplex, batch, f, options = {}) {
  const pool = h.makePool({ max: 10, pipeline: false })
  const srv = await h.serve(serve(pool, HANDLER, { ...h.quiet, ...options, multiplex, batch }))
  try {
    await f({ pool, srv })
  } finally {
    await srv.close()
    if (!pool.ending) await pool.end()
  }
}

const answerOf = (a) => JSON.parse(a.body)

// The one shared connection taken for 300 ms by a first request (sent at
// once: a request before it opened the connection), 20 ms in: { first },
// its answer to come.  With stallMs above 300 ms, requests sent now wait
// for it.
const LONG_STALL = { stallMs: 5000 }
async function occupied(srv) {
  assert.equal((await h.request(srv, { key: h.uniqueKey('batch-warm'), body: '{"amount": 3}' })).status, 201)
  const first = h.request(srv, { key: h.uniqueKey('batch-first'), body: '{"amount": 500}' })
  await h.sleep(20)
  return { first }
}

// Requests sent behind such a first one, which go together after it.
async function behindOne(srv, requests) {
  const { first } = await occupied(srv)
  const rest = requests.map((r) => h.request(srv, r))
  return [await first, ...(await Promise.all(rest))]
}

test('options: batch needs multiplex, not pipeline mode; wrap() refuses it', async () => {
  const pool = h.makePool({ pipeline: false })
  try {
    assert.throws(() => serve(pool, HANDLER, { batch: 8 }), /batch needs multiplex/)
    assert.throws(() => serve(pool, HANDLER, { multiplex: 2, batch: 0 }), RangeError)
    assert.throws(() => serve(pool, HANDLER, { multiplex: 2, batch: 2.5 }), RangeError)
    assert.throws(() => serve(pool, HANDLER, { multiplex: 2 }), /pipeline: true/)
    assert.doesNotThrow(() => serve(pool, HANDLER, { multiplex: 2, batch: 8 }))
    assert.throws(() => serve(pool, HANDLER, { multiplex: 10, batch: 8 }), /less than the pool's max/)
    assert.throws(() => serve(pool, HANDLER, { multiplex: 2, batch: 8, stallMs: 0 }), RangeError)
    assert.throws(() => serve(pool, HANDLER, { multiplex: 2, batch: 8, stallMs: '50' }), RangeError)
    assert.throws(() => serve(pool, HANDLER, { multiplex: 2, batch: 8, stallMs: 2 ** 31 }), RangeError)
    assert.doesNotThrow(() => serve(pool, HANDLER, { multiplex: 2, batch: 8, stallMs: 2 ** 31 - 1 }))
    assert.throws(() => wrap(pool, () => {}, { batch: 8 }), /serve\(\) only/)
    assert.throws(() => wrap(pool, () => {}, { stallMs: 100 }), /serve\(\) only/)
  } finally {
    await pool.end()
  }
})

test('64 requests on 2 shared connections: several in a transaction, one effect each, nothing of one seen by the next', async () => {
  await withBatch(2, 16, async (s) => {
    const keys = Array.from({ length: 64 }, (_, i) => h.uniqueKey(`batch-many${i}`))
    const answers = await Promise.all(keys.map((k) => h.request(s.srv, { key: k, body: '{"amount": 3}' })))
    assert.deepEqual([...new Set(answers.map((a) => a.status))], [201])
    const perXact = new Map()
    answers.forEach((a, i) => {
      const body = answerOf(a)
      assert.equal(body.key, keys[i])
      assert.equal(body.seen, '-', `request ${i} saw app.user = ${body.seen}`)
      perXact.set(body.xact, (perXact.get(body.xact) || 0) + 1)
    })
    // (How many depends on the machine's speed: a batch held up 50 ms
    // lets the requests queued behind it go alone.)
    const most = Math.max(...perXact.values())
    assert.ok(most >= 2 && perXact.size < 64, `64 requests took ${perXact.size} transactions`)
    assert.ok(most <= 16, 'a transaction held more than batch requests')
    for (const k of keys) assert.equal(await h.effects(db.pool, k), 1, k)
    assert.equal(s.pool.idleCount, s.pool.totalCount)
  })
})

test('64 concurrent identical requests: one effect, 63 byte-identical replays', async () => {
  await withBatch(2, 16, async (s) => {
    await h.identicalStorm(s.srv, db.pool, 'batch-storm')
  }, { waitFor: 20000 })
})

test('a key twice in one batch: the second replays the first', async () => {
  await withBatch(1, 16, async (s) => {
    const key = h.uniqueKey('batch-twice')
    const [, a, b] = await behindOne(s.srv, [{ key, body: '{"amount": 3}' }, { key, body: '{"amount": 3}' }])
    assert.equal(answerOf(a).xact, answerOf(b).xact, 'not in one batch')
    assert.equal(a.status, 201)
    assert.equal(b.status, 201)
    assert.equal(b.headers['idempotent-replayed'], 'true')
    assert.deepEqual(b.body, a.body)
    assert.equal(await h.effects(db.pool, key), 1)
  }, LONG_STALL)
})

test('a request that fails in a batch: the batch runs again alone, only that one fails', async () => {
  await withBatch(1, 16, async (s) => {
    const good = Array.from({ length: 6 }, (_, i) => h.uniqueKey(`batch-good${i}`))
    const bad = h.uniqueKey('batch-bad')
    const requests = good.map((key) => ({ key, body: '{"amount": 5}' }))
    requests.splice(3, 0, { key: bad, body: '{"amount": "x"}' })
    const [, ...answers] = await behindOne(s.srv, requests)
    assert.deepEqual(answers.map((a) => a.status), [201, 201, 201, 500, 201, 201, 201])
    for (const key of good) assert.equal(await h.effects(db.pool, key), 1, key)
    assert.equal(await h.effects(db.pool, bad), 0)
    // It stored nothing: sent again right, it runs.
    assert.equal((await h.request(s.srv, { key: bad, body: '{"amount": 6}' })).status, 201)
    // The others, run alone after the batch failed, replay now.
    for (const key of good) {
      assert.equal((await h.request(s.srv, { key, body: '{"amount": 5}' })).headers['idempotent-replayed'], 'true')
    }
  }, LONG_STALL)
})

test('keys and bodies of every shape go through the arrays unchanged', async () => {
  await withBatch(1, 16, async (s) => {
    const odd = ['a,b', 'q"uote', 'back\\slash', '{brace}', ' spaced ', 'NULL', 'ünï', "it's"]
    const keys = odd.map((k) => h.uniqueKey(k))
    const [, ...answers] = await behindOne(s.srv, keys.map((key) => ({ key, body: '{"amount": 7}' })))
    assert.equal(new Set(answers.map((a) => answerOf(a).xact)).size, 1, 'not in one batch')
    answers.forEach((a, i) => {
      assert.equal(a.status, 201)
      assert.equal(answerOf(a).key, keys[i])
    })
    for (const key of keys) assert.equal(await h.effects(db.pool, key), 1, key)
  }, LONG_STALL)
})

test('requests queued behind a slow batch go alone once it is held up', async () => {
  await withBatch(1, 16, async (s) => {
    const slow = h.request(s.srv, { key: h.uniqueKey('batch-slow'), body: '{"amount": 1000}' })
    await h.sleep(100)
    const fast = await Promise.all(
      Array.from({ length: 10 }, (_, i) => h.request(s.srv, { key: h.uniqueKey(`batch-fast${i}`), body: '{"amount": 4}' }))
    )
    const late = await slow
    for (const a of fast) {
      assert.equal(a.status, 201)
      assert.ok(a.at < late.at, 'a fast request waited for the slow one')
    }
  })
})

test('shared connections killed mid-storm: 201 or 503 only, none runs twice, the pool recovers', async () => {
  await withBatch(2, 16, async (s) => {
    await h.killStorm(s.srv, db.pool, 'batch-kill', 80, '{"amount": 0}')
    assert.equal(s.pool.idleCount, s.pool.totalCount)
  })
})

test('after pool.end() no statement is sent, not even on a connection still held', async () => {
  await withBatch(1, 16, async (s) => {
    // The request after end() waits in the queue for the shared
    // connection, which the first request holds.
    const { first } = await occupied(s.srv)
    const ended = s.pool.end()
    const key = h.uniqueKey('batch-ended')
    const after = await h.request(s.srv, { key, body: '{"amount": 3}' })
    assert.ok(after.status >= 500, `a request after end() got ${after.status}`)
    assert.equal((await first).status, 201)
    await ended
    assert.equal(await h.effects(db.pool, key), 0)
  }, LONG_STALL)
})

test('pool.end() with requests queued returns, and gives the shared connection back', async () => {
  await withBatch(1, 16, async (s) => {
    const { first } = await occupied(s.srv)
    const queued = Array.from({ length: 3 }, (_, i) => h.request(s.srv, { key: h.uniqueKey(`batch-end-queued${i}`), body: '{"amount": 3}' }))
    await h.sleep(20)
    const ended = await h.orHung(s.pool.end().then(() => 'ended'), 5000)
    assert.equal(ended, 'ended', `pool.end() still waiting, ${s.pool.totalCount} connection(s) out`)
    assert.equal((await first).status, 201)
    for (const a of await Promise.all(queued)) assert.ok(a.status >= 500)
  }, LONG_STALL)
})

test('a connection that fails to open leaves the queue to the stall rule', async () => {
  const { GroupCommit } = require('../lib/mux')
  const pool = h.fakePool({
    client(c) {
      c.query = () => new Promise(() => {}) // never answers
    },
    fail: (id) => (id > 1 ? new Error('too many connections') : null),
    query: async () => ({ rows: ['alone'] }),
  })
  const gc = new GroupCommit(pool, 2, 20, 16, () => ({}), () => 0)
  gc.query({ values: [] })
  while (!(gc.held.length === 1 && gc.held[0].idemInFlight === 1)) await h.sleep(1) // sent
  const second = await h.orHung(gc.query({ values: [] }), 3000)
  assert.deepEqual(second === 'hung' ? second : second.rows, ['alone'])
})

test('a scope that is not a string is refused, not sent as something else', async () => {
  const pool = h.makePool({ pipeline: false })
  try {
    assert.throws(() => serve(pool, HANDLER, { scope: ['a'] }), /scope must be a string/)
  } finally {
    await pool.end()
  }
  await withBatch(1, 16, async (s) => {
    const a = await h.request(s.srv, { key: h.uniqueKey('batch-scope'), body: '{"amount": 3}' })
    assert.equal(a.status, 500)
  }, { scope: () => ['tenant-a'] })
})
