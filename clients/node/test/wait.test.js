'use strict'
// waitFor: duplicates of a slow request wait for its answer (the database
// wakes them when the owner commits) instead of answering 409; past the
// bound they answer 409.  Needs the server's wait_for.

const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const { wrap } = require('..')
const h = require('./helpers')

let pool
const runs = new Map()
const handlerEnded = new Map() // key -> when the owner's handler ended

async function slow(req, res, ctx) {
  runs.set(ctx.key, (runs.get(ctx.key) || 0) + 1)
  if (ctx.client) await ctx.client.query('INSERT INTO node_effects (key, run) VALUES ($1, 1)', [ctx.key])
  await h.sleep(Number(new URL(req.url, 'http://x').searchParams.get('ms')))
  res.statusCode = 201
  res.setHeader('content-type', 'application/json')
  // The completion (and COMMIT) is written right after this end(), so the
  // commit comes later: timing from here overstates the wait, never hides it.
  handlerEnded.set(ctx.key, performance.now())
  res.end(JSON.stringify({ nonce: crypto.randomBytes(8).toString('hex') }))
}

function distribution(ms) {
  const s = [...ms].sort((a, b) => a - b)
  const at = (q) => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]
  const f = (x) => x.toFixed(1)
  return `min ${f(s[0])} p50 ${f(at(0.5))} p90 ${f(at(0.9))} max ${f(s[s.length - 1])} ms`
}

// The owner sleeps `ms` in its handler; 16 duplicates arrive while it
// works and must all get its answer within 100 ms of its commit, timed
// from when the owner's own answer went out, right after its commit (the
// middleware answers only once the commit has returned).  Timed from the
// end of its handler instead, which precedes the commit, the figure also
// holds the commit itself: in one CI run all 16 came 238 to 245 ms after
// the handler, together, as they wake at the commit, which points at a
// slow commit (a WAL flush on a busy disk) rather than a slow wake-up.
// That distribution is printed too.
async function sixteen(options, label) {
  const srv = await h.serve(wrap(pool, slow, { ...h.quiet, waitFor: 5000, ...options }))
  try {
    const key = h.uniqueKey(`wait-${label}`)
    const owner = h.request(srv, { key, path: '/orders?ms=600' })
    await h.sleep(150)
    const dups = await Promise.all(Array.from({ length: 16 }, () => h.request(srv, { key, path: '/orders?ms=600' })))
    const first = await owner
    assert.equal(first.status, 201)
    assert.equal(first.headers['idempotent-replayed'], undefined)
    const handled = handlerEnded.get(key)
    const committed = Number(first.headers['x-test-sent-at'])
    assert.ok(handled <= committed)
    const latencies = dups.map((r) => r.at - committed)
    for (const r of dups) {
      assert.equal(r.status, 201)
      assert.equal(r.headers['idempotent-replayed'], 'true')
      assert.deepEqual(r.body, first.body)
    }
    console.log(`waiting: duplicates answered after the owner's handler ended (${label}, 16 duplicates): ${distribution(dups.map((r) => r.at - handled))}`)
    console.log(`waiting: duplicates answered after the owner's commit (its answer sent) (${label}, 16 duplicates): ${distribution(latencies)}`)
    assert.ok(Math.max(...latencies) <= 100, `latencies ${latencies}`)
    assert.equal(runs.get(key), 1)
  } finally {
    await srv.close()
  }
}

test.before(async () => {
  await h.setup()
  pool = h.makePool({ max: 20 })
})
test.after(() => pool.end())

test('waitFor, multi-transaction: 16 duplicates get the answer within 100 ms of the commit', () =>
  sixteen({ multiTransaction: true, lease: '30 seconds' }, 'multi'))

test('waitFor, single transaction: 16 duplicates get the answer within 100 ms of the commit', () =>
  sixteen({}, 'single'))

test('waitFor bound runs out: 409 after about the bound, not before', async () => {
  const srv = await h.serve(wrap(pool, slow, { ...h.quiet, waitFor: 300, multiTransaction: true, lease: '30 seconds' }))
  try {
    const key = h.uniqueKey('wait-bound')
    const owner = h.request(srv, { key, path: '/orders?ms=1500' })
    await h.sleep(100)
    const t0 = performance.now()
    const dup = await h.request(srv, { key, path: '/orders?ms=1500' })
    const waited = performance.now() - t0
    assert.equal(dup.status, 409)
    assert.equal(dup.headers['retry-after'], '1')
    assert.ok(waited >= 280 && waited < 1200, `waited ${waited} ms`)
    assert.equal((await owner).status, 201)
  } finally {
    await srv.close()
  }
})
