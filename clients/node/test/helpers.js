'use strict'
// Shared by the tests: pools on the cluster the environment names (PGHOST,
// PGPORT, PGUSER, PGDATABASE), an HTTP server around a listener, a plain
// HTTP client, and a round-trip counter on each database connection.

const http = require('node:http')
const crypto = require('node:crypto')
const pg = require('pg')
const assert = require('node:assert/strict')

const RUN = crypto.randomBytes(4).toString('hex') // keys of this run

function uniqueKey(name) {
  return `node-${RUN}-${name}-${crypto.randomBytes(3).toString('hex')}`
}

// Count round trips: a write that follows an answer (or is the first)
// starts one; writes sent before any answer came back (pipelined) share it.
function countRoundTrips(client, counter) {
  const stream = client.connection.stream
  const write = stream.write
  let inFlight = false
  stream.write = function (...args) {
    if (!inFlight) {
      counter.roundTrips++
      inFlight = true
    }
    return write.apply(this, args)
  }
  stream.on('data', () => {
    inFlight = false
  })
}

function makePool(options = {}) {
  const { counter, ...rest } = options
  const pool = new pg.Pool({ pipeline: true, max: 10, ...rest })
  pool.on('error', () => {}) // idle clients lost in a restart
  if (counter) pool.on('connect', (client) => countRoundTrips(client, counter))
  return pool
}

async function setup() {
  const pool = makePool({ max: 1 })
  await pool.query('CREATE EXTENSION IF NOT EXISTS idempotency')
  await pool.query(
    `CREATE TABLE IF NOT EXISTS node_effects (
       key text NOT NULL, run int NOT NULL, made timestamptz NOT NULL DEFAULT clock_timestamp())`
  )
  await pool.end()
}

// An HTTP server on a free local port around a listener.
async function serve(listener, counter) {
  const server = http.createServer((req, res) => {
    // when the answer went out (same clock as request()'s `at`), and the
    // database round trips it waited for
    const start = counter ? counter.roundTrips : 0
    const end = res.end
    res.end = function (...args) {
      if (!this.headersSent) {
        this.setHeader('x-test-sent-at', String(performance.now()))
        if (counter) this.setHeader('x-test-round-trips', String(counter.roundTrips - start))
      }
      return end.apply(this, args)
    }
    listener(req, res)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 })
  const { port } = server.address()
  return {
    port,
    agent,
    close: () =>
      new Promise((resolve) => {
        agent.destroy()
        server.closeAllConnections()
        server.close(resolve)
      }),
  }
}

// One request; resolves to { status, headers, body (Buffer), at (ms) }.
function request(srv, { method = 'POST', path = '/orders', key, body = '', headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const h = { ...headers }
    if (key !== undefined) h['idempotency-key'] = key
    const data = Buffer.isBuffer(body) ? body : Buffer.from(body)
    h['content-length'] = String(data.length)
    const req = http.request({ host: '127.0.0.1', port: srv.port, method, path, headers: h, agent: srv.agent }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () =>
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), at: performance.now() })
      )
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(data)
  })
}

async function effects(pool, key) {
  const { rows } = await pool.query('SELECT count(*)::int AS n FROM node_effects WHERE key = $1', [key])
  return rows[0].n
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// What promise resolves to, or 'hung' if it has not settled within ms.
async function orHung(promise, ms) {
  let timer
  const hang = new Promise((resolve) => { timer = setTimeout(() => resolve('hung'), ms) })
  try {
    return await Promise.race([promise, hang])
  } finally {
    clearTimeout(timer)
  }
}

// A stand-in for pg.Pool, for the shared-connection classes alone.
// connect() hands out clients numbered from 1 (an EventEmitter with id and
// release(), which records [id, error message or null] in pool.released),
// each given its query() by client(c), or fails with fail(id) if that
// returns an error.  The callback comes a turn later, or at once with
// sync, after which handedOver(c) runs in the same turn.
function fakePool({ client = () => {}, fail = () => null, sync = false, handedOver = () => {}, query } = {}) {
  const { EventEmitter } = require('node:events')
  const pool = { ending: false, opened: 0, released: [], query }
  pool.connect = (callback) => {
    const id = ++pool.opened
    const err = fail(id)
    const c = err ? null : Object.assign(new EventEmitter(), { id })
    if (c) {
      c.release = (e) => pool.released.push([id, e ? e.message : null])
      client(c)
    }
    const call = () => (err ? callback(err) : (callback(null, c), handedOver(c)))
    if (sync) call()
    else setImmediate(call)
  }
  return pool
}

// The test file's fixture: the extension set up and its handler created
// before its tests, on a pool of two connections (fixture.pool) closed
// after them.
function fixture(functionSql) {
  const test = require('node:test')
  const f = { pool: null }
  test.before(async () => {
    await setup()
    f.pool = makePool({ max: 2 })
    await f.pool.query(functionSql)
  })
  test.after(async () => {
    await f.pool.end()
  })
  return f
}

// 64 concurrent requests with one key: one runs, 63 replay it byte for byte.
async function identicalStorm(srv, pool, prefix) {
  const key = uniqueKey(prefix)
  const answers = await Promise.all(Array.from({ length: 64 }, () => request(srv, { key, body: '{"amount": 0}' })))
  assert.equal(answers.filter((a) => a.status === 201).length, 64)
  assert.equal(answers.filter((a) => a.headers['idempotent-replayed'] === 'true').length, 63)
  for (const a of answers) assert.deepEqual(a.body, answers[0].body)
  assert.equal(await effects(pool, key), 1)
}

// A storm of first-time requests (16 at a time, `count` keys) against a
// serve() with shared connections, whose backends running idem_serve are
// killed once 10 requests are answered; then every key is sent again.  Asserts: only 201 and
// 503 during the storm; afterwards 201 for every key, a replay where the
// first answer was 201, and one effect per key.  Resolves to the statuses.
async function killStorm(srv, pool, prefix, count, body) {
  const keys = Array.from({ length: count }, (_, i) => uniqueKey(`${prefix}${i}`))
  const status = new Map()
  let next = 0
  const worker = async () => {
    while (next < keys.length) {
      const key = keys[next++]
      status.set(key, (await request(srv, { key, body })).status)
    }
  }
  const workers = Array.from({ length: 16 }, worker)
  while (status.size < 10) await sleep(5) // connections open and in use
  const { rows } = await pool.query(
    `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND pid <> pg_backend_pid()
        AND query LIKE '%idem_serve%'`)
  await Promise.all(workers)
  assert.ok(rows[0].n > 0, 'no connection was killed')
  const codes = [...status.values()]
  assert.ok(codes.every((c) => c === 201 || c === 503), `statuses ${[...new Set(codes)]}`)
  for (const key of keys) {
    const again = await request(srv, { key, body })
    assert.equal(again.status, 201, key)
    if (status.get(key) === 201) assert.equal(again.headers['idempotent-replayed'], 'true', key)
    assert.equal(await effects(pool, key), 1, key)
  }
  return codes
}

const quiet = { onError: () => {} }

module.exports = { RUN, uniqueKey, makePool, setup, serve, request, effects, sleep, quiet, countRoundTrips, killStorm, fixture, identicalStorm, fakePool, orHung }
