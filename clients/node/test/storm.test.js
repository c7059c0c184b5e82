'use strict'
// Many requests at once: 64 identical ones run once; an immediate restart
// of the server in the middle of a storm loses no answered request.

const test = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const path = require('node:path')
const crypto = require('node:crypto')
const { wrap } = require('..')
const h = require('./helpers')

let pool, srv
const runs = new Map()

async function handler(req, res, ctx) {
  runs.set(ctx.key, (runs.get(ctx.key) || 0) + 1)
  await ctx.client.query('INSERT INTO node_effects (key, run) VALUES ($1, $2)', [ctx.key, runs.get(ctx.key)])
  if (req.url === '/slow') await ctx.client.query('SELECT pg_sleep(0.2)')
  res.statusCode = 201
  res.setHeader('content-type', 'application/json')
  res.end(JSON.stringify({ key: ctx.key, nonce: crypto.randomBytes(8).toString('hex') }))
}

test.before(async () => {
  await h.setup()
  pool = h.makePool({ max: 20 })
  srv = await h.serve(wrap(pool, handler, h.quiet))
})
test.after(async () => {
  await srv.close()
  await pool.end()
})

// The duplicates wait for the first (waitFor); without a bound they would
// get 409 (single.test.js).
test('64 concurrent identical requests: one execution, 63 byte-identical replays', async () => {
  const key = h.uniqueKey('storm64')
  const waiting = await h.serve(wrap(pool, handler, { ...h.quiet, waitFor: 20000 }))
  const all = await Promise.all(
    Array.from({ length: 64 }, () => h.request(waiting, { key, path: '/slow', body: '{"n":1}' }))
  ).finally(() => waiting.close())
  const fresh = all.filter((r) => r.headers['idempotent-replayed'] === undefined)
  const replays = all.filter((r) => r.headers['idempotent-replayed'] === 'true')
  assert.equal(fresh.length, 1)
  assert.equal(replays.length, 63)
  for (const r of all) {
    assert.equal(r.status, 201)
    assert.deepEqual(r.body, fresh[0].body)
    assert.equal(r.headers['content-type'], 'application/json')
  }
  assert.equal(runs.get(key), 1)
  assert.equal(await h.effects(pool, key), 1)
})

// pg_ctl restart -m immediate as the cluster's owner (this process runs as
// that user); the log goes to a file, so that the new server holds none of
// our pipes.
function restartServer() {
  return new Promise((resolve, reject) => {
    const pgCtl = path.join(process.env.PG_BIN, 'pg_ctl')
    const log = path.join(process.env.IDEM_CLIENT_WORK || '/tmp', 'node-restart-postgres.log')
    const child = spawn(pgCtl, ['-D', process.env.IDEM_PGDATA, '-l', log, '-m', 'immediate', '-w', 'restart'], {
      stdio: 'ignore',
    })
    child.on('error', reject)
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`pg_ctl restart exited with ${code}`))))
  })
}

test('pg_ctl restart -m immediate in a storm: every 2xx answer replays and its effect exists once', { skip: !process.env.IDEM_PGDATA || !process.env.PG_BIN }, async () => {
  const keys = Array.from({ length: 240 }, (_, i) => h.uniqueKey(`restart${i}`))
  const answered = new Map() // key -> body of a 2xx answer
  const failed = new Set()
  let next = 0
  const worker = async () => {
    while (next < keys.length) {
      const key = keys[next++]
      try {
        const res = await h.request(srv, { key, body: key })
        if (res.status >= 200 && res.status < 300) answered.set(key, res.body)
        else failed.add(key)
      } catch {
        failed.add(key)
      }
      await h.sleep(failed.has(key) ? 40 : 2) // the storm goes on after the restart
    }
  }
  const workers = Array.from({ length: 8 }, worker)
  await h.sleep(150)
  await restartServer()
  await Promise.all(workers)
  console.log(`restart storm: ${answered.size} answered 2xx, ${failed.size} not (retried below)`)
  assert.ok(answered.size > 0)
  assert.ok(failed.size > 0, 'the restart should have failed some requests')
  // After the restart every answered key replays its body and its effect
  // row exists exactly once; every other key, retried until answered, too.
  for (const key of keys) {
    let res
    for (let i = 0; i < 50; i++) {
      res = await h.request(srv, { key, body: key })
      if (res.status < 500) break
      await h.sleep(100)
    }
    assert.equal(res.status, 201, key)
    if (answered.has(key)) {
      assert.equal(res.headers['idempotent-replayed'], 'true')
      assert.deepEqual(res.body, answered.get(key))
    }
    assert.equal(await h.effects(pool, key), 1, key)
  }
})
