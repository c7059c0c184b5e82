'use strict'
// Shared connections for serve() (its `multiplex` option).
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
// statements in flight.  A connection goes back to the pool as soon as none
// is (so pool.end() and the application's own queries are not kept
// waiting), and one that fails is given back broken (the pool closes it):
// its statements in flight fail as a lost connection does without a Mux.

class Mux {
  constructor(pool, size) {
    this.pool = pool
    this.size = size
    this.held = [] // checked out, with .idemInFlight
    this.opening = [] // pool.connect() promises not settled yet
  }

  async query(config) {
    const client = await this.pick()
    client.idemInFlight++
    this.cork(client)
    try {
      return await client.query(config)
    } catch (err) {
      // An error the server sent about this statement alone has a
      // severity and a SQLSTATE (not matched by class: the application's
      // pg may be another copy than ours); anything else, or a connection
      // or shutdown error, may leave the connection unusable.
      const fromServer = err && typeof err.severity === 'string' && typeof err.code === 'string' && err.code.length === 5
      if (!fromServer || /^(08|57P)/.test(err.code)) {
        this.drop(client, err)
      }
      throw err
    } finally {
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

  // The connection with the fewest statements in flight; another one is
  // opened, up to `size`, when none is idle (without waiting for it when
  // one is there to share).
  async pick() {
    for (;;) {
      let best = null
      for (const c of this.held) if (best === null || c.idemInFlight < best.idemInFlight) best = c
      if (best !== null && best.idemInFlight === 0) return best
      if (this.held.length + this.opening.length < this.size) {
        const opened = this.open()
        if (best === null) return opened
      }
      if (best !== null) return best
      await Promise.race(this.opening).catch(() => {})
    }
  }

  open() {
    const opened = this.pool.connect().then((client) => {
      client.idemInFlight = 0
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
    })
    const entry = opened.finally(() => this.opening.splice(this.opening.indexOf(entry), 1))
    entry.catch(() => {}) // the request that waits for it sees the error
    this.opening.push(entry)
    return entry
  }

  // A failed connection takes no new statements; it is given back broken
  // when the last one in flight has failed.
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

module.exports = { Mux }
