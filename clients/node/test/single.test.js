'use strict'
// Single-transaction mode: outcomes to HTTP, what is stored and replayed,
// rollbacks, 40001 retries, the key checks, types.

const test = require('node:test')
const assert = require('node:assert/strict')
const { wrap, fingerprint } = require('..')
const h = require('./helpers')

let pool, srv
const runs = new Map() // key -> handler runs

// Writes an effect row in the request's transaction and answers 201 with
// bytes that differ at every run (so a replay of another run would show).
async function handler(req, res, ctx) {
  const n = (runs.get(ctx.key) || 0) + 1
  runs.set(ctx.key, n)
  const path = req.url.split('?')[0]
  if (ctx.key !== null) await ctx.client.query('INSERT INTO node_effects (key, run) VALUES ($1, $2)', [ctx.key, n])
  if (path === '/fail40001' && n === 1) {
    await ctx.client.query("DO $$BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END$$")
  }
  if (path === '/always40001') {
    await ctx.client.query("DO $$BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END$$")
  }
  if (path === '/throw' && n === 1) throw new Error('handler failed')
  if (path === '/slow') await ctx.client.query('SELECT pg_sleep(1)')
  if (path === '/503' && n === 1) {
    res.writeHead(503, { 'content-type': 'text/plain' })
    return res.end('try later')
  }
  const bytes = Buffer.concat([Buffer.from([0, 255, 13, 10]), require('node:crypto').randomBytes(16), req.rawBody])
  res.statusCode = 201
  res.setHeader('Content-Type', 'application/octet-stream')
  res.setHeader('Location', `/orders/${n}`)
  res.setHeader('X-Not-Kept', 'yes')
  res.write(bytes.subarray(0, 5))
  res.end(bytes.subarray(5))
}

test.before(async () => {
  await h.setup()
  pool = h.makePool()
  srv = await h.serve(wrap(pool, handler, h.quiet))
})
test.after(async () => {
  await srv.close()
  await pool.end()
})

test('first request runs, its exact bytes, status and kept headers replay', async () => {
  const key = h.uniqueKey('replay')
  const first = await h.request(srv, { key, body: 'order=1' })
  assert.equal(first.status, 201)
  assert.equal(first.headers['idempotent-replayed'], undefined)
  assert.equal(first.headers['x-not-kept'], 'yes')
  const second = await h.request(srv, { key, body: 'order=1' })
  assert.equal(second.status, 201)
  assert.equal(second.headers['idempotent-replayed'], 'true')
  assert.equal(second.headers['content-type'], 'application/octet-stream')
  assert.equal(second.headers.location, '/orders/1')
  assert.equal(second.headers['x-not-kept'], undefined)
  assert.deepEqual(second.body, first.body)
  assert.equal(second.body.subarray(0, 4).toString('hex'), '00ff0d0a')
  assert.equal(runs.get(key), 1)
  assert.equal(await h.effects(pool, key), 1)
})

test('same key with another body or another path is a mismatch: 422', async () => {
  const key = h.uniqueKey('mismatch')
  assert.equal((await h.request(srv, { key, body: 'a' })).status, 201)
  const other = await h.request(srv, { key, body: 'b' })
  assert.equal(other.status, 422)
  assert.equal(JSON.parse(other.body).error.length > 0, true)
  assert.equal((await h.request(srv, { key, body: 'a', path: '/orders?x=1' })).status, 422)
  assert.equal((await h.request(srv, { key, body: 'a', method: 'PUT' })).status, 422)
  assert.equal(runs.get(key), 1)
})

test('a handler that throws stores nothing: 500, then a retry runs again', async () => {
  const key = h.uniqueKey('throw')
  const first = await h.request(srv, { key, path: '/throw' })
  assert.equal(first.status, 500)
  assert.equal(first.headers.location, undefined)
  assert.equal(await h.effects(pool, key), 0)
  const second = await h.request(srv, { key, path: '/throw' })
  assert.equal(second.status, 201)
  assert.equal(second.headers['idempotent-replayed'], undefined)
  assert.equal(runs.get(key), 2)
  assert.equal(await h.effects(pool, key), 1)
})

test('a 5xx answer is sent but rolled back and not stored', async () => {
  const key = h.uniqueKey('503')
  const first = await h.request(srv, { key, path: '/503' })
  assert.equal(first.status, 503)
  assert.equal(first.body.toString(), 'try later')
  assert.equal(await h.effects(pool, key), 0)
  assert.equal((await h.request(srv, { key, path: '/503' })).status, 201)
  assert.equal(await h.effects(pool, key), 1)
})

test('40001 raised in the handler runs the whole transaction again', async () => {
  const key = h.uniqueKey('40001')
  const res = await h.request(srv, { key, path: '/fail40001' })
  assert.equal(res.status, 201)
  assert.equal(runs.get(key), 2)
  assert.equal(await h.effects(pool, key), 1) // the first run's row was rolled back
  const again = await h.request(srv, { key, path: '/fail40001' })
  assert.equal(again.headers['idempotent-replayed'], 'true')
  assert.deepEqual(again.body, res.body)
})

test('40001 at every attempt: retries times again, then 503', async () => {
  const key = h.uniqueKey('always')
  const res = await h.request(srv, { key, path: '/always40001' })
  assert.equal(res.status, 503)
  assert.equal(res.headers['retry-after'], '1')
  assert.equal(runs.get(key), 4) // 1 + retries (3)
  assert.equal(await h.effects(pool, key), 0)
})

test('a key held by a committed claim under a live lease: 409 with Retry-After', async () => {
  const key = h.uniqueKey('held')
  const body = Buffer.from('x')
  await pool.query("SELECT * FROM idempotency.idem_claim($1, fingerprint => $2, lease => '1 minute')", [
    key,
    fingerprint('POST', '/orders', body),
  ])
  const res = await h.request(srv, { key, body })
  assert.equal(res.status, 409)
  assert.equal(res.headers['retry-after'], '1')
  assert.equal(runs.get(key), undefined)
})

test('without waitFor, a duplicate of a request in flight (its claim uncommitted) is 409 at once', async () => {
  const key = h.uniqueKey('inflight')
  const owner = h.request(srv, { key, path: '/slow' })
  await h.sleep(300)
  const t0 = performance.now()
  const dup = await h.request(srv, { key, path: '/slow' })
  assert.equal(dup.status, 409)
  assert.equal(dup.headers['retry-after'], '1')
  assert.ok(dup.at - t0 < 500, `answered after ${Math.round(dup.at - t0)} ms`)
  assert.equal((await owner).status, 201)
  assert.equal(runs.get(key), 1)
})

test('missing key runs without idempotency unless required (400); over 255 bytes: 400', async () => {
  const a = await h.request(srv, {})
  const b = await h.request(srv, {})
  assert.equal(a.status, 201)
  assert.equal(b.status, 201)
  assert.notDeepEqual(a.body, b.body)
  const strict = await h.serve(wrap(pool, handler, { ...h.quiet, required: true }))
  try {
    const res = await h.request(strict, {})
    assert.equal(res.status, 400)
    assert.match(JSON.parse(res.body).error, /Idempotency-Key/)
  } finally {
    await strict.close()
  }
  const long = await h.request(srv, { key: 'k'.repeat(256) })
  assert.equal(long.status, 400)
  const longest = await h.request(srv, { key: `${h.uniqueKey('max')}-`.padEnd(255, 'k') })
  assert.equal(longest.status, 201)
  // 255 bytes counted in UTF-8, not in characters
  assert.equal((await h.request(srv, { key: 'é'.repeat(128) })).status, 400)
})

test('scope option: the same key in two scopes is two keys', async () => {
  const scoped = await h.serve(wrap(pool, handler, { ...h.quiet, scope: (req) => (req.url.includes('b') ? 'node-b' : 'node-a') }))
  try {
    const key = h.uniqueKey('scope')
    const a = await h.request(scoped, { key, path: '/a' })
    const b = await h.request(scoped, { key, path: '/b' })
    assert.equal(a.status, 201)
    assert.equal(b.status, 201)
    assert.equal(b.headers['idempotent-replayed'], undefined)
  } finally {
    await scoped.close()
  }
})

test('snowflake above 2^53 and fencing tokens arrive as decimal strings', async () => {
  const big = '9007199254740993' // 2^53 + 1: a float would read ...992
  const { rows } = await pool.query('SELECT $1::idempotency.snowflake AS id, idempotency.snowflake_id() AS fresh', [big])
  assert.equal(rows[0].id, big)
  assert.equal(typeof rows[0].fresh, 'string')
  assert.ok(BigInt(rows[0].fresh) > 2n ** 53n)
  const { claim } = require('..')
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    const c = await claim(client, h.uniqueKey('types'))
    assert.equal(c.outcome, 'claimed')
    assert.equal(typeof c.token, 'string')
    assert.match(c.token, /^[0-9]+$/)
    assert.equal(c.attempts, 1)
    assert.ok(c.expiresAt instanceof Date)
    await client.query('ROLLBACK')
  } finally {
    client.release()
  }
})

test('a key completed by a SQL caller with response jsonb only replays it as JSON', async () => {
  const key = h.uniqueKey('sqlcaller')
  const body = Buffer.from('{}')
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    const { rows } = await client.query('SELECT token FROM idempotency.idem_claim($1, fingerprint => $2)', [
      key,
      fingerprint('POST', '/orders', body),
    ])
    await client.query(`SELECT idempotency.idem_complete($1, $2, '{"id": 7}', 200)`, [key, rows[0].token])
    await client.query('COMMIT')
  } finally {
    client.release()
  }
  const res = await h.request(srv, { key, body })
  assert.equal(res.status, 200)
  assert.equal(res.headers['idempotent-replayed'], 'true')
  assert.equal(res.headers['content-type'], 'application/json')
  assert.deepEqual(JSON.parse(res.body), { id: 7 })
  assert.equal(runs.get(key), undefined)
})

test('a failed claim ends its transaction before the client goes back to the pool', async () => {
  const one = h.makePool({ max: 1 })
  const bad = await h.serve(wrap(one, handler, { ...h.quiet, ttl: 'not an interval' }))
  const good = await h.serve(wrap(one, handler, h.quiet))
  try {
    assert.equal((await h.request(bad, { key: h.uniqueKey('bad') })).status, 500)
    const key = h.uniqueKey('after-bad')
    assert.equal((await h.request(good, { key })).status, 201)
    assert.equal(await h.effects(pool, key), 1)
  } finally {
    await bad.close()
    await good.close()
    await one.end()
  }
})
