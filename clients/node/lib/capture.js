'use strict'
// Response capture: the handler writes to the real ServerResponse (so that
// Express's res.status().json(), res.send(), piping a stream and plain
// res.writeHead()/res.end() all work), but nothing reaches the socket.
// The status, headers and body bytes are buffered until the middleware
// knows whether the transaction committed; only then is the response sent,
// so a client never sees an answer that was rolled back.
//
// write, end, writeHead and flushHeaders are replaced by own properties of
// the response and put back exactly as they were (another middleware, a
// compression one say, may have replaced them before us).

const METHODS = ['write', 'end', 'writeHead', 'flushHeaders']

function toBuffer(chunk, encoding) {
  if (chunk === undefined || chunk === null) return null
  if (Buffer.isBuffer(chunk)) return chunk
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
  return Buffer.from(String(chunk), typeof encoding === 'string' ? encoding : 'utf8')
}

function setHeaders(res, headers) {
  if (!headers) return
  if (Array.isArray(headers)) {
    // writeHead accepts a flat [name, value, name, value] list
    for (let i = 0; i + 1 < headers.length; i += 2) res.setHeader(headers[i], headers[i + 1])
    return
  }
  for (const name of Object.keys(headers)) res.setHeader(name, headers[name])
}

class Capture {
  // Remember the response as it is before the handler first runs.
  constructor(res) {
    this.res = res
    this.initialHeaders = res.getHeaders()
    this.initialStatus = res.statusCode
    this.installed = false
  }

  // Capture from now on (one handler run).
  install() {
    const res = this.res
    this.start()
    if (this.installed) return
    this.installed = true
    this.saved = METHODS.map((m) => [m, Object.getOwnPropertyDescriptor(res, m)])
    const self = this
    res.writeHead = function (status, reason, headers) {
      if (typeof reason !== 'string') {
        headers = reason
        reason = undefined
      }
      res.statusCode = status
      if (reason !== undefined) res.statusMessage = reason
      setHeaders(res, headers)
      return res
    }
    res.write = function (chunk, encoding, cb) {
      const buf = toBuffer(chunk, encoding)
      if (buf) self.chunks.push(buf)
      const callback = typeof encoding === 'function' ? encoding : cb
      if (typeof callback === 'function') process.nextTick(callback)
      return true
    }
    res.end = function (chunk, encoding, cb) {
      if (typeof chunk === 'function') {
        cb = chunk
        chunk = undefined
      } else if (typeof encoding === 'function') {
        cb = encoding
        encoding = undefined
      }
      const buf = toBuffer(chunk, encoding)
      if (buf) self.chunks.push(buf)
      if (typeof cb === 'function') res.once('finish', cb)
      self.finish()
      return res
    }
    res.flushHeaders = function () {}
  }

  // Begin a new attempt: nothing written, the headers as they were before
  // the handler ran (headers set by middleware in front of us stay).
  start() {
    this.chunks = []
    this.done = false
    this.ended = new Promise((resolve) => {
      this.finish = () => {
        this.done = true
        resolve()
      }
    })
  }

  reset() {
    const res = this.res
    for (const name of res.getHeaderNames()) res.removeHeader(name)
    for (const [name, value] of Object.entries(this.initialHeaders)) res.setHeader(name, value)
    res.statusCode = this.initialStatus
    this.start()
  }

  result() {
    return {
      status: this.res.statusCode,
      headers: this.res.getHeaders(),
      body: Buffer.concat(this.chunks),
    }
  }

  // Put the response's own methods back; what is sent after this goes out.
  release() {
    if (!this.installed) return
    this.installed = false
    for (const [m, desc] of this.saved) {
      if (desc) Object.defineProperty(this.res, m, desc)
      else delete this.res[m]
    }
  }
}

module.exports = { Capture }
