'use strict'
// Express: middleware(pool, handler) as a route handler; res.status().json()
// is captured and replayed; a throw rolls back and goes to next(err).

const test = require('node:test')
const assert = require('node:assert/strict')
const express = require('express')
const { middleware } = require('..')
const h = require('./helpers')

let pool, srv
let runs = 0

test.before(async () => {
  await h.setup()
  pool = h.makePool()
  const app = express()
  app.post(
    '/orders',
    middleware(
      pool,
      async (req, res, ctx) => {
        runs++
        const order = JSON.parse(req.rawBody)
        await ctx.client.query('INSERT INTO node_effects (key, run) VALUES ($1, $2)', [ctx.key, runs])
        if (order.fail) throw new Error('no stock')
        res.status(201).location(`/orders/${runs}`).json({ id: runs, item: order.item })
      },
      { ...h.quiet, required: true }
    )
  )
  app.use((err, req, res, next) => {
    res.status(500).type('text').send(`handled: ${err.message}`)
  })
  srv = await h.serve(app)
})
test.after(async () => {
  await srv.close()
  await pool.end()
})

test('Express: json answer replays byte for byte with Location', async () => {
  const key = h.uniqueKey('express')
  const body = '{"item":"tea"}'
  const first = await h.request(srv, { key, body, headers: { 'content-type': 'application/json' } })
  assert.equal(first.status, 201)
  const again = await h.request(srv, { key, body, headers: { 'content-type': 'application/json' } })
  assert.equal(again.status, 201)
  assert.equal(again.headers['idempotent-replayed'], 'true')
  assert.equal(again.headers.location, first.headers.location)
  assert.equal(again.headers['content-type'], 'application/json; charset=utf-8')
  assert.deepEqual(again.body, first.body)
  assert.equal(await h.effects(pool, key), 1)
})

test("Express: a throw rolls back and reaches the app's error handler", async () => {
  const key = h.uniqueKey('express-throw')
  const res = await h.request(srv, { key, body: '{"fail":true}' })
  assert.equal(res.status, 500)
  assert.equal(res.body.toString(), 'handled: no stock')
  assert.equal(await h.effects(pool, key), 0)
  assert.equal((await h.request(srv, { body: '{}' })).status, 400) // required
})
