'use strict'
// Multi-transaction mode: the claim commits with a lease, the handler runs
// outside any transaction with the fencing token; failures are recorded,
// and a duplicate takes over an owner whose lease ran out, exactly once.

const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const { wrap } = require('..')
const h = require('./helpers')

let pool, srv
const runs = new Map() // key -> [{ outcome, attempts, token, recoveryPoint }]

async function handler(req, res, ctx) {
  const seen = runs.get(ctx.key) || []
  seen.push({ outcome: ctx.outcome, attempts: ctx.attempts, token: ctx.token, recoveryPoint: ctx.recoveryPoint })
  runs.set(ctx.key, seen)
  assert.equal(typeof ctx.token, 'string')
  if (req.url === '/throw' && seen.length === 1) {
    assert.equal(await ctx.checkpoint('charged'), true)
    throw new Error('downstream failed')
  }
  if (req.url === '/500' && seen.length === 1) {
    res.statusCode = 502
    return res.end('bad gateway')
  }
  if (req.url === '/extend') {
    // another session sees the claim: it was committed before the handler ran
    const { rows } = await pool.query('SELECT state::text, token::text FROM idempotency.idem_lookup($1)', [ctx.key])
    assert.deepEqual(rows[0], { state: 'in_progress', token: ctx.token })
    const until = await ctx.extend('5 minutes')
    assert.ok(until instanceof Date && until - Date.now() > 4 * 60 * 1000)
  }
  if (req.url === '/outlive-lease') await h.sleep(seen.length === 1 ? 2000 : 300) // lease: 1 second
  res.statusCode = 200
  res.setHeader('content-type', 'text/plain; charset=utf-8')
  res.end(`run ${seen.length} ${crypto.randomBytes(6).toString('hex')}`)
}

test.before(async () => {
  await h.setup()
  pool = h.makePool({ max: 12 })
  srv = await h.serve(wrap(pool, handler, { ...h.quiet, multiTransaction: true, lease: '1 second' }))
})
test.after(async () => {
  await srv.close()
  await pool.end()
})

test('multi-transaction: first run, replay; the claim was committed before the handler ran', async () => {
  const key = h.uniqueKey('multi')
  const first = await h.request(srv, { key, path: '/extend' })
  assert.equal(first.status, 200)
  const again = await h.request(srv, { key, path: '/extend' })
  assert.equal(again.headers['idempotent-replayed'], 'true')
  assert.deepEqual(again.body, first.body)
  assert.equal(again.headers['content-type'], 'text/plain; charset=utf-8')
  assert.equal(runs.get(key).length, 1)
  assert.equal(runs.get(key)[0].outcome, 'claimed')
})

test('multi-transaction: a throw records a retryable failure; the retry reclaims from the checkpoint', async () => {
  const key = h.uniqueKey('multi-throw')
  assert.equal((await h.request(srv, { key, path: '/throw' })).status, 500)
  const retry = await h.request(srv, { key, path: '/throw' })
  assert.equal(retry.status, 200)
  const [first, second] = runs.get(key)
  assert.equal(second.outcome, 'reclaimed')
  assert.equal(second.attempts, 2)
  assert.equal(second.recoveryPoint, 'charged')
  assert.ok(BigInt(second.token) > BigInt(first.token))
})

test('multi-transaction: a 5xx answer is sent, recorded as a retryable failure', async () => {
  const key = h.uniqueKey('multi-5xx')
  const first = await h.request(srv, { key, path: '/500' })
  assert.equal(first.status, 502)
  assert.equal(first.body.toString(), 'bad gateway')
  const retry = await h.request(srv, { key, path: '/500' })
  assert.equal(retry.status, 200)
  assert.equal(runs.get(key)[1].outcome, 'reclaimed')
})

test('multi-transaction: a duplicate takes over an owner whose lease ran out, exactly once', async () => {
  const key = h.uniqueKey('takeover')
  const owner = h.request(srv, { key, path: '/outlive-lease' })
  await h.sleep(1300) // the 1 second lease has run out; the owner still works
  const dups = await Promise.all(Array.from({ length: 8 }, () => h.request(srv, { key, path: '/outlive-lease' })))
  const taker = dups.filter((r) => r.status === 200 && r.headers['idempotent-replayed'] === undefined)
  assert.equal(taker.length, 1, `statuses: ${dups.map((r) => r.status)}`)
  for (const r of dups) {
    if (r === taker[0]) continue
    assert.ok(r.status === 409 || r.headers['idempotent-replayed'] === 'true', `status ${r.status}`)
    if (r.status === 200) assert.deepEqual(r.body, taker[0].body)
  }
  assert.ok(dups.some((r) => r.status === 409)) // the others came while the taker worked
  const stale = await owner
  assert.equal(stale.status, 409) // its completion came with a stale token
  const seen = runs.get(key)
  assert.equal(seen.length, 2)
  assert.equal(seen[1].outcome, 'reclaimed')
  assert.equal(seen[1].attempts, 2)
  const later = await h.request(srv, { key, path: '/outlive-lease' })
  assert.equal(later.headers['idempotent-replayed'], 'true')
  assert.deepEqual(later.body, taker[0].body)
})
