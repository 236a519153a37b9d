// The Node `ws` broadcast peer of relay's fan-out benchmark (see bench/README.md).
//
// What it does, deliberately without any cleverness (the same as peers/picows_relay.py):
//
// * every WebSocket client that connects to any path other than /pub is a subscriber;
// * a client on /pub is the publisher and is not a subscriber;
// * each message received from the publisher is split on "\n" (the publisher batches
//   the messages of one tick in one frame) and each line is sent to every open
//   subscriber with `client.send(line, { binary: false })`: one text frame and one
//   socket write per message per subscriber, no coalescing. This is the broadcast
//   loop of ws's README, applied line by line; the lines are Buffer slices of the
//   received frame, so nothing is re-encoded per subscriber.
//
// ws settings: the defaults (perMessageDeflate off, no server-side ping, UTF-8
// validation of incoming text in JavaScript: the optional native add-ons bufferutil
// and utf-8-validate are not installed), plus backlog 4096 and clientTracking off
// (the subscriber Set below is the only registry).
//
// ws is installed in bench/peers/node (package.json pins it; `npm ci` there).
// Run: taskset -c 0 node bench/peers/ws_relay.js --port 9000

'use strict';

const path = require('path');
const { createRequire } = require('module');

const requireNode = createRequire(path.join(__dirname, 'node', 'package.json'));
const { WebSocketServer, WebSocket } = requireNode('ws');
const wsVersion = requireNode('ws/package.json').version;

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '9000'));
const OPEN = WebSocket.OPEN;
const NL = 0x0a;

/** every connected subscriber */
const subscribers = new Set();

function sendLine(line) {
  if (line.length === 0) return;
  for (const client of subscribers) {
    if (client.readyState === OPEN) client.send(line, { binary: false });
  }
}

/** Send each line of `data` (a Buffer) to every subscriber, one frame per line. */
function broadcast(data) {
  let start = 0;
  for (;;) {
    const nl = data.indexOf(NL, start);
    if (nl < 0) {
      sendLine(start === 0 ? data : data.subarray(start));
      return;
    }
    sendLine(data.subarray(start, nl));
    start = nl + 1;
  }
}

const wss = new WebSocketServer({ host, port, backlog: 4096, clientTracking: false });

wss.on('connection', (ws, req) => {
  const pathname = (req.url || '/').split('?', 1)[0].replace(/\/+$/, '');
  if (pathname === '/pub') {
    ws.on('message', (data, isBinary) => {
      if (!isBinary) broadcast(data);
    });
  } else {
    subscribers.add(ws);
    ws.on('close', () => subscribers.delete(ws));
  }
  ws.on('error', () => {});
});

wss.on('listening', () => {
  console.log(`node ws ${wsVersion} relay (node ${process.version}) listening on ws://${host}:${port}/ (publisher: /pub)`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
