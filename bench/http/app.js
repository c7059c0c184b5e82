'use strict'
// bench/http/app.js: one HTTP service, two ways of making POST /orders
// idempotent, for bench/http.sh and bench/http-crash.sh.
//
//   node app.js ext PORT            the pg-idempotency middleware (clients/node):
//                                   claim, order and stored answer in one transaction
//   node app.js ext-sql PORT        the same with the handler in SQL (serve(): one
//                                   statement, idem_serve, per request)
//   node app.js ext-mux PORT        serve() with multiplex: 4, the statements of
//                                   concurrent requests pipelined on 4 shared connections
//   node app.js ext-batch PORT      serve() with multiplex: 4 and batch: 32, the requests
//                                   that wait for a shared connection sent together in one
//                                   statement: one transaction and one commit for them all
//   node app.js ext-fn PORT         a hand-written SQL function (claim, order, completion:
//                                   order_once in bench/http/lib.sh) called in one statement,
//                                   without the client: the least a request can cost here
//   node app.js redis PORT REDIS    the Redis + PostgreSQL design: SET NX PX for the key,
//                                   the order in PostgreSQL, then the answer stored in Redis
//
// The handler is the same: read {"amount": n}, insert an order, answer 201
// with its id.  The orders table has no unique key, so an order made twice
// for one key shows as two rows.  PG* variables name the database.
const http = require('node:http')
const crypto = require('node:crypto')
const pg = require('pg')

const [mode, port, redisSocket] = process.argv.slice(2)
const pool = new pg.Pool({ max: 16, pipeline: true })
// An idle connection the server closed (a restart) is dropped by the pool;
// without a listener its 'error' event would end the process.
pool.on('error', () => {})

async function order (db, key, body) {
  const { amount } = JSON.parse(body)
  const { rows } = await db.query(
    'INSERT INTO orders (key, amount) VALUES ($1, $2) RETURNING id::text', [key, amount])
  return JSON.stringify({ id: rows[0].id, amount })
}

function readBody (req) {
  return new Promise((resolve, reject) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => resolve(Buffer.concat(chunks)))
    req.on('error', reject)
  })
}

function send (res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers })
  res.end(body)
}

async function main () {
  let handler
  if (mode === 'ext') {
    // clients/node, its pg found through NODE_PATH (bench/http/node_modules)
    const { wrap } = require('../../clients/node')
    handler = wrap(pool, async (req, res, ctx) => {
      send(res, 201, await order(ctx.client, req.headers['idempotency-key'], ctx.body))
    }, { required: true, scope: 'orders' })
  } else if (mode === 'ext-sql') {
    // The same order as a SQL function (bench/http/lib.sh), served by
    // clients/node's serve(): claim, order and answer in one statement.
    const { serve } = require('../../clients/node')
    handler = serve(pool, 'place_order(text, bytea)', { scope: 'orders' })
  } else if (mode === 'ext-mux') {
    const { serve } = require('../../clients/node')
    handler = serve(pool, 'place_order(text, bytea)', { scope: 'orders', multiplex: 4 })
  } else if (mode === 'ext-batch') {
    const { serve } = require('../../clients/node')
    handler = serve(pool, 'place_order(text, bytea)', { scope: 'orders', multiplex: 4, batch: 32 })
  } else if (mode === 'ext-fn') {
    handler = async (req, res) => {
      const key = req.headers['idempotency-key']
      if (!key) return send(res, 400, '{"error": "Idempotency-Key required"}')
      const body = await readBody(req)
      const fp = crypto.createHash('sha256').update(`${req.method} ${req.url}\n`).update(body).digest()
      try {
        const { rows } = await pool.query({ name: 'order_once', text: 'SELECT * FROM order_once($1, $2, $3)', values: [key, body, fp] })
        const r = rows[0]
        if (r.outcome === 'claimed' || r.outcome === 'reclaimed') return send(res, r.status, r.body)
        if (r.outcome === 'completed') return send(res, r.status, r.body, { 'idempotent-replayed': 'true' })
        if (r.outcome === 'mismatch') return send(res, 422, '{"error": "key reused with another request"}')
        return send(res, 409, '{"error": "in progress"}', { 'retry-after': '1' })
      } catch (e) {
        send(res, 503, '{"error": "unavailable"}')
      }
    }
  } else if (mode === 'redis') {
    const { createClient } = require('redis')
    const redis = createClient({ socket: { path: redisSocket, reconnectStrategy: () => 50 } })
    redis.on('error', () => {})   // reconnects; requests meanwhile fail with 503
    await redis.connect()
    handler = async (req, res) => {
      const key = req.headers['idempotency-key']
      if (!key) return send(res, 400, '{"error": "Idempotency-Key required"}')
      const body = await readBody(req)
      const fp = crypto.createHash('sha256').update(`${req.method} ${req.url}\n`).update(body).digest('hex')
      const rkey = `idem:orders:${key}`
      try {
        // 1. Take the key, with a lease, unless someone has.
        const took = await redis.set(rkey, JSON.stringify({ state: 'in_progress', fp }), { NX: true, PX: 60000 })
        if (took === null) {
          const seen = JSON.parse(await redis.get(rkey) || 'null')
          if (seen === null) return send(res, 409, '{"error": "in progress"}', { 'retry-after': '1' })
          if (seen.fp !== fp) return send(res, 422, '{"error": "key reused with another request"}')
          if (seen.state !== 'done') return send(res, 409, '{"error": "in progress"}', { 'retry-after': '1' })
          return send(res, seen.status, seen.body, { 'idempotent-replayed': 'true' })
        }
        // 2. The business write, in PostgreSQL.
        let answer
        try {
          answer = await order(pool, key, body.toString())
        } catch (e) {
          await redis.del(rkey)
          throw e
        }
        // 3. The answer, stored in Redis for the duplicates.
        await redis.set(rkey, JSON.stringify({ state: 'done', fp, status: 201, body: answer }), { PX: 86400000 })
        send(res, 201, answer)
      } catch (e) {
        if (!res.headersSent) send(res, 503, '{"error": "unavailable"}')
      }
    }
  } else {
    throw new Error('mode must be ext, ext-sql, ext-mux, ext-batch, ext-fn or redis')
  }
  const server = http.createServer((req, res) => {
    Promise.resolve(handler(req, res)).catch(() => {
      if (!res.headersSent) send(res, 500, '{"error": "internal"}')
    })
  })
  server.keepAliveTimeout = 60000
  server.listen(Number(port), '127.0.0.1', () => console.log(`listening ${mode} ${port} pid ${process.pid}`))
}

main().catch((e) => { console.error(e); process.exit(1) })
