'use strict'
// Shared by the tests: pools on the cluster the environment names (PGHOST,
// PGPORT, PGUSER, PGDATABASE), an HTTP server around a listener, a plain
// HTTP client, and a round-trip counter on each database connection.

const http = require('node:http')
const crypto = require('node:crypto')
const pg = require('pg')

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

const quiet = { onError: () => {} }

module.exports = { RUN, uniqueKey, makePool, setup, serve, request, effects, sleep, quiet, countRoundTrips }
