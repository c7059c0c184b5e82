'use strict'
// serve(): a handler written in SQL, run by idempotency.idem_serve in one
// statement per request.

const test = require('node:test')
const assert = require('node:assert/strict')
const { serve } = require('..')
const h = require('./helpers')

let pool, srv
const counter = { roundTrips: 0 }

test.before(async () => {
  await h.setup()
  pool = h.makePool({ counter })
  await pool.query(PLACE_ORDER)
  srv = await h.serve(serve(pool, 'node_place_order(text, bytea)', { ...h.quiet, waitFor: 20000 }), counter)
})

const PLACE_ORDER = `CREATE OR REPLACE FUNCTION node_place_order(key text, request bytea,
      OUT status int, OUT body bytea, OUT content_type text, OUT headers jsonb)
    LANGUAGE plpgsql AS $$
    DECLARE
      amount int := (convert_from(request, 'UTF8')::jsonb ->> 'amount')::int;
      n int;
    BEGIN
      IF amount IS NULL THEN
        status := 400; body := '{"error": "amount"}'; content_type := 'application/json'; RETURN;
      END IF;
      INSERT INTO node_effects (key, run) VALUES (key, 1);
      SELECT count(*) INTO n FROM node_effects e WHERE e.key = node_place_order.key;
      IF amount < 0 THEN
        status := 503; body := 'later'; content_type := 'text/plain'; RETURN;
      END IF;
      status := 201;
      body := convert_to(format('{"amount": %s,  "random": "%s"}', amount, md5(random()::text)), 'UTF8');
      content_type := 'application/json';
      headers := jsonb_build_object('location', '/orders/' || n);
    END $$`

test.after(async () => {
  await srv.close()
  await pool.end()
})

test('first request and replay, one round trip each', async () => {
  const key = h.uniqueKey('serve')
  const first = await h.request(srv, { key, body: '{"amount": 3}' })
  assert.equal(first.status, 201)
  assert.equal(first.headers['content-type'], 'application/json')
  assert.equal(first.headers.location, '/orders/1')
  assert.equal(first.headers['idempotent-replayed'], undefined)
  assert.equal(first.headers['x-test-round-trips'], '1')
  const again = await h.request(srv, { key, body: '{"amount": 3}' })
  assert.equal(again.status, 201)
  assert.equal(again.headers['idempotent-replayed'], 'true')
  assert.deepEqual(again.body, first.body)
  assert.equal(again.headers['x-test-round-trips'], '1')
  assert.equal(await h.effects(pool, key), 1)
})

test('another body under the same key is 422, a missing key 400', async () => {
  const key = h.uniqueKey('serve-mismatch')
  assert.equal((await h.request(srv, { key, body: '{"amount": 1}' })).status, 201)
  assert.equal((await h.request(srv, { key, body: '{"amount": 2}' })).status, 422)
  assert.equal((await h.request(srv, { body: '{"amount": 2}' })).status, 400)
})

test('a 5xx is not stored and its effect is undone; a retry runs again', async () => {
  const key = h.uniqueKey('serve-503')
  const first = await h.request(srv, { key, body: '{"amount": -1}' })
  assert.equal(first.status, 503)
  assert.equal(first.body.toString(), 'later')
  assert.equal(await h.effects(pool, key), 0)
  const { rows } = await pool.query('SELECT count(*)::int AS n FROM idempotency.claims WHERE key = $1', [key])
  assert.equal(rows[0].n, 0)
})

test('64 concurrent identical requests: one effect, 63 byte-identical replays', async () => {
  const key = h.uniqueKey('serve-storm')
  const answers = await Promise.all(Array.from({ length: 64 }, () => h.request(srv, { key, body: '{"amount": 9}' })))
  const replayed = answers.filter((a) => a.headers['idempotent-replayed'] === 'true')
  assert.equal(answers.filter((a) => a.status === 201).length, 64)
  assert.equal(replayed.length, 63)
  for (const a of answers) assert.deepEqual(a.body, answers[0].body)
  assert.equal(await h.effects(pool, key), 1)
})

test('a handler dropped and created again is found again by its name', async () => {
  const before = h.uniqueKey('serve-recreated')
  assert.equal((await h.request(srv, { key: before, body: '{"amount": 1}' })).status, 201)
  const { rows: [old] } = await pool.query("SELECT 'node_place_order(text, bytea)'::regprocedure::oid AS oid")
  await pool.query('DROP FUNCTION node_place_order(text, bytea)')
  await pool.query(PLACE_ORDER)
  const { rows: [now] } = await pool.query("SELECT 'node_place_order(text, bytea)'::regprocedure::oid AS oid")
  assert.notEqual(now.oid, old.oid)
  const key = h.uniqueKey('serve-recreated')
  const first = await h.request(srv, { key, body: '{"amount": 2}' })
  assert.equal(first.status, 201)
  assert.equal(first.headers['x-test-round-trips'], '2')  // the stale OID, then the name
  const again = await h.request(srv, { key, body: '{"amount": 2}' })
  assert.equal(again.headers['idempotent-replayed'], 'true')
  assert.equal(again.headers['x-test-round-trips'], '1')
  assert.equal(await h.effects(pool, key), 1)
})
