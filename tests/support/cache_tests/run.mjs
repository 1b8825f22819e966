// Entry point for the HTTP Working Group's cache test suite (the `http-cache-tests` npm package,
// pinned in package.json here) as avx-gateway's tests use it. The package's own entry points are
// `npm run server` (its origin, port from `--port`, always on every interface, a pid file in the
// working directory) and `npm run cli --base=URL` (the client, JSON on stdout); this file drives
// the same modules with what a test needs: a loopback origin on a free port, results in a file,
// a per-request timeout, and the suite's metadata as JSON.
//
//   node run.mjs origin [--host 127.0.0.1] [--port 0]
//       The suite's origin server. Prints one JSON line {"origin": URL, "port": N, "pid": N} once
//       listening, then serves until SIGTERM/SIGINT.
//   node run.mjs run --base URL [--out FILE] [--id ID]... [--request-timeout-ms 30000]
//                    [--concurrency 100]
//       Runs the suite (every test a reverse proxy runs: no browser-only ones, Surrogate-Control
//       included, as the package's cli.mjs does) through the proxy at URL, whose routes forward
//       /config/*, /test/* and /state/* to the origin. Writes {"results": {id: true |
//       [errorName, message]}, "uuids": {id: uuid}} to FILE (stdout without --out). With one
//       --id, also prints that test's requests and responses (the package's debug dump).
//   node run.mjs meta
//       The suites and their tests as JSON: [{id, name, description, tests: [{id, name, kind,
//       depends_on, browser_only, browser_skip, spec_anchors}]}].
import fs from 'fs'
import http from 'http'
import os from 'os'
import process from 'process'

function parseArgs (argv) {
  const args = { _: [], id: [] }
  for (let i = 0; i < argv.length; ++i) {
    const arg = argv[i]
    if (arg.startsWith('--')) {
      const key = arg.slice(2)
      const value = argv[++i]
      if (value === undefined) throw new Error(`${arg} needs a value`)
      if (key === 'id') args.id.push(value)
      else args[key] = value
    } else {
      args._.push(arg)
    }
  }
  return args
}

async function suites () {
  const tests = (await import('http-cache-tests/tests/index.mjs')).default
  const surrogate = (await import('http-cache-tests/tests/surrogate-control.mjs')).default
  return tests.includes(surrogate) ? tests : [...tests, surrogate]
}

async function meta () {
  const out = (await suites()).map(suite => ({
    id: suite.id,
    name: suite.name,
    description: suite.description || '',
    tests: suite.tests.map(test => ({
      id: test.id,
      name: test.name,
      kind: test.kind || 'required',
      depends_on: test.depends_on || [],
      browser_only: test.browser_only === true,
      browser_skip: test.browser_skip === true,
      spec_anchors: test.spec_anchors || []
    }))
  }))
  process.stdout.write(JSON.stringify(out) + '\n')
}

async function origin (args) {
  const host = args.host || '127.0.0.1'
  // server.mjs reads these at import (npm sets them from `npm run server --port=...`).
  process.env.npm_config_protocol = 'http'
  process.env.npm_config_port = String(args.port || '0')
  process.env.npm_config_pidfile = args.pidfile || os.devNull
  // server.mjs calls server.listen(port) on every interface: bind it to `host` instead.
  const listen = http.Server.prototype.listen
  http.Server.prototype.listen = function (port, ...rest) {
    this.once('listening', () => {
      const addr = this.address()
      const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address
      console.log(JSON.stringify({ origin: `http://${shown}:${addr.port}`, port: addr.port, pid: process.pid }))
    })
    if (typeof port === 'number' || typeof port === 'string') {
      return listen.call(this, Number(port), host, ...rest)
    }
    return listen.call(this, port, ...rest)
  }
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0))
  await import('http-cache-tests/server/server.mjs')
}

async function run (args) {
  if (!args.base) throw new Error('run needs --base URL (the proxy under test)')
  const base = args.base.replace(/\/+$/, '')
  const requestTimeout = Number(args['request-timeout-ms'] || 30000)
  const concurrency = Number(args.concurrency || 100)
  const fetch = (await import('node-fetch')).default
  const { runTests, getResults } = await import('http-cache-tests/client/runner.mjs')
  const { testUUIDs } = await import('http-cache-tests/client/test.mjs')
  let toRun = await suites()
  if (args.id.length) {
    const wanted = new Set(args.id)
    toRun = toRun
      .map(suite => ({ ...suite, tests: suite.tests.filter(test => wanted.has(test.id)) }))
      .filter(suite => suite.tests.length)
    const found = new Set(toRun.flatMap(suite => suite.tests.map(test => test.id)))
    const unknown = args.id.filter(id => !found.has(id))
    if (unknown.length) throw new Error(`unknown test id(s): ${unknown.join(', ')}`)
    if (args.id.length === 1) toRun[0].tests = [{ ...toRun[0].tests[0], dump: true }]
  }
  // node-fetch 2's own `timeout`: a request the proxy never answers fails the test (FetchError)
  // instead of hanging the run.
  const timedFetch = (url, init) => fetch(url, { timeout: requestTimeout, ...init })
  await runTests(toRun, timedFetch, false, base, concurrency)
  const results = getResults()
  const uuids = {}
  for (const id of Object.keys(results)) uuids[id] = testUUIDs[id]
  const text = JSON.stringify({ base, results, uuids }, null, 1) + '\n'
  if (args.out) fs.writeFileSync(args.out, text)
  else process.stdout.write(text)
}

const args = parseArgs(process.argv.slice(2))
const commands = { meta, origin, run }
const command = commands[args._[0]]
if (command === undefined) {
  console.error('usage: node run.mjs origin|run|meta [options] (see the top of run.mjs)')
  process.exit(2)
}
command(args).catch(err => {
  console.error(err && err.stack ? err.stack : String(err))
  process.exit(1)
})
