'use strict'
// pg-idempotency: the Idempotency-Key header for node:http and Express,
// over the idempotency PostgreSQL extension (idem_claim, idem_complete).
//
// wrap(pool, handler, options) gives a node:http request listener and
// middleware(pool, handler, options) an Express-style (req, res, next)
// function; both run the same flow (see the README for the outcomes, the
// round trips and the type mapping):
//
//   single transaction (default): BEGIN + claim, the handler on the same
//   client, idem_complete + COMMIT; a 5xx or a throw rolls back; 40001 and
//   40P01 run the whole transaction again, handler included.
//
//   multiTransaction: the claim commits at once with a lease, the handler
//   runs outside any transaction with the fencing token, idem_complete
//   commits on its own; a throw or a 5xx records a retryable failure.
//
// The handler's response is buffered (see capture.js) and sent only after
// the commit, so what a client was told is what a retry replays.

const crypto = require('node:crypto')
const { Capture } = require('./capture')
const db = require('./db')
const { Mux, GroupCommit } = require('./mux')

const DEFAULTS = {
  required: false,
  scope: 'default',
  keptHeaders: ['location'],
  retries: 3,
  waitFor: null,
  multiTransaction: false,
  lease: null,
  ttl: null,
  maxBodyBytes: 1024 * 1024,
  multiplex: 0,
  batch: 1,
  stallMs: 50,
  onError: (err) => console.error('pg-idempotency:', err && err.message),
}

const MAX_KEY_BYTES = 255

class HttpError extends Error {
  constructor(status, message, headers) {
    super(message)
    this.status = status
    this.headers = headers || {}
  }
}

function retryable(err) {
  return err && (err.code === '40001' || err.code === '40P01')
}

// A lost or refused connection, or a server shutting down or starting up:
// the outcome of the transaction may be unknown, so the client is told to
// retry (with the same key it gets the replay or a fresh run).
function unavailable(err) {
  if (!err) return false
  const code = typeof err.code === 'string' ? err.code : ''
  if (/^(08|57P0)/.test(code)) return true
  if (/^E[A-Z]+$/.test(code) && err.syscall) return true // ECONNREFUSED, ECONNRESET, EPIPE...
  return /Connection terminated|not queryable|Client was closed/.test(err.message || '')
}

function normaliseOptions(options) {
  const o = { ...DEFAULTS, ...(options || {}) }
  o.keptHeaders = (o.keptHeaders || []).map((h) => String(h).toLowerCase())
  if (!Number.isInteger(o.retries) || o.retries < 0) throw new RangeError('retries must be an integer >= 0')
  if (typeof o.scope !== 'string' && typeof o.scope !== 'function') throw new TypeError('scope must be a string or a function (req) => string')
  db.interval(o.waitFor) // throws early on a bad value
  if (o.waitFor === 0) throw new RangeError('waitFor must be positive; leave it null for no waiting')
  db.interval(o.lease)
  db.interval(o.ttl)
  return o
}

// The request's scope: the option, or what its function returns, which
// must be a string (anything else would be sent as something else: an
// array as an array literal, a Buffer as bytes).
async function scopeOf(o, req) {
  const scope = typeof o.scope === 'function' ? await o.scope(req) : o.scope
  if (typeof scope !== 'string') throw new TypeError(`scope must be a string, not ${scope === null ? 'null' : typeof scope}`)
  return scope
}

function fingerprint(method, target, body) {
  return crypto.createHash('sha256').update(`${method} ${target}\n`).update(body).digest()
}

function readBody(req, limit) {
  if (Buffer.isBuffer(req.rawBody)) return Promise.resolve(req.rawBody)
  if (req.readableEnded) {
    // Read before us (a body parser): use what it kept, if it kept bytes.
    if (Buffer.isBuffer(req.body)) return Promise.resolve(req.body)
    if (typeof req.body === 'string') return Promise.resolve(Buffer.from(req.body))
    const length = req.headers['content-length']
    if (!req.headers['transfer-encoding'] && (length === undefined || length === '0')) {
      return Promise.resolve(Buffer.alloc(0))
    }
    return Promise.reject(
      new Error('the request body was read before the idempotency middleware and its bytes were not kept in req.rawBody')
    )
  }
  return new Promise((resolve, reject) => {
    const chunks = []
    let size = 0
    req.on('data', (chunk) => {
      size += chunk.length
      if (size > limit) {
        req.removeAllListeners('data')
        req.resume()
        reject(new HttpError(413, 'request body too large'))
        return
      }
      chunks.push(chunk)
    })
    req.on('end', () => resolve(Buffer.concat(chunks)))
    req.on('error', reject)
  })
}

function sendJsonError(res, status, message, headers) {
  res.statusCode = status
  res.setHeader('content-type', 'application/json')
  for (const [name, value] of Object.entries(headers || {})) res.setHeader(name, value)
  res.end(JSON.stringify({ error: message }))
}

// What is stored: the status, the Content-Type, the kept headers and the
// body bytes, exactly as the first client received them.
function storedResponse(captured, kept) {
  const headers = {}
  for (const name of kept) {
    const value = captured.headers[name]
    if (value === undefined || name === 'content-type') continue
    headers[name] = Array.isArray(value) ? value.map(String) : String(value)
  }
  const ct = captured.headers['content-type']
  return {
    status: captured.status,
    contentType: ct === undefined ? null : String(ct),
    headers,
    body: captured.body,
  }
}

function sendReplay(res, claim) {
  let body = claim.body
  let contentType = claim.contentType
  if (body === null && claim.response !== null && claim.response !== undefined) {
    // completed by a SQL caller with response jsonb only
    body = Buffer.from(JSON.stringify(claim.response))
    contentType = contentType || 'application/json'
  }
  res.statusCode = claim.status || 200
  for (const [name, value] of Object.entries(claim.headers || {})) res.setHeader(name, value)
  if (contentType !== null && contentType !== undefined) res.setHeader('content-type', contentType)
  res.setHeader('idempotent-replayed', 'true')
  res.end(body || Buffer.alloc(0))
}

function sendCaptured(res, captured) {
  res.statusCode = captured.status
  res.end(captured.body)
}

// Answer a claim that is not ours (replay, conflict, mismatch).  Returns
// false for claimed/reclaimed.
function answerOthers(res, claim) {
  switch (claim.outcome) {
    case 'completed':
      sendReplay(res, claim)
      return true
    case 'in_progress':
      sendJsonError(res, 409, 'a request with this Idempotency-Key is in progress', { 'retry-after': '1' })
      return true
    case 'mismatch':
      sendJsonError(res, 422, 'this Idempotency-Key was used with another request')
      return true
    case 'claimed':
    case 'reclaimed':
      return false
    default:
      throw new Error(`unexpected claim outcome "${claim.outcome}"`)
  }
}

// Run the handler against the captured response: resolves when it has
// ended the response and (if it returned a promise) settled.
async function runHandler(handler, req, res, ctx, capture) {
  const returned = handler(req, res, ctx)
  if (returned && typeof returned.then === 'function') {
    await Promise.race([capture.ended, returned])
    await returned
  }
  await capture.ended
  return capture.result()
}

async function rollback(client) {
  try {
    await client.query('ROLLBACK')
    return null
  } catch (err) {
    return err
  }
}

// One attempt of the single-transaction flow, on one client.  Returns
// normally once the response is sent; throws a retryable error (nothing
// sent) for the caller to run it again, or another error (nothing sent).
async function singleAttempt(client, r) {
  const { req, res, capture, o } = r
  let claim = null
  if (r.key !== null) {
    const [, claimed] = await db.send(client, ['BEGIN', db.claimQuery(r)])
    claim = db.claimRow(claimed.rows[0])
    if (answerOthers(res, claim)) {
      // the claim wrote nothing: end the transaction after answering
      await client.query('COMMIT')
      return
    }
  } else if (client.pipeline) {
    // BEGIN goes out with the handler's first query; checked below
    r.begin = client.query('BEGIN')
    r.begin.catch(() => {})
  } else {
    await client.query('BEGIN')
  }
  const ctx = {
    key: r.key,
    scope: r.scope,
    outcome: claim ? claim.outcome : null,
    token: claim ? claim.token : null,
    attempts: claim ? claim.attempts : null,
    recoveryPoint: claim ? claim.recoveryPoint : null,
    body: r.body,
    client,
  }
  req.idempotency = ctx
  capture.install()
  let captured
  try {
    captured = await runHandler(r.handler, req, res, ctx, capture)
    if (r.begin) await r.begin
  } catch (err) {
    capture.release()
    throw err
  }
  capture.release()
  if (captured.status >= 500) {
    const rbErr = await rollback(client)
    if (rbErr) r.releaseWith = rbErr
    sendCaptured(res, captured)
    return
  }
  const queries = []
  if (claim) queries.push(db.completeQuery(r, claim.token, storedResponse(captured, o.keptHeaders)))
  queries.push('COMMIT')
  const results = await db.send(client, queries)
  if (results[results.length - 1].command !== 'COMMIT') {
    // the handler's work failed and it answered anyway: nothing committed
    throw new Error('the transaction was rolled back at COMMIT (an error inside the handler was caught)')
  }
  sendCaptured(res, captured)
}

async function runSingle(r) {
  const { o, res } = r
  for (let attempt = 0; ; attempt++) {
    let client
    try {
      client = await r.pool.connect()
    } catch (err) {
      throw Object.assign(err, { beforeHandler: true })
    }
    r.begin = null
    r.releaseWith = null
    // A connection lost while we hold the client is an 'error' event on it
    // (fatal to the process if unheard); its queries fail as well, and the
    // client is released with the error so that the pool drops it.
    let lost = null
    const onLost = (err) => {
      lost = err
    }
    client.on('error', onLost)
    const release = (err) => {
      client.removeListener('error', onLost)
      client.release(err || lost || undefined)
    }
    try {
      await singleAttempt(client, r)
      release(r.releaseWith)
      return
    } catch (err) {
      // whatever failed (the claim, the handler, the completion), end the
      // transaction before the client goes back to the pool
      const rbErr = lost || unavailable(err) ? err : await rollback(client)
      release(rbErr || undefined)
      if (res.writableEnded) {
        // answered already (a replay); only ending its transaction failed
        o.onError(err)
        return
      }
      if (retryable(err) && attempt < o.retries) {
        r.capture.reset()
        r.retried = attempt + 1
        continue
      }
      throw err
    }
  }
}

async function runMulti(r) {
  const { o, res, req, capture, pool } = r
  let claim
  for (let attempt = 0; ; attempt++) {
    try {
      claim = db.claimRow((await pool.query(db.claimQuery(r))).rows[0])
      break
    } catch (err) {
      if (!(retryable(err) && attempt < o.retries)) throw Object.assign(err, { beforeHandler: true })
    }
  }
  if (answerOthers(res, claim)) return
  const token = claim.token
  const ctx = {
    key: r.key,
    scope: r.scope,
    outcome: claim.outcome,
    token,
    attempts: claim.attempts,
    recoveryPoint: claim.recoveryPoint,
    body: r.body,
    checkpoint: async (point) => (await pool.query(db.checkpointQuery(r, token, point))).rows[0].done,
    extend: async (lease) => (await pool.query(db.extendQuery(r, token, lease))).rows[0].lease_ends,
  }
  req.idempotency = ctx
  capture.install()
  let captured
  try {
    captured = await runHandler(r.handler, req, res, ctx, capture)
  } catch (err) {
    capture.release()
    await pool.query(db.failQuery(r, token)).catch(o.onError)
    throw err
  }
  capture.release()
  if (captured.status >= 500) {
    await pool.query(db.failQuery(r, token)).catch(o.onError)
    sendCaptured(res, captured)
    return
  }
  try {
    await pool.query(db.completeQuery(r, token, storedResponse(captured, o.keptHeaders)))
  } catch (err) {
    if (err.code === '40001') {
      // stale token: the lease ran out and another request took over
      capture.reset()
      sendJsonError(res, 409, 'the lease of this Idempotency-Key ran out and another request took it over', {
        'retry-after': '1',
      })
      return
    }
    throw err
  }
  sendCaptured(res, captured)
}

// Runs without a key (not required) in multi-transaction mode: no claim,
// no transaction.
async function runPlain(r) {
  const noop = async () => null
  const ctx = { key: null, scope: r.scope, outcome: null, token: null, attempts: null, recoveryPoint: null, body: r.body, checkpoint: noop, extend: noop }
  r.req.idempotency = ctx
  const returned = r.handler(r.req, r.res, ctx)
  if (returned && typeof returned.then === 'function') await returned
}

function build(pool, handler, options, expressStyle) {
  if (!pool || typeof pool.connect !== 'function') throw new TypeError('pool must be a pg.Pool (or have connect() and query())')
  if (typeof handler !== 'function') throw new TypeError('handler must be a function (req, res, ctx)')
  const o = normaliseOptions(options)
  if (o.multiplex !== 0 || o.batch !== 1 || o.stallMs !== DEFAULTS.stallMs) {
    throw new TypeError('multiplex, batch and stallMs apply to serve() only: a handler in JavaScript needs its own connection for its transaction')
  }

  return function idempotencyHandler(req, res, next) {
    const capture = new Capture(res)
    const r = { pool, handler, o, req, res, capture, key: null, scope: null, body: null, retried: 0 }
    const fail = (err) => {
      capture.release()
      if (res.writableEnded) return
      capture.reset()
      capture.release()
      if (err instanceof HttpError) return sendJsonError(res, err.status, err.message, err.headers)
      if (retryable(err)) {
        o.onError(err)
        return sendJsonError(res, 503, 'the transaction kept failing to serialize; retry', { 'retry-after': '1' })
      }
      if (unavailable(err)) {
        o.onError(err)
        return sendJsonError(res, 503, 'the database is unavailable; retry', { 'retry-after': '1' })
      }
      if (expressStyle && typeof next === 'function' && !err.beforeHandler) return next(err)
      o.onError(err)
      sendJsonError(res, 500, 'internal error')
    }
    const run = async () => {
      let key = req.headers['idempotency-key']
      if (Array.isArray(key)) key = key[0]
      if (key === undefined || key === '') {
        if (o.required) throw new HttpError(400, 'missing Idempotency-Key header')
        key = null
      } else if (Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES) {
        throw new HttpError(400, `Idempotency-Key longer than ${MAX_KEY_BYTES} bytes`)
      }
      r.key = key
      r.scope = await scopeOf(o, req)
      r.ttl = o.ttl
      r.lease = o.lease
      r.waitFor = o.waitFor
      if (key !== null || !o.multiTransaction) {
        r.body = await readBody(req, o.maxBodyBytes)
        req.rawBody = r.body
      }
      if (key !== null) r.fingerprint = fingerprint(req.method, req.originalUrl || req.url, r.body)
      if (key === null && o.multiTransaction) return runPlain(r)
      return o.multiTransaction ? runMulti(r) : runSingle(r)
    }
    run().catch(fail)
  }
}

// A node:http request listener: http.createServer(wrap(pool, handler)).
function wrap(pool, handler, options) {
  const h = build(pool, handler, options, false)
  return (req, res) => h(req, res)
}

// An Express-style (req, res, next) function: app.post('/orders',
// middleware(pool, handler)).  An error the handler throws goes to next(err)
// after the rollback.
function middleware(pool, handler, options) {
  return build(pool, handler, options, true)
}

// serve(pool, handlerName, options): a node:http request listener for a
// handler written in SQL, handler(key text, request bytea) returning status
// int, body bytea, content_type text, headers jsonb, named as a
// regprocedure ('place_order(text, bytea)').  idempotency.idem_serve
// claims, runs it and stores its answer in one statement: one round trip
// and one transaction per request, whatever the outcome.  The key is
// required; 40001 and 40P01 are run again, up to retries.
//
// The first statement names the handler; the server answers with its OID,
// which later statements pass instead (the name's parse, types and all,
// costs the server more than the rest of a replay's input).  A function
// dropped and created again has another OID: the statement that fails on
// the old one (42883) is sent again with the name.
const SERVE =
  'SELECT outcome::text, status, body, content_type, headers, $1::regprocedure::oid::text AS handler' +
  ' FROM idempotency.idem_serve($1::regprocedure, $2, $3::bytea, $4::bytea, $5,' +
  ' $6::interval, $7::interval)'

// Several requests in one statement, and so one transaction (serve()'s
// batch: group commit): idem_serve called once per element of the
// arrays, in their order, each row numbered by its request.
const SERVE_MANY =
  'SELECT a.n::int AS n, s.outcome::text, s.status, s.body, s.content_type, s.headers, a.h::oid::text AS handler' +
  ' FROM unnest($1::regprocedure[], $2::text[], $3::bytea[], $4::bytea[], $5::text[], $6::interval[])' +
  ' WITH ORDINALITY AS a(h, k, r, f, sc, t, n),' +
  ' LATERAL idempotency.idem_serve(a.h, a.k, a.r, a.f, a.sc, a.t, NULL) s'

function serveMany(configs) {
  const columns = [[], [], [], [], [], []]
  for (const { values } of configs) for (let i = 0; i < 6; i++) columns[i].push(values[i])
  return { name: 'idem_node_serve_many', text: SERVE_MANY, values: columns }
}

function serve(pool, handlerName, options) {
  if (!pool || typeof pool.query !== 'function') throw new TypeError('pool must be a pg.Pool (or have query())')
  if (typeof handlerName !== 'string' || handlerName === '') throw new TypeError("handlerName must name a SQL function, such as 'place_order(text, bytea)'")
  const o = normaliseOptions(options)
  if (!Number.isInteger(o.multiplex) || o.multiplex < 0) throw new RangeError('multiplex must be an integer >= 0')
  if (!Number.isInteger(o.batch) || o.batch < 1) throw new RangeError('batch must be an integer >= 1')
  // (a timer's limit: setTimeout takes 1 ms for more)
  if (typeof o.stallMs !== 'number' || !(o.stallMs > 0) || !(o.stallMs <= 2147483647)) {
    throw new RangeError('stallMs must be a number of milliseconds > 0 and at most 2147483647')
  }
  if (o.batch > 1 && o.multiplex === 0) throw new TypeError('batch needs multiplex: the requests of a batch share one of its connections')
  let mux = null
  if (o.multiplex > 0) {
    if (typeof pool.connect !== 'function' || !pool.options) throw new TypeError('multiplex needs a pg.Pool')
    if (o.batch === 1 && pool.options.pipeline !== true) {
      throw new TypeError('multiplex without batch needs a pg.Pool made with pipeline: true (pg 8.23 or later)')
    }
    if (!(o.multiplex < pool.options.max)) {
      throw new RangeError(`multiplex must be less than the pool's max (${pool.options.max}), so that a duplicate sent again to wait and the application's other queries find a connection`)
    }
    if (pool.options.query_timeout) {
      throw new TypeError("multiplex does not go with the pool's query_timeout: its timer counts the time a statement waits behind others, and when it fires the connection is closed with every statement on it (use statement_timeout)")
    }
    mux = o.batch > 1
      ? new GroupCommit(pool, o.multiplex, o.stallMs, o.batch, serveMany, (c) => c.values[2].length)
      : new Mux(pool, o.multiplex, o.stallMs)
  }
  let handlerRef = handlerName  // the name, or the OID the server gave for it
  return (req, res) => {
    const run = async () => {
      let key = req.headers['idempotency-key']
      if (Array.isArray(key)) key = key[0]
      if (key === undefined || key === '') throw new HttpError(400, 'missing Idempotency-Key header')
      if (Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES) throw new HttpError(400, `Idempotency-Key longer than ${MAX_KEY_BYTES} bytes`)
      const scope = await scopeOf(o, req)
      const body = await readBody(req, o.maxBodyBytes)
      const waitFor = db.interval(o.waitFor)
      // Multiplexed, a statement must not wait: the requests queued behind
      // it on its connection would wait too.  It is sent without the bound;
      // a duplicate that finds the key in progress is sent again with it,
      // on a connection of its own.
      let shared = mux !== null
      const values = [handlerRef, key, body, fingerprint(req.method, req.originalUrl || req.url, body),
        scope, db.interval(o.ttl), shared ? null : waitFor]
      let rows
      for (let attempt = 0; ; attempt++) {
        try {
          ({ rows } = await (shared ? mux : pool).query({ name: 'idem_node_serve', text: SERVE, values }))
          if (shared && waitFor !== null && rows[0].outcome === 'in_progress') {
            shared = false
            values[6] = waitFor
            if (values[0] === handlerName) handlerRef = rows[0].handler
            values[0] = handlerRef
            attempt--
            continue
          }
          break
        } catch (err) {
          if (err.code === '42883' && values[0] !== handlerName) {
            values[0] = handlerRef = handlerName  // an OID gone stale: by name again
            attempt--
            continue
          }
          if (!retryable(err) || attempt >= o.retries) throw err
        }
      }
      const row = rows[0]
      if (values[0] === handlerName) handlerRef = row.handler
      const answer = { outcome: row.outcome, status: row.status, body: row.body, contentType: row.content_type, headers: row.headers, response: null }
      if (answerOthers(res, answer)) return
      res.statusCode = answer.status
      for (const [name, value] of Object.entries(answer.headers || {})) res.setHeader(name, value)
      if (answer.contentType !== null) res.setHeader('content-type', answer.contentType)
      res.end(answer.body || Buffer.alloc(0))
    }
    run().catch((err) => {
      if (res.writableEnded) return
      if (err instanceof HttpError) return sendJsonError(res, err.status, err.message, err.headers)
      o.onError(err)
      if (retryable(err)) return sendJsonError(res, 503, 'the transaction kept failing to serialize; retry', { 'retry-after': '1' })
      if (unavailable(err)) return sendJsonError(res, 503, 'the database is unavailable; retry', { 'retry-after': '1' })
      sendJsonError(res, 500, 'internal error')
    })
  }
}

module.exports = {
  wrap,
  middleware,
  serve,
  claim: db.claim,
  fingerprint,
  MAX_KEY_BYTES,
}
