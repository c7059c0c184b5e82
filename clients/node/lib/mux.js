'use strict'
// Shared connections for serve() (its `multiplex` and `batch` options):
// a Mux pipelines each request's statement, a GroupCommit (below) sends
// the requests that wait together in one statement.
//
// A request through serve() is one statement, idem_serve, in a transaction
// of its own: nothing of it is left on the connection once its answer is
// back.  So requests need not have a connection each.  A Mux sends the
// statements of concurrent requests on at most `size` of the pool's
// connections, written at once without waiting for the answers before
// them (node-postgres's pipeline mode: each with its own Sync, so each is
// its own transaction and an error ends only its own statement).  The
// server then runs a connection's statements back to back instead of
// waking a backend per request, which on a busy machine costs it more
// than a replay's own work.
//
// The price is a queue: a statement waits on its connection for the ones
// written before it.  A new request goes to the connection with the fewest
// statements in flight, among those that answered within stallMs (or
// have nothing in flight); if every shared connection is held up so, the request
// gets a pool connection of its own (pool.query), so that a few slow
// statements do not stop the others.  A connection goes back to the pool
// as soon as no statement is in flight on it.  As pool.query does, a
// connection on which a statement failed is closed (given back broken,
// once its other statements are answered): what the failure may have left
// in its session (a setting, a session lock, a prepared statement gone)
// goes with it.  A lost connection fails its statements in flight, as it
// would without a Mux.

const BATCH_BYTES = 1024 * 1024

// The connections a Mux or a GroupCommit has checked out of the pool, at
// most `size`, with what each keeps of its state.
class Shared {
  constructor(pool, size, stallMs = 50) {
    this.pool = pool
    this.size = size
    this.stallMs = stallMs
    this.held = [] // checked out, with .idemInFlight
    this.opening = [] // pool.connect() promises not settled yet
  }

  // pg-pool's own words for a pool after end()
  static ended() {
    return new Error('Cannot use a pool after calling end on the pool')
  }

  checkOpen() {
    if (this.pool.ending) throw Shared.ended()
  }

  // A connection held up: no answer for stallMs while a statement is in flight.
  stalled(client, now) {
    return client.idemSent.length > 0 && now - Math.max(client.idemSent[0], client.idemAnswered) > this.stallMs
  }

  // A pool connection checked out for sharing.  pg-pool's callback, not
  // its promise: a connection another request just gave back is handed
  // over in the same turn, without pg-pool's own 'error' listener, and a
  // message that ends its session may be read in that turn too; the
  // listener must be on before then, not one microtask later.
  open() {
    const opened = new Promise((resolve, reject) => {
      this.pool.connect((err, client) => (err ? reject(err) : resolve(this.adopt(client))))
    })
    const entry = opened.finally(() => this.opening.splice(this.opening.indexOf(entry), 1))
    entry.catch(() => {}) // the request that waits for it sees the error
    this.opening.push(entry)
    return entry
  }

  adopt(client) {
    client.idemInFlight = 0
    client.idemSent = [] // when each statement in flight was sent, oldest first
    client.idemAnswered = 0 // when the last answer came
    client.idemBroken = null
    client.idemReleased = false
    client.idemOnError = (err) => this.drop(client, err)
    client.on('error', client.idemOnError)
    this.held.push(client)
    // Opened for a request that found another connection meanwhile:
    // back to the pool if still unused once this turn is over.
    setImmediate(() => {
      if (client.idemInFlight === 0) this.giveBack(client)
    })
    return client
  }

  // A connection that failed, or on which a statement failed, takes no new
  // statements; it is given back broken when the last one in flight is
  // answered.
  drop(client, err) {
    if (client.idemBroken === null) client.idemBroken = err || new Error('connection lost')
    const i = this.held.indexOf(client)
    if (i >= 0) this.held.splice(i, 1)
    if (client.idemInFlight === 0) this.giveBack(client)
  }

  giveBack(client) {
    if (client.idemReleased) return
    const i = this.held.indexOf(client)
    if (i >= 0) this.held.splice(i, 1)
    client.idemReleased = true
    client.removeListener('error', client.idemOnError)
    // pg-pool adds its own listener while the client is idle; a late error
    // of a broken client must not go unheard meanwhile.
    if (client.idemBroken !== null) client.on('error', () => {})
    client.release(client.idemBroken || undefined)
  }
}

// Pipelining: each request's statement is written at once, on the shared
// connection with the fewest in flight.
class Mux extends Shared {
  async query(config) {
    const client = await this.pick()
    if (client === null) return this.pool.query(config) // every shared connection is held up
    this.cork(client)
    client.idemSent.push(Date.now())
    try {
      return await client.query(config)
    } catch (err) {
      this.drop(client, err)
      throw err
    } finally {
      client.idemSent.shift() // answers come back in the order sent
      client.idemAnswered = Date.now()
      client.idemInFlight--
      if (client.idemInFlight === 0) this.giveBack(client)
    }
  }

  // Statements sent in the same turn of the event loop (the requests read
  // together) go out in one write: the socket is corked until the turn is
  // over.
  cork(client) {
    const stream = client.connection && client.connection.stream
    if (client.idemCorked || !stream || typeof stream.cork !== 'function') return
    stream.cork()
    client.idemCorked = true
    setImmediate(() => {
      client.idemCorked = false
      stream.uncork()
    })
  }

  // The connection to send on, counted as in use before this returns (so
  // that no other statement's answer can give it back in between), or
  // null: every shared connection is held up by a slow statement.  Among
  // the others, the one with the fewest statements in flight; another one
  // is opened, up to `size`, when none is idle (without waiting for it
  // when one is there to share; a request with none waits for whichever
  // opens first, so that a pool short of connections still serves it).
  async pick() {
    for (;;) {
      this.checkOpen()
      const now = Date.now()
      let best = null
      for (const c of this.held) {
        if (this.stalled(c, now)) continue
        if (best === null || c.idemInFlight < best.idemInFlight) best = c
      }
      const room = this.held.length + this.opening.length < this.size
      if (room && (best === null || best.idemInFlight > 0)) this.open()
      if (best !== null) {
        best.idemInFlight++
        return best
      }
      if (this.opening.length === 0) return null
      // Whichever opens first (rejects, and so fails the request, if that
      // open failed), or stallMs: pg-pool leaves a connect() waiting at
      // end() unsettled, and the loop's first check fails the request then.
      let timer
      const tick = new Promise((resolve) => { timer = setTimeout(resolve, this.stallMs) })
      try {
        await Promise.race([...this.opening, tick])
      } finally {
        clearTimeout(timer)
      }
    }
  }
}

// Group commit: one statement in flight per shared connection.  Requests
// that come while every shared connection is busy wait in one queue, and
// the first connection to answer takes up to `batch` of them at once, in
// one statement (many(configs): a row per request, numbered n from 1) and
// so one transaction: one commit, one flush of the WAL, for all of them.
// Each request is still its own claim, work and completion (idem_serve's
// subtransaction), and sees the same as if the requests before it in the
// batch had committed just before; nothing of one request's settings
// reaches the next (idem_serve undoes what a handler sets).  When the
// statement fails, nothing of the batch is kept, and each of its requests
// is sent again alone on a pool connection of its own, where an error is
// its own.  A request waits in the queue no longer than it takes a shared
// connection to answer, or, if every one is held up for stallMs, to get a
// pool connection of its own.
class GroupCommit extends Shared {
  constructor(pool, size, stallMs, batch, many, bytes) {
    super(pool, size, stallMs)
    this.batch = batch
    this.many = many // configs => the config of one statement for them all
    this.bytes = bytes // config => how many bytes it sends
    this.queue = [] // { config, resolve, reject }, oldest first
    this.timer = null
  }

  query(config) {
    return new Promise((resolve, reject) => {
      this.checkOpen()
      this.queue.push({ config, resolve, reject })
      this.pump()
    })
  }

  // Hand the queue to the idle shared connections; open another (up to
  // size) when none is idle; when every one has been held up for stallMs,
  // send the queued requests alone; else look again in stallMs.  After
  // pool.end(), fail the queue and give back what is idle, so that end()
  // is not left waiting for a connection nobody will use.
  pump() {
    if (this.pool.ending) {
      const err = Shared.ended()
      for (const item of this.queue.splice(0)) item.reject(err)
      for (const c of [...this.held]) if (c.idemInFlight === 0) this.giveBack(c)
      return
    }
    if (this.queue.length === 0) return
    for (const c of this.held) {
      if (c.idemInFlight === 0) this.send(c, this.next())
      if (this.queue.length === 0) return
    }
    if (this.held.length + this.opening.length < this.size) {
      this.open().then(() => this.pump(), (err) => {
        // Nobody else to serve the queue: the requests see why.  Else the
        // others serve it, and the stall rule still holds.
        if (this.held.length === 0 && this.opening.length === 0) {
          for (const item of this.queue.splice(0)) item.reject(err)
        } else {
          this.unstick()
        }
      })
      // and look again in stallMs all the same: pg-pool leaves a
      // connect() waiting at end() unsettled
      this.later()
      return
    }
    this.unstick()
  }

  // Every shared connection held up: the queue goes alone.  Else look
  // again in stallMs.
  unstick() {
    const now = Date.now()
    if (this.opening.length === 0 && this.held.every((c) => this.stalled(c, now))) {
      for (const item of this.queue.splice(0)) this.alone(item)
    } else {
      this.later()
    }
  }

  later() {
    if (this.timer !== null) return
    this.timer = setTimeout(() => {
      this.timer = null
      this.pump()
    }, this.stallMs)
    this.timer.unref()
  }

  // The requests of the next statement: up to `batch`, and no more than
  // BATCH_BYTES of bodies unless the first is larger alone.
  next() {
    let n = 0
    let bytes = 0
    while (n < this.queue.length && n < this.batch) {
      bytes += this.bytes(this.queue[n].config)
      if (n > 0 && bytes > BATCH_BYTES) break
      n++
    }
    return this.queue.splice(0, n)
  }

  alone(item) {
    this.pool.query(item.config).then(item.resolve, item.reject)
  }

  async send(client, items) {
    client.idemInFlight = 1
    client.idemSent.push(Date.now())
    let result = null
    let failed = null
    try {
      result = await client.query(items.length === 1 ? items[0].config : this.many(items.map((item) => item.config)))
    } catch (err) {
      failed = err
    }
    client.idemSent.shift()
    client.idemAnswered = Date.now()
    client.idemInFlight = 0
    if (failed !== null) this.drop(client, failed)
    else if (this.queue.length === 0) this.giveBack(client)
    if (items.length === 1) {
      if (failed === null) items[0].resolve(result)
      else items[0].reject(failed)
    } else if (failed !== null) {
      for (const item of items) this.alone(item)
    } else {
      const rows = []
      for (const row of result.rows) rows[row.n - 1] = row
      items.forEach((item, i) => {
        if (rows[i] === undefined) item.reject(new Error(`no answer for request ${i + 1} of a batch of ${items.length}`))
        else item.resolve({ rows: [rows[i]] })
      })
    }
    this.pump()
  }
}

module.exports = { Mux, GroupCommit }
