// Shared pieces of the shop demo pages: the demo backend's HTTP API, the identity kept
// in localStorage, the connection-state line, and Conversation, the model of one 1:1
// support chat (messages de-duplicated by mid, delivered/read receipts, typing line)
// that both the customer's widget and the agent's console render.
import { Centrifuge, UnauthorizedError } from 'centrifuge';

export { Centrifuge, UnauthorizedError };

export const TYPING_EVERY_MS = 1500; // send at most one typing event per 1.5 s
export const TYPING_SHOW_MS = 3000; // hide "X is typing…" 3 s after the last event
export const RECEIPT_BATCH_MS = 40; // one receipt per burst of messages
export const HISTORY_LIMIT = 100;
export const BOT_NAME = 'Northwind bot';
const STATUS_RANK = { sent: 1, delivered: 2, read: 3 };
const STATUS_MARK = { sent: '✓', delivered: '✓✓', read: '✓✓' };

// ---------------------------------------------------------------- small helpers

export function $(selector, root) {
  return (root || document).querySelector(selector);
}

// el('div', {class: 'x', dataset: {mid: '1'}, onclick: fn}, 'text', childNode, ...)
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

export function randomId() {
  const c = window.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID(); // secure contexts only
  const bytes = new Uint8Array(16);
  c.getRandomValues(bytes);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function loadJSON(key) {
  try {
    const value = JSON.parse(window.localStorage.getItem(key) || 'null');
    return value && typeof value === 'object' ? value : null;
  } catch (e) {
    return null;
  }
}

export function saveJSON(key, value) {
  try {
    window.localStorage.setItem(key, JSON.stringify(value));
  } catch (e) {
    /* private mode or quota: the identity just won't survive a reload */
  }
}

export function clock(ts) {
  const d = new Date(typeof ts === 'number' && ts > 0 ? ts : Date.now());
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function pageVisible() {
  return document.visibilityState !== 'hidden';
}

export function queryParam(name) {
  try {
    return new URLSearchParams(window.location.search).get(name);
  } catch (e) {
    return null;
  }
}

// ---------------------------------------------------------------- the demo backend

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export async function api(path, { method = 'POST', body, token } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
  });
  let data = null;
  try {
    data = await resp.json();
  } catch (e) {
    data = null;
  }
  if (!resp.ok) {
    const message = (data && data.error) || `${method} ${path}: HTTP ${resp.status}`;
    throw new ApiError(message, resp.status);
  }
  return data || {};
}

// Who this page is: {user, name, role, token, ws_url, channels} from POST /demo/api/token,
// the {user, name} part kept in localStorage so a reload keeps the same chat.
// token null: a backend that logs the page in with a cookie (examples/shop_backend --demo);
// the browser sends the cookie with the WebSocket handshake and relay's connect hook reads it.
export class Session {
  constructor(role, storageKey) {
    this.role = role;
    this.storageKey = storageKey;
    this.user = null;
    this.name = null;
    this.token = null;
    this.wsUrl = null;
    this.channels = {};
    this.order = null; // the customer's order {order, status, ts}, when the backend says
  }

  // Whether relay knows this page by a connect token (else: by the backend's cookie).
  usesTokens() {
    return typeof this.token === 'string' && this.token !== '';
  }

  stored() {
    return loadJSON(this.storageKey) || {};
  }

  // Ask for a token until the backend answers (it may be starting up).
  async login(name, user, onRetry) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.requestToken(name, user);
      } catch (e) {
        if (e instanceof ApiError && e.status >= 400 && e.status < 500 && user) {
          user = undefined; // a stale id the server no longer accepts: start afresh
          continue;
        }
        if (onRetry) onRetry(e, attempt);
        await sleep(Math.min(1000 * 2 ** attempt, 10000));
      }
    }
  }

  async requestToken(name, user) {
    const body = { role: this.role, name: name || this.name };
    const keep = user === undefined ? this.user : user;
    if (keep) body.user = keep;
    const data = await api('/demo/api/token', { body });
    this.user = data.user;
    this.name = data.name;
    this.token = data.token;
    this.wsUrl = data.ws_url || this.wsUrl;
    this.channels = data.channels || this.channels;
    this.order = data.order || this.order;
    saveJSON(this.storageKey, { user: this.user, name: this.name });
    return data;
  }

  // The SDK's connection getToken: same identity, fresh token.
  async refreshToken() {
    const data = await this.requestToken(this.name, this.user);
    return data.token;
  }

  // A call to the demo backend authenticated with the connect token (refreshed once on 401).
  async authed(path, opts = {}) {
    try {
      return await api(path, { ...opts, token: this.token });
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 401) throw e;
      await this.refreshToken();
      return api(path, { ...opts, token: this.token });
    }
  }

  connect(options = {}) {
    const auth = this.usesTokens() ? { token: this.token, getToken: () => this.refreshToken() } : {};
    return new Centrifuge(this.wsUrl, {
      ...auth,
      maxReconnectDelay: 5000,
      ...options,
    });
  }
}

// ---------------------------------------------------------------- connection state line

// Mirrors the client's state into `node` (text exactly connecting / connected /
// reconnecting / disconnected) and into window.relayDemo.state.
export function trackConnection(centrifuge, node, onChange) {
  let everConnected = false;
  const set = (state) => {
    node.textContent = state;
    node.dataset.state = state;
    if (window.relayDemo) window.relayDemo.state = state;
    if (onChange) onChange(state);
  };
  centrifuge.on('connecting', () => set(everConnected ? 'reconnecting' : 'connecting'));
  centrifuge.on('connected', () => {
    everConnected = true;
    set('connected');
  });
  centrifuge.on('disconnected', () => set('disconnected'));
  set('connecting');
  return set;
}

// Throttled typing events on a typing: channel.
export class TypingSender {
  constructor(me, publish) {
    this.me = me;
    this.publish = publish;
    this.last = 0;
  }

  ping() {
    const now = Date.now();
    if (now - this.last < TYPING_EVERY_MS) return;
    this.last = now;
    const data = { type: 'typing', by: this.me.user, name: this.me.name, role: this.me.role };
    Promise.resolve()
      .then(() => this.publish(data))
      .catch(() => {
        /* typing events are best effort */
      });
  }

  reset() {
    this.last = 0;
  }
}

// Publications of a history answer asked newest first (to get the latest N), oldest first.
export function chronological(pubs) {
  const list = (pubs || []).slice();
  if (list.every((p) => typeof p.offset === 'number')) list.sort((a, b) => a.offset - b.offset);
  else list.reverse();
  return list;
}

// ---------------------------------------------------------------- one 1:1 chat

// me: {user, name, role}. publish(data) publishes on the chat's support: channel.
// onChange(kind) is called synchronously after every visible change:
// 'message', 'status', 'unread', 'typing', 'system'.
export class Conversation {
  constructor({ me, publish, onChange }) {
    this.me = me;
    this.publish = publish;
    this.onChange = onChange || (() => {});
    this.list = el('div', { class: 'messages', 'data-testid': 'messages', role: 'log', 'aria-live': 'polite' });
    this.empty = el('div', { class: 'messages-empty' });
    this.list.appendChild(this.empty);
    this.msgs = new Map(); // mid -> {data, node, own, other, readByMe, state}
    this.best = new Map(); // mid -> best status heard from the other side (may precede the message)
    this.sent = new Set(); // `${status}:${mid}` receipts this user published (or is publishing)
    this.pending = { delivered: new Set(), read: new Set() };
    this.flushTimer = null;
    this.visible = false;
    this.typers = new Map(); // user -> {name, timer}
    this.last = null; // latest message, for previews
    this.lastTs = 0;
    this.systemKeys = new Set();
    this.fromHistory = false;
  }

  setEmptyText(text) {
    this.empty.textContent = text;
  }

  isOther(data) {
    // the other party's message: not mine and not from someone of my side (a colleague agent);
    // the shop's bot speaks for the shop: the other side to a customer, a colleague to an agent
    if (data.role === 'bot') return this.me.role !== 'agent';
    return data.from !== this.me.user && data.role !== this.me.role;
  }

  // -- incoming data

  handle(data) {
    if (!data || typeof data !== 'object') return;
    if (data.type === 'msg') this.addMessage(data);
    else if (data.type === 'receipt') this.applyReceipt(data);
  }

  // History: publications oldest first. Our own receipts are read first so that a receipt
  // already published before a reload is never published again.
  loadHistory(pubs) {
    this.fromHistory = true;
    try {
      this.loadHistoryPubs(pubs);
    } finally {
      this.fromHistory = false;
    }
  }

  loadHistoryPubs(pubs) {
    for (const pub of pubs) {
      const d = pub && pub.data;
      if (d && d.type === 'receipt' && d.by === this.me.user) this.applyReceipt(d);
    }
    for (const pub of pubs) {
      const d = pub && pub.data;
      if (d && d.type === 'msg') this.addMessage(d);
      else if (d && d.type === 'receipt' && d.by !== this.me.user) this.applyReceipt(d);
    }
  }

  addMessage(data, { local = false } = {}) {
    if (typeof data.mid !== 'string' || !data.mid || typeof data.text !== 'string') return null;
    const known = this.msgs.get(data.mid);
    if (known) return known;
    const own = data.from === this.me.user;
    const other = !own && this.isOther(data);
    const entry = { data, own, other, readByMe: other && this.sent.has(`read:${data.mid}`), state: null };
    entry.node = this.renderMessage(entry);
    this.msgs.set(data.mid, entry);
    // history is placed by timestamp; live messages arrive in the channel's order and are
    // appended (senders' clocks may disagree)
    this.insert(entry.node, data.ts, !this.fromHistory);
    if (own && !local) this.setOwnStatus(data.mid, 'sent');
    if (own) this.applyBest(entry);
    if (!own) this.stopTyping(data.from);
    if (other) {
      if (data.role !== 'bot') this.queueReceipt('delivered', data.mid); // the bot reads no receipts
      if (this.visible) this.markRead(entry);
    }
    if (!this.last || (Number(data.ts) || 0) >= this.lastTs) {
      this.last = data;
      this.lastTs = Number(data.ts) || Date.now();
    }
    this.onChange('message');
    return entry;
  }

  applyReceipt(data) {
    const mids = Array.isArray(data.mids) ? data.mids.filter((m) => typeof m === 'string') : [];
    const status = data.status;
    if (!STATUS_RANK[status] || !mids.length) return;
    if (data.by === this.me.user) {
      // our own receipt (live echo, another tab of ours, or history): remember it
      let changed = false;
      for (const mid of mids) {
        this.sent.add(`${status}:${mid}`);
        this.pending[status].delete(mid);
        const entry = this.msgs.get(mid);
        if (status === 'read' && entry && entry.other && !entry.readByMe) {
          entry.readByMe = true;
          changed = true;
        }
      }
      if (changed) this.onChange('unread');
      return;
    }
    for (const mid of mids) {
      if ((STATUS_RANK[this.best.get(mid)] || 0) < STATUS_RANK[status]) this.best.set(mid, status);
      const entry = this.msgs.get(mid);
      if (entry && entry.own) this.applyBest(entry);
    }
  }

  typing(data) {
    if (!data || data.type !== 'typing' || !data.by || data.by === this.me.user) return;
    const prev = this.typers.get(data.by);
    if (prev) clearTimeout(prev.timer);
    const timer = setTimeout(() => this.stopTyping(data.by), TYPING_SHOW_MS);
    this.typers.set(data.by, { name: data.name || data.by, timer });
    this.onChange('typing');
  }

  stopTyping(user) {
    const t = this.typers.get(user);
    if (!t) return;
    clearTimeout(t.timer);
    this.typers.delete(user);
    this.onChange('typing');
  }

  typingText() {
    const names = Array.from(this.typers.values(), (t) => t.name);
    if (!names.length) return '';
    if (names.length === 1) return `${names[0]} is typing…`;
    return `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]} are typing…`;
  }

  // A grey line in the list (joins, order updates). `key` de-duplicates.
  system(text, { ts, key, kind } = {}) {
    if (key) {
      if (this.systemKeys.has(key)) return null;
      this.systemKeys.add(key);
    }
    const node = el('div', { class: `sys${kind ? ` sys-${kind}` : ''}`, 'data-testid': 'system-line' },
      el('span', { class: 'sys-text', text }), el('time', { text: clock(ts || Date.now()) }));
    this.insert(node, Date.now(), true);
    this.onChange('system');
    return node;
  }

  // -- sending

  send(text) {
    const data = {
      type: 'msg',
      mid: randomId(),
      text,
      from: this.me.user,
      name: this.me.name,
      role: this.me.role,
      ts: Date.now(),
    };
    const entry = this.addMessage(data, { local: true });
    this.publishMessage(entry);
    return entry;
  }

  publishMessage(entry) {
    entry.node.classList.remove('failed');
    entry.node.classList.add('pending');
    entry.mark.textContent = '…';
    entry.mark.title = 'sending';
    Promise.resolve()
      .then(() => this.publish(entry.data))
      .then(() => {
        entry.node.classList.remove('pending');
        this.setOwnStatus(entry.data.mid, 'sent');
        this.applyBest(entry);
      })
      .catch((err) => {
        entry.node.classList.remove('pending');
        if (entry.state) return; // it did get through (we heard it back)
        entry.node.classList.add('failed');
        entry.mark.textContent = 'Not sent · retry';
        entry.mark.title = (err && err.message) || 'publish failed';
        this.onChange('status');
      });
  }

  // -- visibility, read state

  setVisible(visible) {
    this.visible = !!visible;
    if (this.visible) this.markAllRead();
  }

  markAllRead() {
    let changed = false;
    for (const entry of this.msgs.values()) {
      if (entry.other && !entry.readByMe) {
        this.markRead(entry, true);
        changed = true;
      }
    }
    if (changed) this.onChange('unread');
  }

  markRead(entry, quiet) {
    entry.readByMe = true;
    if (entry.data.role !== 'bot') this.queueReceipt('read', entry.data.mid);
    if (!quiet) this.onChange('unread');
  }

  unread() {
    let n = 0;
    for (const entry of this.msgs.values()) if (entry.other && !entry.readByMe) n += 1;
    return n;
  }

  // -- receipts

  queueReceipt(status, mid) {
    if (this.sent.has(`${status}:${mid}`) || this.pending[status].has(mid)) return;
    this.pending[status].add(mid);
    this.scheduleFlush(RECEIPT_BATCH_MS);
  }

  scheduleFlush(ms) {
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = null;
      this.flush();
    }, ms);
  }

  flush() {
    for (const status of ['delivered', 'read']) {
      const mids = Array.from(this.pending[status]).filter((mid) => !this.sent.has(`${status}:${mid}`));
      this.pending[status].clear();
      if (!mids.length) continue;
      for (const mid of mids) this.sent.add(`${status}:${mid}`);
      const data = { type: 'receipt', mids, status, by: this.me.user };
      Promise.resolve()
        .then(() => this.publish(data))
        .catch(() => {
          // not published: forget it and try again a bit later
          for (const mid of mids) {
            this.sent.delete(`${status}:${mid}`);
            this.pending[status].add(mid);
          }
          this.scheduleFlush(2000);
        });
    }
  }

  // -- rendering

  renderMessage(entry) {
    const { data, own } = entry;
    const side = own ? 'mine' : entry.other ? 'theirs' : 'colleague';
    const role = data.role === 'agent' || data.role === 'bot' ? data.role : 'customer';
    const attrs = {
      class: `msg ${side} role-${role}`,
      'data-testid': 'message',
      'data-mid': data.mid,
      'data-from': data.from || '',
    };
    entry.mark = el('span', { class: 'mark' });
    const node = el('div', attrs,
      el('div', { class: 'bubble' },
        own ? null : el('span', { class: 'who', text: role === 'bot' ? BOT_NAME : data.name || data.from || '' }),
        el('span', { class: 'text', text: data.text })),
      el('div', { class: 'meta' }, el('time', { text: clock(data.ts) }), own ? entry.mark : null));
    if (own) {
      entry.mark.addEventListener('click', () => {
        if (node.classList.contains('failed')) this.publishMessage(entry);
      });
    }
    return node;
  }

  setOwnStatus(mid, status) {
    const entry = this.msgs.get(mid);
    if (!entry || !entry.own) return;
    if ((STATUS_RANK[entry.state] || 0) >= STATUS_RANK[status]) return;
    entry.state = status;
    entry.node.dataset.status = status;
    entry.node.classList.remove('failed', 'pending', 'st-sent', 'st-delivered', 'st-read');
    entry.node.classList.add(`st-${status}`);
    entry.mark.textContent = STATUS_MARK[status];
    entry.mark.title = status;
    this.onChange('status');
  }

  applyBest(entry) {
    const best = this.best.get(entry.data.mid);
    // a receipt means it was published even if our publish() has not resolved yet
    if (best) this.setOwnStatus(entry.data.mid, best);
  }

  // append: at the end (live items); otherwise in timestamp order (history).
  insert(node, ts, append) {
    let key = Number(ts) || Date.now();
    if (this.empty.parentNode) this.empty.remove();
    const list = this.list;
    const lastNode = list.lastElementChild;
    const lastKey = lastNode ? Number(lastNode.dataset.ts) || 0 : 0;
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    let before = null;
    if (append) key = Math.max(key, lastKey);
    else {
      for (let child = lastNode; child; child = child.previousElementSibling) {
        if (Number(child.dataset.ts) > key) before = child;
        else break;
      }
    }
    node.dataset.ts = String(key);
    list.insertBefore(node, before);
    if (!before && (append || nearBottom)) list.scrollTop = list.scrollHeight;
  }

  scrollToEnd() {
    this.list.scrollTop = this.list.scrollHeight;
  }
}

// Wires a chat subscription to a Conversation: publications, history on the first
// subscribe (and again when recovery failed), `loaded` resolved after the first history.
export function bindChat(sub, conv, { onSubscribed } = {}) {
  let loaded = false;
  sub.on('publication', (ctx) => conv.handle(ctx.data));
  sub.on('subscribed', (ctx) => {
    if (!loaded || (ctx.wasRecovering && !ctx.recovered)) {
      loaded = true;
      sub
        .history({ limit: HISTORY_LIMIT, reverse: true })
        .then((res) => conv.loadHistory(chronological(res.publications)))
        .catch((err) => console.warn('history', sub.channel, err));
    }
    if (onSubscribed) onSubscribed(ctx);
  });
}

export function typingLine(conv, node) {
  const text = conv ? conv.typingText() : '';
  node.textContent = text;
  node.classList.toggle('active', !!text);
}

export function debug(extra) {
  window.relayDemo = Object.assign(window.relayDemo || { state: 'connecting', user: null, centrifuge: null }, extra);
  return window.relayDemo;
}
