'use strict'
// The SQL the middleware sends, and how it is sent.
//
// Statements are named, so node-postgres parses each once per connection
// and then only binds and executes it.  Every value is a parameter: no user
// text is ever put into SQL.  bigint (int8) columns are read as decimal
// strings whatever type parsers the application set globally, so a fencing
// token or a snowflake above 2^53 never becomes a float.

const { types } = require('pg')

const INT8 = 20
const resultTypes = {
  getTypeParser(oid, format) {
    if (oid === INT8) return (value) => (value === null ? null : String(value))
    return types.getTypeParser(oid, format)
  },
}

// The claim.  Without waitFor, wait => false and wait_for NULL: a duplicate
// is told in_progress at once, whether the claim it meets is committed or
// not.  With it, wait => true and wait_for => the bound: the server bounds
// every wait on the key.
const CLAIM =
  'SELECT * FROM idempotency.idem_claim($1, $2::interval, $3::bytea, $4, $5::interval,' +
  ' wait => $6::boolean, wait_for => $7::interval)'
const COMPLETE =
  'SELECT idempotency.idem_complete($1, $2::bigint, NULL, $3::int, $4,' +
  ' body => $5::bytea, content_type => $6, headers => $7::jsonb) AS done'
const FAIL = 'SELECT idempotency.idem_fail($1, $2::bigint, true, scope => $3) AS done'
const CHECKPOINT = 'SELECT idempotency.idem_checkpoint($1, $2::bigint, $3, $4) AS done'
const EXTEND = 'SELECT idempotency.idem_extend($1, $2::bigint, $3::interval, $4) AS lease_ends'

// An interval option: a number is milliseconds, a string is PostgreSQL
// interval text ('30 seconds').
function interval(value) {
  if (value === null || value === undefined) return null
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new RangeError('an interval in milliseconds must be a finite number >= 0')
    return `${value} milliseconds`
  }
  return String(value)
}

function claimQuery(c) {
  const waitFor = interval(c.waitFor)
  const values = [c.key, interval(c.ttl), c.fingerprint || null, c.scope, interval(c.lease), waitFor !== null, waitFor]
  return { name: 'idem_node_claim', text: CLAIM, values, types: resultTypes }
}

function completeQuery(c, token, response) {
  return {
    name: 'idem_node_complete',
    text: COMPLETE,
    values: [c.key, token, response.status, c.scope, response.body, response.contentType, JSON.stringify(response.headers)],
  }
}

function failQuery(c, token) {
  return { name: 'idem_node_fail', text: FAIL, values: [c.key, token, c.scope] }
}

function checkpointQuery(c, token, point) {
  return { name: 'idem_node_checkpoint', text: CHECKPOINT, values: [c.key, token, point, c.scope] }
}

function extendQuery(c, token, lease) {
  return { name: 'idem_node_extend', text: EXTEND, values: [c.key, token, interval(lease), c.scope] }
}

// Send the queries in one round trip when the client pipelines (pg 8.23,
// `pipeline: true`), else one after the other.  Resolves to their results;
// rejects with the first error, after every query has answered (so that no
// rejection is left unhandled and the connection is idle again).
async function send(client, queries) {
  if (!client.pipeline) {
    const results = []
    for (const q of queries) results.push(await client.query(q))
    return results
  }
  const settled = await Promise.allSettled(queries.map((q) => client.query(q)))
  const failed = settled.find((s) => s.status === 'rejected')
  if (failed) throw failed.reason
  return settled.map((s) => s.value)
}

// The claim's row, as the application sees it: idem_claim_result with
// snake_case columns in camelCase (see the README's type mapping).
function claimRow(row) {
  return {
    outcome: row.outcome,
    token: row.token,
    response: row.response,
    status: row.status,
    recoveryPoint: row.recovery_point,
    attempts: row.attempts,
    expiresAt: row.expires_at,
    body: row.body,
    contentType: row.content_type,
    headers: row.headers,
  }
}

// Claim a key with a client of one's own (in or out of a transaction).
async function claim(client, key, options = {}) {
  const res = await client.query(
    claimQuery({
      key,
      ttl: options.ttl,
      fingerprint: options.fingerprint,
      scope: options.scope || 'default',
      lease: options.lease,
      waitFor: options.waitFor,
    })
  )
  return claimRow(res.rows[0])
}

module.exports = {
  interval,
  claimQuery,
  completeQuery,
  failQuery,
  checkpointQuery,
  extendQuery,
  send,
  claimRow,
  claim,
  resultTypes,
}
