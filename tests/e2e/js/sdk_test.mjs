// End-to-end checks of relay with the published Centrifugo JavaScript SDK (centrifuge 5.x).
//
//   node sdk_test.mjs <scenario>
//
// Scenarios: basic | recovery | badtoken | expired | misc. Configuration comes from the environment:
//   RELAY_WS_URL, RELAY_API_URL, RELAY_API_KEY   relay endpoints
//   TOKEN_ALICE, TOKEN_BOB                        valid connect tokens (users alice and bob)
//   TOKEN_EXPIRED                                 an expired connect token (scenario expired)
//   PROXY_WS_URL                                  relay's ws URL through tests/tcpproxy.py (recovery)
//   CHANNEL_SUFFIX                                optional, to make channel names unique
//   STEP_TIMEOUT_MS                               timeout of every wait (default 5000)
//   RELAY_PROTOCOL                                json (default) | protobuf: the SDK's build and wire
//                                                 protocol. Payloads are JSON values on both: under
//                                                 protobuf they go out as bytes holding JSON and the
//                                                 publications received are decoded back, so every
//                                                 check compares the same values.
//
// Output (stdout): one JSON object per line.
//   {"check": "<name>", "ok": true|false, ...details}   one per check
//   {"ready": "<what>"}                                   the recovery scenario asks the driver to act,
//                                                         then waits for the line "go" on stdin
//   {"done": true, "failures": N}                        last line; the exit status is 1 if N > 0
// Stderr: every WebSocket frame sent and received ({"frame": "out"|"in"|"close", ...}; a binary
// frame has "binary": true and its bytes in "data" as hex) and the SDK's errors, as evidence when a
// check fails.

import WebSocket from 'ws';
import readline from 'node:readline';

const env = process.env;
const STEP = Number(env.STEP_TIMEOUT_MS || 5000);
const scenario = process.argv[2] || 'basic';
const suffix = env.CHANNEL_SUFFIX || Math.random().toString(36).slice(2, 10);
let failures = 0;
let clientSeq = 0;

// The SDK's JSON build, or its protobuf one (subprotocol centrifuge-protobuf, binary frames).
const PROTOCOL = env.RELAY_PROTOCOL || 'json';
const PROTOBUF = PROTOCOL === 'protobuf';
const SDK_MODULE = { json: 'centrifuge', protobuf: 'centrifuge/build/protobuf' }[PROTOCOL];
const { Centrifuge } = SDK_MODULE ? await import(SDK_MODULE) : {};

// A payload as the SDK sends it: the value itself (JSON), or bytes holding its JSON (protobuf).
function toWire(value) {
  return PROTOBUF ? new TextEncoder().encode(JSON.stringify(value)) : value;
}

// A payload the SDK received, back to the value: bytes are decoded as JSON (or shown as text).
function fromWire(data) {
  if (!(data instanceof Uint8Array)) return data;
  const text = new TextDecoder().decode(data);
  try {
    return JSON.parse(text);
  } catch (e) {
    return { notJsonBytes: text };
  }
}

// ---------------------------------------------------------------------------------------------
// Output helpers

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function log(obj) {
  process.stderr.write(JSON.stringify(obj) + '\n');
}

function check(name, ok, details = {}) {
  if (!ok) failures++;
  out({ check: name, ok: !!ok, ...details });
  return !!ok;
}

function finish() {
  out({ done: true, failures });
  // Let stdout drain before exiting.
  process.stdout.write('', () => process.exit(failures > 0 ? 1 : 0));
}

// ---------------------------------------------------------------------------------------------
// A WebSocket class that logs every frame, so the evidence of a failure is in stderr.

const frames = []; // {dir, client, data[, binary, bytes]} of every frame, for checks on the wire itself

// A frame's payload for the log: text as is, binary (ArrayBuffer, Buffer, Uint8Array) as hex.
function frameData(data) {
  if (typeof data === 'string') return { data };
  const bytes = Buffer.from(data instanceof ArrayBuffer ? new Uint8Array(data) : data);
  return { binary: true, data: bytes.toString('hex'), bytes };
}

function logFrame(dir, client, data) {
  const { bytes, ...shown } = frameData(data);
  frames.push({ dir, client, ...shown, bytes });
  log({ frame: dir, client, ...shown });
}

// How many empty messages (a ping, or the SDK's pong) a frame holds: lines "{}" in a JSON frame,
// zero-length messages in a protobuf one (uvarint(length) || message, repeated).
function emptyMessages(frame) {
  if (!frame.binary) return frame.data.split('\n').filter((l) => l.trim() === '{}').length;
  let count = 0;
  for (let pos = 0; pos < frame.bytes.length;) {
    let length = 0;
    for (let shift = 0, b = 0x80; b & 0x80; shift += 7) {
      b = frame.bytes[pos++];
      length += (b & 0x7f) * 2 ** shift;
    }
    if (length === 0) count++;
    pos += length;
  }
  return count;
}

function loggingWebSocket(label) {
  return class LoggingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      log({ frame: 'open', client: label, url: String(args[0]) });
      this.addEventListener('message', (e) => logFrame('in', label, e.data));
      this.addEventListener('close', (e) => {
        log({ frame: 'close', client: label, code: e.code, reason: e.reason });
      });
      this.addEventListener('error', (e) => {
        log({ frame: 'error', client: label, message: e.message });
      });
    }

    send(data, ...rest) {
      logFrame('out', label, data);
      return super.send(data, ...rest);
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Waiting with a timeout, and recording events.

function withTimeout(promise, what, ms = STEP) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Records every event an emitter sends, and lets one wait for an event matching a predicate
// (also one that already happened after a given index).
class Recorder {
  constructor(emitter, names, label) {
    this.events = [];
    this.waiters = [];
    for (const name of names) {
      emitter.on(name, (sdkCtx) => {
        const ctx = name === 'publication' ? { ...sdkCtx, data: fromWire(sdkCtx.data) } : sdkCtx;
        this.events.push({ name, ctx });
        if (name === 'error') log({ sdkError: label, ctx: safe(ctx) });
        for (const w of [...this.waiters]) {
          if (w.name === name && w.pred(ctx)) {
            this.waiters.splice(this.waiters.indexOf(w), 1);
            w.resolve(ctx);
          }
        }
      });
    }
  }

  mark() {
    return this.events.length;
  }

  of(name, from = 0) {
    return this.events.slice(from).filter((e) => e.name === name).map((e) => e.ctx);
  }

  wait(name, pred = () => true, { from = 0, ms = STEP } = {}) {
    const found = this.events.slice(from).find((e) => e.name === name && pred(e.ctx));
    if (found) return Promise.resolve(found.ctx);
    let waiter;
    const p = new Promise((resolve) => {
      waiter = { name, pred, resolve };
      this.waiters.push(waiter);
    });
    return withTimeout(p, `event ${name}`, ms).finally(() => {
      const i = this.waiters.indexOf(waiter);
      if (i >= 0) this.waiters.splice(i, 1);
    });
  }
}

function safe(v) {
  if (v === undefined) return null;
  try {
    return JSON.parse(JSON.stringify(v, (k, x) => {
      if (typeof x === 'bigint') return Number(x);
      return x instanceof Uint8Array ? fromWire(x) : x;
    }));
  } catch (e) {
    return String(v);
  }
}

const CLIENT_EVENTS = ['connecting', 'connected', 'disconnected', 'error'];
const SUB_EVENTS = ['subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave', 'error'];

function makeClient(label, url, opts = {}) {
  const c = new Centrifuge(url, {
    websocket: loggingWebSocket(`${label}#${++clientSeq}`),
    timeout: STEP,
    ...opts,
  });
  const rec = new Recorder(c, CLIENT_EVENTS, label);
  return { c, rec, label };
}

function makeSub(client, channel, opts = {}) {
  const sub = client.c.newSubscription(channel, opts);
  const rec = new Recorder(sub, SUB_EVENTS, `${client.label}:${channel}`);
  return { sub, rec };
}

// sub.history() with the publications' data as values.
async function history(sub, opts, what = 'history') {
  const res = await withTimeout(sub.history(opts), what);
  return { ...res, publications: (res.publications || []).map((p) => ({ ...p, data: fromWire(p.data) })) };
}

async function apiPublish(channel, data) {
  const resp = await withTimeout(fetch(`${env.RELAY_API_URL}/publish`, {
    method: 'POST',
    headers: { 'X-API-Key': env.RELAY_API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  }), 'HTTP API publish');
  const body = await resp.json();
  log({ api: 'publish', channel, data, status: resp.status, body });
  if (resp.status !== 200 || body.error) throw new Error(`API publish failed: ${resp.status} ${JSON.stringify(body)}`);
  return body.result;
}

// Runs fn as one named check: a thrown error (a timeout included) fails it.
async function step(name, fn) {
  try {
    const details = await fn();
    if (details && details.__checked) return true; // fn reported its own checks
    return check(name, true, details || {});
  } catch (e) {
    return check(name, false, { error: String(e && e.stack ? e.message : e) });
  }
}

const CHECKED = { __checked: true };

function eq(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

// ---------------------------------------------------------------------------------------------
// Scenario: connect, pub/sub, presence, join/leave, history, HTTP API publication.

async function scenarioBasic() {
  const url = env.RELAY_WS_URL;
  const channel = `chat:js-${suffix}`;
  const alice = makeClient('alice', url, { token: env.TOKEN_ALICE });
  const bob = makeClient('bob', url, { token: env.TOKEN_BOB });
  const clients = [alice, bob];
  try {
    for (const cl of clients) {
      await step(`connect_${cl.label}`, async () => {
        cl.c.connect();
        const ctx = await cl.rec.wait('connected');
        if (cl.c.state !== 'connected') throw new Error(`state is ${cl.c.state}`);
        if (typeof ctx.client !== 'string' || ctx.client.length === 0) {
          throw new Error(`no client id in connected context: ${JSON.stringify(safe(ctx))}`);
        }
        return { state: cl.c.state, client: ctx.client, transport: ctx.transport };
      });
    }
    if (alice.c.state !== 'connected' || bob.c.state !== 'connected') return;
    const aliceId = alice.rec.of('connected')[0].client;
    const bobId = bob.rec.of('connected')[0].client;
    check('distinct_client_ids', aliceId !== bobId, { alice: aliceId, bob: bobId });

    // bob first, with joinLeave, so he sees alice join.
    const bs = makeSub(bob, channel, { joinLeave: true });
    const as = makeSub(alice, channel, { joinLeave: true });
    await step('subscribe_bob', async () => {
      bs.sub.subscribe();
      const ctx = await bs.rec.wait('subscribed');
      return { state: bs.sub.state, recoverable: ctx.recoverable, streamPosition: safe(ctx.streamPosition) };
    });
    await step('subscribe_alice', async () => {
      as.sub.subscribe();
      const ctx = await as.rec.wait('subscribed');
      return { state: as.sub.state, recoverable: ctx.recoverable };
    });
    await step('join_seen_by_bob', async () => {
      const ctx = await bs.rec.wait('join', (j) => j.info && j.info.user === 'alice');
      if (ctx.info.client !== aliceId) throw new Error(`join client ${ctx.info.client} != alice's ${aliceId}`);
      return { info: safe(ctx.info) };
    });

    // alice publishes, bob receives.
    const payload = { text: 'hello from alice', n: 1, nested: { ok: true } };
    await step('client_publish', async () => {
      const res = await withTimeout(as.sub.publish(toWire(payload)), 'publish reply');
      return { result: safe(res) };
    });
    await step('publication_received_by_bob', async () => {
      const ctx = await bs.rec.wait('publication', (p) => eq(p.data, payload));
      const ok = ctx.info && ctx.info.user === 'alice' && ctx.info.client === aliceId;
      if (!ok) throw new Error(`publication info is ${JSON.stringify(safe(ctx.info))}, expected user alice client ${aliceId}`);
      if (typeof ctx.offset !== 'number' || ctx.offset < 1) throw new Error(`publication offset is ${ctx.offset}`);
      return { data: ctx.data, info: safe(ctx.info), offset: ctx.offset };
    });
    await step('publication_received_by_alice', async () => {
      const ctx = await as.rec.wait('publication', (p) => eq(p.data, payload));
      return { offset: ctx.offset };
    });

    // presence and presence stats.
    await step('presence', async () => {
      const res = await withTimeout(bs.sub.presence(), 'presence');
      const infos = Object.entries(res.clients || {});
      const byUser = Object.fromEntries(infos.map(([id, i]) => [i.user, i.client]));
      const keysMatch = infos.every(([id, i]) => id === i.client);
      if (infos.length !== 2 || byUser.alice !== aliceId || byUser.bob !== bobId || !keysMatch) {
        throw new Error(`presence is ${JSON.stringify(safe(res))}`);
      }
      return { clients: safe(res.clients) };
    });
    await step('presence_stats', async () => {
      const res = await withTimeout(as.sub.presenceStats(), 'presenceStats');
      if (res.numClients !== 2 || res.numUsers !== 2) throw new Error(`presenceStats is ${JSON.stringify(safe(res))}`);
      return { stats: safe(res) };
    });

    // A publication through the HTTP server API reaches the subscribers.
    const apiPayload = { text: 'from the server API', at: Date.now() };
    let apiResult;
    await step('api_publication_received', async () => {
      apiResult = await apiPublish(channel, apiPayload);
      const ctx = await bs.rec.wait('publication', (p) => eq(p.data, apiPayload));
      if (apiResult && typeof apiResult.offset === 'number' && ctx.offset !== apiResult.offset) {
        throw new Error(`offset ${ctx.offset} != API result offset ${apiResult.offset}`);
      }
      // No client info on a server-side publication.
      return { offset: ctx.offset, info: safe(ctx.info) ?? null, api_result: apiResult };
    });

    // History.
    await step('history', async () => {
      const res = await history(bs.sub, { limit: 10 });
      const pubs = res.publications;
      const datas = pubs.map((p) => p.data);
      const offsets = pubs.map((p) => p.offset);
      if (!eq(datas, [payload, apiPayload])) throw new Error(`history data is ${JSON.stringify(datas)}`);
      if (!offsets.every((o, i) => typeof o === 'number' && (i === 0 ? o >= 1 : o === offsets[i - 1] + 1))) {
        throw new Error(`history offsets are ${JSON.stringify(offsets)}`);
      }
      if (res.offset !== offsets[offsets.length - 1]) throw new Error(`history top offset ${res.offset} != last ${offsets.at(-1)}`);
      if (typeof res.epoch !== 'string' || res.epoch === '') throw new Error(`history epoch is ${JSON.stringify(res.epoch)}`);
      if (pubs[0].info?.user !== 'alice') throw new Error(`history[0].info is ${JSON.stringify(safe(pubs[0].info))}`);
      return { offsets, epoch: res.epoch, top: res.offset };
    });
    await step('history_limit_and_reverse', async () => {
      const res = await history(bs.sub, { limit: 1, reverse: true }, 'history reverse');
      const pubs = res.publications;
      if (pubs.length !== 1 || !eq(pubs[0].data, apiPayload)) throw new Error(`got ${JSON.stringify(safe(pubs))}`);
      return { offset: pubs[0].offset };
    });

    // alice leaves: bob sees it, presence drops to 1.
    await step('leave_on_unsubscribe', async () => {
      const from = bs.rec.mark();
      as.sub.unsubscribe();
      const ctx = await bs.rec.wait('leave', (l) => l.info && l.info.user === 'alice', { from });
      if (ctx.info.client !== aliceId) throw new Error(`leave client ${ctx.info.client} != ${aliceId}`);
      return { info: safe(ctx.info) };
    });
    await step('presence_after_leave', async () => {
      const res = await withTimeout(bs.sub.presenceStats(), 'presenceStats');
      if (res.numClients !== 1 || res.numUsers !== 1) throw new Error(`presenceStats is ${JSON.stringify(safe(res))}`);
      return { stats: safe(res) };
    });
    // alice subscribes again, then disconnects: bob sees join then leave.
    await step('leave_on_disconnect', async () => {
      let from = bs.rec.mark();
      const asFrom = as.rec.mark();
      as.sub.subscribe();
      await as.rec.wait('subscribed', () => true, { from: asFrom });
      await bs.rec.wait('join', (j) => j.info && j.info.user === 'alice', { from });
      from = bs.rec.mark();
      alice.c.disconnect();
      const ctx = await bs.rec.wait('leave', (l) => l.info && l.info.user === 'alice', { from });
      return { info: safe(ctx.info) };
    });
    await step('disconnect_state', async () => {
      const ctx = await alice.rec.wait('disconnected');
      if (alice.c.state !== 'disconnected' || ctx.code !== 0) {
        throw new Error(`state ${alice.c.state}, disconnected ${JSON.stringify(safe(ctx))}`);
      }
      return { ctx: safe(ctx) };
    });
    // No unexpected errors on bob's side.
    check('no_sdk_errors_bob', bob.rec.of('error').length === 0 && bs.rec.of('error').length === 0,
      { errors: safe([...bob.rec.of('error'), ...bs.rec.of('error')]) });
  } finally {
    for (const cl of clients) cl.c.disconnect();
  }
}

// ---------------------------------------------------------------------------------------------
// Scenario: recovery after the connection is cut (through tests/tcpproxy.py).

const stdinLines = [];
const stdinWaiters = [];
function stdinReader() {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const w = stdinWaiters.shift();
    if (w) w(line.trim());
    else stdinLines.push(line.trim());
  });
  return rl;
}
function readLine(what, ms) {
  if (stdinLines.length) return Promise.resolve(stdinLines.shift());
  return withTimeout(new Promise((r) => stdinWaiters.push(r)), what, ms);
}

async function scenarioRecovery() {
  const rl = stdinReader();
  const channel = `chat:js-rec-${suffix}`;
  const cl = makeClient('carol', env.PROXY_WS_URL, {
    token: env.TOKEN_ALICE,
    minReconnectDelay: 100,
    maxReconnectDelay: 500,
  });
  try {
    await step('connect_via_proxy', async () => {
      cl.c.connect();
      const ctx = await cl.rec.wait('connected');
      return { client: ctx.client };
    });
    const s = makeSub(cl, channel);
    await step('subscribe_recoverable', async () => {
      s.sub.subscribe();
      const ctx = await s.rec.wait('subscribed');
      if (!ctx.recoverable || ctx.wasRecovering || !ctx.streamPosition || typeof ctx.streamPosition.epoch !== 'string') {
        throw new Error(`subscribed context is ${JSON.stringify(safe(ctx))}`);
      }
      return { ctx: safe(ctx) };
    });
    await step('first_publication', async () => {
      const res = await apiPublish(channel, { n: 0 });
      const ctx = await s.rec.wait('publication', (p) => eq(p.data, { n: 0 }));
      return { offset: ctx.offset, api: res };
    });
    const connMark = cl.rec.mark();
    const subMark = s.rec.mark();

    // The driver cuts the connections (and keeps the proxy paused), publishes n=1..3 through the
    // HTTP API, resumes the proxy, then writes "go".
    out({ ready: 'cut-me', channel });
    await step('disconnect_observed', async () => {
      const ctx = await cl.rec.wait('connecting', () => true, { from: connMark, ms: 2 * STEP });
      return { ctx: safe(ctx) };
    });
    out({ ready: 'disconnected' });
    const line = await readLine('"go" on stdin', 6 * STEP);
    if (line !== 'go') throw new Error(`unexpected stdin line ${JSON.stringify(line)}`);

    await step('reconnected', async () => {
      const ctx = await cl.rec.wait('connected', () => true, { from: connMark, ms: 3 * STEP });
      return { client: ctx.client };
    });
    await step('resubscribed_recovered', async () => {
      const ctx = await s.rec.wait('subscribed', () => true, { from: subMark, ms: 2 * STEP });
      if (!(ctx.wasRecovering === true && ctx.recovered === true)) {
        throw new Error(`subscribed context is ${JSON.stringify(safe(ctx))}`);
      }
      return { ctx: safe(ctx) };
    });
    await step('missed_publications_in_order', async () => {
      await s.rec.wait('publication', (p) => eq(p.data, { n: 3 }), { from: subMark, ms: 2 * STEP });
      await sleep(200); // duplicates, if any, would arrive now
      const got = s.rec.of('publication', subMark).map((p) => ({ data: p.data, offset: p.offset }));
      if (!eq(got.map((g) => g.data), [{ n: 1 }, { n: 2 }, { n: 3 }])) {
        throw new Error(`received after the cut: ${JSON.stringify(got)}`);
      }
      const offs = got.map((g) => g.offset);
      if (!(offs[1] === offs[0] + 1 && offs[2] === offs[1] + 1)) throw new Error(`offsets ${JSON.stringify(offs)}`);
      return { received: got };
    });
    await step('live_after_recovery', async () => {
      await apiPublish(channel, { n: 4 });
      await s.rec.wait('publication', (p) => eq(p.data, { n: 4 }), { from: subMark });
    });
  } finally {
    rl.close();
    cl.c.disconnect();
  }
}

// ---------------------------------------------------------------------------------------------
// Scenario: an invalid token → disconnected with 3500, no reconnect.

async function scenarioBadToken() {
  const cl = makeClient('mallory', env.RELAY_WS_URL, {
    token: 'not-a-jwt.' + Math.random().toString(36).slice(2),
    minReconnectDelay: 100,
    maxReconnectDelay: 200,
  });
  try {
    await step('bad_token_disconnected_3500', async () => {
      cl.c.connect();
      const ctx = await cl.rec.wait('disconnected');
      if (ctx.code !== 3500) throw new Error(`disconnected with ${JSON.stringify(safe(ctx))}, expected code 3500`);
      return { ctx: safe(ctx) };
    });
    await step('bad_token_no_reconnect', async () => {
      await sleep(1000);
      const connectingAfter = cl.rec.events.filter((e) => e.name === 'connecting').length;
      if (cl.c.state !== 'disconnected' || connectingAfter !== 1 || cl.rec.of('connected').length) {
        throw new Error(`state ${cl.c.state}, events ${JSON.stringify(cl.rec.events.map((e) => e.name))}`);
      }
      return { state: cl.c.state, events: cl.rec.events.map((e) => e.name) };
    });
  } finally {
    cl.c.disconnect();
  }
}

// ---------------------------------------------------------------------------------------------
// Scenario: an expired token → connect error 109, getToken is called, then connected.

async function scenarioExpired() {
  let calls = 0;
  const cl = makeClient('dave', env.RELAY_WS_URL, {
    token: env.TOKEN_EXPIRED,
    minReconnectDelay: 100,
    maxReconnectDelay: 200,
    getToken: async () => {
      calls++;
      out({ event: 'getToken', calls });
      return env.TOKEN_ALICE;
    },
  });
  try {
    await step('expired_token_error_109', async () => {
      cl.c.connect();
      const ctx = await cl.rec.wait('error', (e) => e.type === 'connect');
      if (!ctx.error || ctx.error.code !== 109) throw new Error(`connect error is ${JSON.stringify(safe(ctx))}`);
      return { error: safe(ctx.error) };
    });
    await step('expired_token_getToken_then_connected', async () => {
      const ctx = await cl.rec.wait('connected', () => true, { ms: 2 * STEP });
      if (calls !== 1) throw new Error(`getToken called ${calls} times`);
      return { client: ctx.client, getTokenCalls: calls };
    });
  } finally {
    cl.c.disconnect();
  }
  // Without getToken: 109, then the SDK gives up as unauthorized (it has no way to get a token).
  const cl2 = makeClient('erin', env.RELAY_WS_URL, {
    token: env.TOKEN_EXPIRED, minReconnectDelay: 100, maxReconnectDelay: 200,
  });
  try {
    await step('expired_token_without_getToken', async () => {
      cl2.c.connect();
      const err = await cl2.rec.wait('error', (e) => e.type === 'connect');
      if (!err.error || err.error.code !== 109) throw new Error(`connect error is ${JSON.stringify(safe(err))}`);
      const ctx = await cl2.rec.wait('disconnected', () => true, { ms: 2 * STEP });
      if (ctx.code !== 1) throw new Error(`disconnected with ${JSON.stringify(safe(ctx))}, expected code 1 unauthorized`);
      return { disconnected: safe(ctx) };
    });
  } finally {
    cl2.c.disconnect();
  }
}

// ---------------------------------------------------------------------------------------------
// Scenario: pings (relay started with a short ping_interval and pong_timeout) and a forbidden
// subscription.

async function scenarioMisc() {
  const cl = makeClient('frank', env.RELAY_WS_URL, { token: env.TOKEN_ALICE });
  const pingWait = Number(env.PING_WAIT_MS || 3500);
  try {
    await step('connect', async () => {
      cl.c.connect();
      const ctx = await cl.rec.wait('connected');
      return { client: ctx.client };
    });
    await step('forbidden_subscribe_103', async () => {
      const s = makeSub(cl, `closed:js-${suffix}`);
      s.sub.subscribe();
      const ctx = await s.rec.wait('unsubscribed');
      if (ctx.code !== 103 || s.sub.state !== 'unsubscribed') {
        throw new Error(`unsubscribed with ${JSON.stringify(safe(ctx))}, state ${s.sub.state}`);
      }
      return { ctx: safe(ctx) };
    });
    await step('pings_answered_and_connection_kept', async () => {
      const label = frames.find((f) => f.client.startsWith('frank'))?.client;
      await sleep(pingWait);
      const mine = frames.filter((f) => f.client === label);
      // A server ping is an empty reply, the SDK's pong an empty command ({} on a line in JSON, a
      // zero-length message in protobuf).
      const count = (dir) => mine.filter((f) => f.dir === dir).reduce((n, f) => n + emptyMessages(f), 0);
      const pings = count('in');
      const pongs = count('out');
      const disconnects = cl.rec.of('disconnected').length + cl.rec.of('connecting').length - 1;
      if (cl.c.state !== 'connected' || disconnects !== 0 || pings < 2 || pongs < pings - 1) {
        throw new Error(`state ${cl.c.state}, pings ${pings}, pongs ${pongs}, events ${JSON.stringify(cl.rec.events.map((e) => [e.name, safe(e.ctx)]))}`);
      }
      return { pings, pongs };
    });
  } finally {
    cl.c.disconnect();
  }
}

// ---------------------------------------------------------------------------------------------

const scenarios = { basic: scenarioBasic, recovery: scenarioRecovery, badtoken: scenarioBadToken, expired: scenarioExpired,
  misc: scenarioMisc };

const hardTimeout = setTimeout(() => {
  check('scenario_timeout', false, { error: `scenario ${scenario} did not finish in time` });
  finish();
}, Number(env.SCENARIO_TIMEOUT_MS || 50000));
hardTimeout.unref();

process.on('unhandledRejection', (e) => {
  check('unhandled_rejection', false, { error: String(e && e.stack || e) });
});

(async () => {
  const fn = scenarios[scenario];
  if (!SDK_MODULE) {
    check('protocol', false, { error: `unknown RELAY_PROTOCOL ${PROTOCOL} (json or protobuf)` });
  } else if (!fn) {
    check('scenario', false, { error: `unknown scenario ${scenario}` });
  } else {
    try {
      await fn();
    } catch (e) {
      check(`${scenario}_aborted`, false, { error: String(e && e.stack || e) });
    }
  }
  finish();
})();
