'use strict'
// POST /orders with an Idempotency-Key, on node:http.  The order is written
// in the request's transaction (ctx.client), so it commits with the claim
// and the stored answer, or not at all.
//
//   psql -c 'CREATE EXTENSION IF NOT EXISTS idempotency' \
//        -c 'CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, item text)'
//   PGDATABASE=shop node examples/http-server.js
//   curl -i -X POST -H 'Idempotency-Key: 8e0c' -d '{"item":"tea"}' localhost:8080/orders

const http = require('node:http')
const pg = require('pg')
const { wrap } = require('pg-idempotency')

const pool = new pg.Pool({ pipeline: true }) // PG* environment variables
pool.on('error', (err) => console.error('idle client lost:', err.message))

async function createOrder(req, res, ctx) {
  if (req.method !== 'POST' || req.url !== '/orders') {
    res.statusCode = 404
    return res.end()
  }
  const { item } = JSON.parse(ctx.body.toString() || '{}')
  const { rows } = await ctx.client.query('INSERT INTO orders (item) VALUES ($1) RETURNING id::text', [item])
  res.statusCode = 201
  res.setHeader('content-type', 'application/json')
  res.setHeader('location', `/orders/${rows[0].id}`)
  res.end(JSON.stringify({ id: rows[0].id, item }))
}

http.createServer(wrap(pool, createOrder, { required: true, scope: 'orders', waitFor: 5000 })).listen(process.env.PORT || 8080)
