'use strict'
// Round trips to the database per path, counted on the connection's socket
// (a write that follows an answer starts a round trip): before the answer
// went out, and in all.  The README's table is this test's output.

const test = require('node:test')
const assert = require('node:assert/strict')
const { wrap, fingerprint } = require('..')
const h = require('./helpers')

// The handler does no database work of its own, so what is counted is the
// middleware's.
function handler(req, res) {
  res.statusCode = 201
  res.setHeader('content-type', 'application/json')
  res.end('{"ok":true}')
}

async function measure(pipeline, options) {
  const counter = { roundTrips: 0 }
  const pool = h.makePool({ max: 1, pipeline, counter })
  const srv = await h.serve(wrap(pool, handler, { ...h.quiet, ...options }), counter)
  const other = h.makePool({ max: 1 })
  const one = async (args) => {
    await h.sleep(20) // the previous request's trailing round trip is over
    const start = counter.roundTrips
    const res = await h.request(srv, args)
    await h.sleep(20)
    return { status: res.status, beforeAnswer: Number(res.headers['x-test-round-trips']), total: counter.roundTrips - start }
  }
  try {
    await pool.query('SELECT 1') // connect outside the count
    const key = h.uniqueKey('rt')
    const held = h.uniqueKey('rt-held')
    await other.query("SELECT * FROM idempotency.idem_claim($1, fingerprint => $2, lease => '1 minute')", [
      held,
      fingerprint('POST', '/orders', Buffer.alloc(0)),
    ])
    const out = {
      first: await one({ key }),
      replay: await one({ key }),
      inProgress: await one({ key: held }),
      mismatch: await one({ key, body: 'other' }),
      noKey: await one({}),
    }
    console.log(`round trips (pipeline ${pipeline}, ${options.multiTransaction ? 'multi' : 'single'}):`, JSON.stringify(out))
    return out
  } finally {
    await srv.close()
    await pool.end()
    await other.end()
  }
}

test.before(h.setup)

test('single transaction, pipelined: 2 round trips first time, 1 before a replay is sent', async () => {
  const rt = await measure(true, {})
  assert.deepEqual(rt.first, { status: 201, beforeAnswer: 2, total: 2 })
  assert.deepEqual(rt.replay, { status: 201, beforeAnswer: 1, total: 2 })
  assert.deepEqual(rt.inProgress, { status: 409, beforeAnswer: 1, total: 2 })
  assert.deepEqual(rt.mismatch, { status: 422, beforeAnswer: 1, total: 2 })
  // BEGIN goes out without waiting and is answered while the handler runs
  assert.deepEqual(rt.noKey, { status: 201, beforeAnswer: 2, total: 2 })
})

test('single transaction, pool without pipeline: one statement per round trip', async () => {
  const rt = await measure(false, {})
  assert.deepEqual(rt.first, { status: 201, beforeAnswer: 4, total: 4 })
  assert.deepEqual(rt.replay, { status: 201, beforeAnswer: 2, total: 3 })
  assert.deepEqual(rt.noKey, { status: 201, beforeAnswer: 2, total: 2 })
})

test('multi-transaction: 2 round trips first time, 1 for a replay', async () => {
  const rt = await measure(true, { multiTransaction: true, lease: '30 seconds' })
  assert.deepEqual(rt.first, { status: 201, beforeAnswer: 2, total: 2 })
  assert.deepEqual(rt.replay, { status: 201, beforeAnswer: 1, total: 1 })
  assert.deepEqual(rt.inProgress, { status: 409, beforeAnswer: 1, total: 1 })
  assert.deepEqual(rt.mismatch, { status: 422, beforeAnswer: 1, total: 1 })
  assert.deepEqual(rt.noKey, { status: 201, beforeAnswer: 0, total: 0 })
})
