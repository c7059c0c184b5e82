'use strict'
// The same with Express (npm install express): middleware(pool, handler)
// is an Express (req, res, next) function; an error the handler throws is
// rolled back and passed to next(err).
//
//   PGDATABASE=shop node examples/express.js

const express = require('express')
const pg = require('pg')
const { middleware } = require('pg-idempotency')

const pool = new pg.Pool({ pipeline: true })
pool.on('error', (err) => console.error('idle client lost:', err.message))
const app = express()

app.post(
  '/orders',
  middleware(
    pool,
    async (req, res, ctx) => {
      const { item } = JSON.parse(req.rawBody.toString() || '{}')
      const { rows } = await ctx.client.query('INSERT INTO orders (item) VALUES ($1) RETURNING id::text', [item])
      res.status(201).location(`/orders/${rows[0].id}`).json({ id: rows[0].id, item })
    },
    { required: true, scope: 'orders' }
  )
)

// A charge at a payment provider: the claim commits first (with a lease),
// the call runs outside any transaction with the fencing token, and the
// answer is stored when it returns.
app.post(
  '/charges',
  middleware(
    pool,
    async (req, res, ctx) => {
      if (ctx.recoveryPoint !== 'charged') {
        await chargeCard(req.rawBody, { fencingToken: ctx.token }) // your provider's client
        await ctx.checkpoint('charged')
      }
      res.status(201).json({ charged: true, attempts: ctx.attempts })
    },
    { required: true, scope: 'charges', multiTransaction: true, lease: '30 seconds', waitFor: 10000 }
  )
)

async function chargeCard() {}

app.use((err, req, res, next) => res.status(500).json({ error: 'internal error' }))
app.listen(process.env.PORT || 8080)
