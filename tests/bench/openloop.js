'use strict'
// Open-loop, rate-controlled load for the latency-against-offered-load curve of `make bench`.
//
// wrk is closed-loop (each connection waits for its answer), so it cannot hold a rate.
// autocannon's `overallRate` does not hold one either: each connection sends its per-second
// quota back to back at every one-second tick, then idles (lib/httpClient.js), so at "half
// the maximum" the server sees half a second of saturation and half a second of nothing.
// This driver spaces calls evenly instead: call k is due at start + k / rate, is sent as soon
// as its time has come (on a free keep-alive connection, or queued for the next one), and its
// latency is measured from its due time, so time spent queued behind a slow server counts
// (no coordinated omission). After the measured window it stops sending and waits for every
// outstanding answer, so each call it sent is either acknowledged or known to have failed.
//
// node openloop.js '{"port": 8000, "path": "/v4/...?...", "rate": 2000, "duration": 10,
//                    "warmup": 1, "groups": 10000, "connections": 64}'
// prints one JSON line: offered and achieved rate, acked/failed/errors, p50/p90/p99/max in ms.
// Only Node's standard library is used.

// Node's http client tops out near 4,000 calls/s on one core, below what is offered here, so
// the driver speaks HTTP/1.1 on raw keep-alive sockets: one call at a time per connection,
// answers read by Content-Length (what uvicorn sends).

const net = require('net')

const cfg = Object.assign(
  { host: '127.0.0.1', warmup: 1, connections: 64, drain: 15 },
  JSON.parse(process.argv[2])
)
const intervalMs = 1000 / cfg.rate
const warmupMs = cfg.warmup * 1000
const endMs = warmupMs + cfg.duration * 1000
const total = Math.ceil(endMs / intervalMs)
const head = 'POST ' + cfg.path + ' HTTP/1.1\r\nHost: ' + cfg.host + ':' + cfg.port +
  '\r\nContent-Type: application/json\r\nContent-Length: '
const latencies = new Float64Array(Math.ceil(cfg.rate * cfg.duration * 1.05) + 16)
const stats = { sent: 0, acked: 0, failed: 0, errors: 0, completedInWindow: 0 }
const waiting = [] // due times of calls due but not yet sent: every connection was busy
const idle = [] // connections with no call in flight, oldest first
let recorded = 0
let outstanding = 0
let start = 0

function now () {
  return performance.now() - start
}

function settle (dueMs, outcome) {
  outstanding--
  stats[outcome]++
  if (dueMs >= warmupMs) {
    stats.completedInWindow++
    if (recorded < latencies.length) latencies[recorded++] = now() - dueMs
  }
}

function request () {
  const body = '{"GroupId":"bench-' + Math.floor(Math.random() * cfg.groups) +
    '","Mode":"Increase","GroupCounter":[{"Key":"a","Value":1},{"Key":"b","Value":2}]}'
  return head + body.length + '\r\n\r\n' + body
}

class Connection {
  constructor () {
    this.due = -1 // the due time of the call in flight, -1 when none
    this.buffer = ''
    this.open()
  }

  open () {
    this.ready = false
    this.buffer = ''
    const socket = net.connect({ host: cfg.host, port: cfg.port })
    socket.setNoDelay(true)
    socket.setEncoding('latin1')
    socket.on('connect', () => {
      this.ready = true
      this.release()
    })
    socket.on('data', (chunk) => this.read(chunk))
    socket.on('error', () => {})
    socket.on('close', () => this.closed(socket))
    this.socket = socket
  }

  send (dueMs) {
    this.due = dueMs
    stats.sent++
    outstanding++
    this.socket.write(request(), 'latin1')
  }

  read (chunk) {
    this.buffer += chunk
    const end = this.buffer.indexOf('\r\n\r\n')
    if (end < 0) return
    const match = /\r\ncontent-length:\s*(\d+)/i.exec(this.buffer.slice(0, end))
    const length = match ? parseInt(match[1], 10) : 0
    if (this.buffer.length < end + 4 + length) return
    const ok = this.buffer.startsWith('HTTP/1.1 200') &&
      this.buffer.slice(end + 4, end + 4 + length).includes('"ErrorCode":0,')
    this.buffer = this.buffer.slice(end + 4 + length)
    const due = this.due
    this.due = -1
    settle(due, ok ? 'acked' : 'failed')
    this.release()
  }

  release () {
    if (waiting.length > 0) this.send(waiting.shift())
    else idle.push(this)
  }

  closed (socket) {
    if (socket !== this.socket) return
    const i = idle.indexOf(this)
    if (i >= 0) idle.splice(i, 1)
    if (this.due >= 0) {
      const due = this.due
      this.due = -1
      settle(due, 'errors')
    }
    if (!finished) this.open()
  }
}

function dispatch (dueMs) {
  const connection = idle.shift()
  if (connection) connection.send(dueMs)
  else waiting.push(dueMs)
}

function percentile (sorted, p) {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
}

let finished = false
let scheduled = 0

function finish () {
  finished = true
  const sorted = latencies.slice(0, recorded).sort()
  process.stdout.write(JSON.stringify({
    offered: cfg.rate,
    achieved: stats.completedInWindow / cfg.duration,
    sent: stats.sent,
    acked: stats.acked,
    failed: stats.failed,
    errors: stats.errors,
    unanswered: outstanding, // sent and never answered within the drain time
    not_sent: waiting.length,
    p50_ms: percentile(sorted, 50),
    p90_ms: percentile(sorted, 90),
    p99_ms: percentile(sorted, 99),
    max_ms: sorted.length ? sorted[sorted.length - 1] : 0
  }) + '\n')
  process.exit(0)
}

function drain (deadline) {
  if ((outstanding === 0 && waiting.length === 0) || now() > deadline) return finish()
  setTimeout(() => drain(deadline), 5)
}

function tick () {
  const due = Math.min(Math.floor(now() / intervalMs) + 1, total)
  while (scheduled < due) dispatch(scheduled++ * intervalMs)
  if (scheduled < total) setTimeout(tick, 1)
  else drain(endMs + cfg.drain * 1000)
}

function begin () {
  if (idle.length < cfg.connections) return setTimeout(begin, 5)
  start = performance.now()
  tick()
}

for (let i = 0; i < cfg.connections; i++) new Connection() // eslint-disable-line no-new
begin()
