'use strict'
// bench/http/load.js: POST /orders with Idempotency-Key from many
// connections for a while; a share of the requests repeat a key already
// sent (a client's retry), the others use a new one.  Prints one JSON line:
// requests per second, p50 and p99 latency, statuses, and with --keys FILE
// writes every key sent with the status it last got (for the crash audits).
//
//   node load.js --url http://127.0.0.1:PORT/orders --conns 32 --seconds 10
//                --dup 0.5 --prefix RUN [--keys FILE]
//   node load.js --url ... --conns 16 --retry FILE     (see retryAll)
const http = require('node:http')
const fs = require('node:fs')

const opt = { conns: 32, seconds: 10, dup: 0.5, prefix: `k${process.pid}` }
for (let i = 2; i < process.argv.length; i += 2) opt[process.argv[i].slice(2)] = process.argv[i + 1]
const url = new URL(opt.url)
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(opt.conns) })
const sent = []                    // keys sent so far
const last = new Map()             // key -> last status (0: no answer)
const statuses = {}
const latencies = []
let next = 0

function post (key) {
  const body = JSON.stringify({ amount: Number(key.split('-').pop()) % 1000 })
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint()
    const req = http.request({
      host: url.hostname, port: url.port, path: url.pathname, method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'idempotency-key': key, 'content-length': Buffer.byteLength(body) }
    }, (res) => {
      res.resume()
      res.on('end', () => resolve([res.statusCode, Number(process.hrtime.bigint() - t0) / 1e6]))
    })
    req.on('error', () => resolve([0, Number(process.hrtime.bigint() - t0) / 1e6]))
    req.setTimeout(10000, () => req.destroy())
    req.end(body)
  })
}

async function worker (until) {
  while (Date.now() < until) {
    const key = sent.length > 0 && Math.random() < Number(opt.dup)
      ? sent[Math.floor(Math.random() * sent.length)]
      : `${opt.prefix}-${next++}`
    if (!last.has(key)) { sent.push(key); last.set(key, 0) }
    const [status, ms] = await post(key)
    statuses[status] = (statuses[status] || 0) + 1
    latencies.push(ms)
    if (status !== 0 || last.get(key) === 0) last.set(key, status)
    if (status === 0) await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

// --retry FILE: send every key of a keys file again, as clients retry: in
// rounds a second apart, each key until it gets an answer other than 409
// (in progress), 503 or a failed connection, for at most 90 rounds (a
// claim left in progress by a killed process is free again when its lease
// runs out); print how many keys got 2xx.
async function retryAll (file) {
  let pending = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => l.split(' ')[0])
  const total = pending.length
  let ok = 0
  for (let round = 0; round < 90 && pending.length > 0; round++) {
    if (round > 0) await new Promise((resolve) => setTimeout(resolve, 1000))
    const again = []
    let i = 0
    const one = async () => {
      while (i < pending.length) {
        const key = pending[i++]
        const [status] = await post(key)
        if (status >= 200 && status < 300) ok++
        else if (status === 0 || status === 409 || status === 503) again.push(key)
      }
    }
    await Promise.all(Array.from({ length: Number(opt.conns) }, one))
    pending = again
  }
  console.log(JSON.stringify({ retried: total, answered2xx: ok, unanswered: pending.length }))
  agent.destroy()
}

async function main () {
  if (opt.retry) return retryAll(opt.retry)
  const t0 = Date.now()
  const until = t0 + Number(opt.seconds) * 1000
  await Promise.all(Array.from({ length: Number(opt.conns) }, () => worker(until)))
  const secs = (Date.now() - t0) / 1000
  latencies.sort((a, b) => a - b)
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]
  const answered = latencies.length - (statuses[0] || 0)
  if (opt.keys) fs.writeFileSync(opt.keys, [...last].map(([k, s]) => `${k} ${s}`).join('\n') + '\n')
  console.log(JSON.stringify({
    rps: answered / secs, p50: q(0.5), p99: q(0.99), requests: latencies.length,
    keys: sent.length, statuses
  }))
  agent.destroy()
}

main()
