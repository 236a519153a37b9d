// The customer's product page: a chat widget on the shopper's own support: channel,
// typing events, order-status pushes, the flash-sale banner and the agents' presence.
import {
  $,
  Conversation,
  Session,
  TypingSender,
  bindChat,
  chronological,
  clock,
  debug,
  pageVisible,
  trackConnection,
  typingLine,
} from './common.js';

const STORE = 'relay-demo-customer';
const AGENT_POLL_MS = 5000;
const ORDER_STEPS = ['paid', 'packed', 'shipped', 'out for delivery', 'delivered'];

const ui = {
  connState: $('#conn-state'),
  name: $('#customer-name'),
  changeName: $('#change-name'),
  widget: $('#chat-widget'),
  launcher: $('#chat-launcher'),
  launcherBadge: $('#chat-unread'),
  minimize: $('#chat-min'),
  slot: $('#messages-slot'),
  typing: $('#typing'),
  composer: $('#composer'),
  input: $('#chat-input'),
  send: $('#chat-send'),
  agentStatus: $('#agent-status'),
  orderCard: $('#order-card'),
  orderStatus: $('#order-status'),
  orderSteps: $('#order-steps'),
  saleBar: $('#sale-bar'),
  saleText: $('#sale-banner'),
  saleClose: $('#sale-close'),
};

const relay = debug({ state: 'connecting', user: null, centrifuge: null });

function guestName() {
  return `Guest ${1000 + Math.floor(Math.random() * 9000)}`;
}

// ---------------------------------------------------------------- shop chrome (no relay)

function setupProduct() {
  const sizes = document.querySelectorAll('[data-size]');
  const colors = document.querySelectorAll('[data-color]');
  const art = $('#product-art');
  const note = $('#cart-note');
  let size = null;
  sizes.forEach((b) => b.addEventListener('click', () => {
    if (b.disabled) return;
    sizes.forEach((o) => o.setAttribute('aria-pressed', String(o === b)));
    size = b.dataset.size;
    note.textContent = '';
  }));
  colors.forEach((b) => b.addEventListener('click', () => {
    colors.forEach((o) => o.setAttribute('aria-pressed', String(o === b)));
    art.style.setProperty('--jacket', b.dataset.color);
    $('#color-name').textContent = b.title;
  }));
  $('#add-to-cart').addEventListener('click', () => {
    if (!size) {
      note.textContent = 'Please pick a size first.';
      note.className = 'cart-note warn';
      return;
    }
    const count = $('#cart-count');
    count.textContent = String(Number(count.textContent || 0) + 1);
    count.hidden = false;
    note.textContent = `Added size ${size} to your cart. Checkout opens after the sale rush — stay tuned!`;
    note.className = 'cart-note ok';
  });
}

// ---------------------------------------------------------------- chat widget

let widgetOpen = true;
let conv = null;

function chatOnScreen() {
  return widgetOpen && pageVisible();
}

function refreshVisibility() {
  if (conv) conv.setVisible(chatOnScreen());
  renderUnread();
}

function renderUnread() {
  const n = conv ? conv.unread() : 0;
  ui.launcherBadge.textContent = String(n);
  ui.launcherBadge.hidden = n === 0 || widgetOpen;
}

function setWidgetOpen(open) {
  widgetOpen = open;
  ui.widget.classList.toggle('open', open);
  ui.widget.classList.toggle('closed', !open);
  document.body.classList.toggle('chat-open', open);
  ui.launcher.setAttribute('aria-expanded', String(open));
  refreshVisibility();
  if (open) {
    if (conv) conv.scrollToEnd();
    ui.input.focus();
  }
}

// ---------------------------------------------------------------- agents online

function setAgentStatus(online) {
  ui.agentStatus.dataset.online = String(online);
  ui.agentStatus.textContent = online ? 'An agent is online' : 'Agents offline — leave a message';
  ui.agentStatus.classList.toggle('on', online);
}

function makeAgentWatcher(centrifuge, channel) {
  let inflight = false;
  let again = false;
  const check = () => {
    if (centrifuge.state !== 'connected') return;
    if (inflight) {
      again = true;
      return;
    }
    inflight = true;
    centrifuge
      .presenceStats(channel)
      .then((stats) => setAgentStatus((stats.numUsers || 0) > 0 || (stats.numClients || 0) > 0))
      .catch((err) => {
        console.warn('presence stats of', channel, err);
        setAgentStatus(false);
      })
      .then(() => {
        inflight = false;
        if (again) {
          again = false;
          check();
        }
      });
  };
  setInterval(check, AGENT_POLL_MS);
  return check;
}

// ---------------------------------------------------------------- orders and sale

let orderMark = { offset: -1, ts: -1 };

function showOrder(pub, live) {
  const d = pub && pub.data;
  if (!d || typeof d !== 'object' || !d.order || !d.status) return;
  const offset = typeof pub.offset === 'number' ? pub.offset : -1;
  const ts = Number(d.ts) || 0;
  if (offset >= 0 && orderMark.offset >= 0) {
    if (offset <= orderMark.offset) return; // seen, or older (newest wins)
  } else if (ts && ts < orderMark.ts) return;
  orderMark = { offset: Math.max(offset, orderMark.offset), ts: Math.max(ts, orderMark.ts) };

  const status = String(d.status);
  const label = typeof d.order === 'number' ? `#${d.order}` : String(d.order); // the shop backend's ids are numbers
  ui.orderStatus.textContent = '';
  ui.orderStatus.append('Your order ', Object.assign(document.createElement('b'), { textContent: label }),
    ': ', Object.assign(document.createElement('span'), { className: 'order-state', textContent: status }));
  ui.orderCard.querySelector('.order-text').textContent = d.text ? String(d.text) : `Updated ${clock(ts)}`;
  const at = ORDER_STEPS.indexOf(status);
  ui.orderSteps.hidden = at < 0;
  ui.orderSteps.querySelectorAll('li').forEach((li, i) => {
    li.classList.toggle('done', at >= 0 && i <= at);
    li.classList.toggle('current', i === at);
  });
  ui.orderCard.hidden = false;
  if (live && conv) {
    const extra = d.text ? ` — ${d.text}` : '';
    conv.system(`Your order ${label} is now ${status}${extra}`, { kind: 'order',
      key: offset >= 0 ? `order:${offset}` : undefined });
  }
}

let saleMark = -1;

function showSale(pub, live) {
  const d = pub && pub.data;
  if (!d || typeof d.text !== 'string' || !d.text) return;
  const offset = typeof pub.offset === 'number' ? pub.offset : null;
  if (offset !== null) {
    if (offset <= saleMark) return;
    saleMark = offset;
  }
  ui.saleText.textContent = d.text;
  ui.saleBar.hidden = false;
  if (!live) return;
  ui.saleBar.classList.remove('flash');
  void ui.saleBar.offsetWidth; // restart the highlight animation
  ui.saleBar.classList.add('flash');
}

// ---------------------------------------------------------------- main

async function main() {
  setupProduct();
  ui.launcher.addEventListener('click', () => setWidgetOpen(!widgetOpen));
  ui.minimize.addEventListener('click', () => setWidgetOpen(false));
  ui.saleClose.addEventListener('click', () => {
    ui.saleBar.hidden = true;
  });
  document.addEventListener('visibilitychange', refreshVisibility);
  window.addEventListener('focus', refreshVisibility);

  const session = new Session('customer', STORE);
  const stored = session.stored();
  const name = typeof stored.name === 'string' && stored.name.trim() ? stored.name : guestName();
  ui.name.textContent = name;
  ui.connState.textContent = 'connecting';
  ui.connState.dataset.state = 'connecting';

  await session.login(name, typeof stored.user === 'string' ? stored.user : undefined, () => {
    ui.connState.textContent = 'connecting';
  });
  ui.name.textContent = session.name;
  relay.user = session.user;
  relay.session = session;

  const me = { user: session.user, name: session.name, role: 'customer' };
  const centrifuge = session.connect();
  relay.centrifuge = centrifuge;
  const ch = session.channels;

  const chatSub = centrifuge.newSubscription(ch.chat, { joinLeave: true }); // agents joining and leaving
  const typingSub = centrifuge.newSubscription(ch.typing);
  const ordersSub = centrifuge.newSubscription(ch.orders);
  const saleSub = centrifuge.newSubscription(ch.sale || 'sale:flash');

  conv = new Conversation({
    me,
    publish: (data) => chatSub.publish(data),
    onChange: (kind) => {
      if (kind === 'typing' || kind === 'message') typingLine(conv, ui.typing);
      if (kind === 'message' || kind === 'unread') renderUnread();
    },
  });
  conv.setEmptyText('Hi! Questions about sizes, stock or your order? Ask away — we usually reply within a minute.');
  ui.slot.replaceWith(conv.list);
  relay.conversation = conv;

  const checkAgents = makeAgentWatcher(centrifuge, ch.agents || 'agents:online');
  trackConnection(centrifuge, ui.connState, (state) => {
    ui.widget.dataset.conn = state;
    if (state === 'connected') checkAgents();
  });

  // chat: history on first subscribe, live messages, join/leave of agents
  const agentsHere = new Map(); // agent user -> Set of client ids in this chat
  bindChat(chatSub, conv, {
    onSubscribed: () => {
      chatSub.presence().then((res) => {
        agentsHere.clear();
        for (const [client, info] of Object.entries(res.clients || {})) {
          if (!info.user || !info.user.startsWith('a-')) continue;
          if (!agentsHere.has(info.user)) agentsHere.set(info.user, new Set());
          agentsHere.get(info.user).add(client);
        }
      }).catch(() => {});
      refreshVisibility();
    },
  });
  const agentName = (info) => (info.connInfo && info.connInfo.name) || info.user;
  chatSub.on('join', (ctx) => {
    const info = ctx.info || {};
    if (info.user && info.user.startsWith('a-')) {
      const clients = agentsHere.get(info.user) || new Set();
      if (!clients.size) conv.system(`${agentName(info)} joined the chat`, { kind: 'join' });
      clients.add(info.client);
      agentsHere.set(info.user, clients);
      setAgentStatus(true); // an agent in this very chat is online; presence stats confirm below
    }
    checkAgents();
  });
  chatSub.on('leave', (ctx) => {
    const info = ctx.info || {};
    if (info.user && info.user.startsWith('a-')) {
      const clients = agentsHere.get(info.user);
      if (clients) {
        clients.delete(info.client);
        if (!clients.size) {
          agentsHere.delete(info.user);
          conv.system(`${agentName(info)} left the chat`, { kind: 'leave' });
        }
      }
      conv.stopTyping(info.user);
    }
    checkAgents();
  });

  typingSub.on('publication', (ctx) => conv.typing(ctx.data));

  // Order statuses: a subscription of the page's own, or a server-side one that relay made at
  // connect (the shop backend's connect hook names the customer's orders: channel). Then the
  // client-level events carry it, and the page's own subscribe is answered 105 (already subscribed).
  if (session.order) showOrder({ data: session.order }, false); // what the backend said at login
  let ordersLoaded = false;
  const ordersSubscribed = (ctx, history) => {
    if (ordersLoaded && !(ctx.wasRecovering && !ctx.recovered)) return;
    ordersLoaded = true;
    history({ limit: 1, reverse: true })
      .then((res) => chronological(res.publications).forEach((p) => showOrder(p, false)))
      .catch((err) => console.warn('orders history', err));
  };
  ordersSub.on('publication', (ctx) => showOrder(ctx, true));
  ordersSub.on('subscribed', (ctx) => ordersSubscribed(ctx, (opts) => ordersSub.history(opts)));
  ordersSub.on('unsubscribed', (ctx) => {
    if (ctx.code === 105) centrifuge.removeSubscription(ordersSub); // server-side: the client events below
  });
  centrifuge.on('subscribed', (ctx) => {
    if (ctx.channel === ch.orders) ordersSubscribed(ctx, (opts) => centrifuge.history(ch.orders, opts));
  });
  centrifuge.on('publication', (ctx) => {
    if (ctx.channel === ch.orders) showOrder(ctx, true);
  });

  let saleLoaded = false;
  saleSub.on('publication', (ctx) => showSale(ctx, true));
  saleSub.on('subscribed', (ctx) => {
    if (saleLoaded && !(ctx.wasRecovering && !ctx.recovered)) return;
    saleLoaded = true;
    saleSub.history({ limit: 1, reverse: true })
      .then((res) => chronological(res.publications).forEach((p) => showSale(p, false)))
      .catch((err) => console.warn('sale history', err));
  });

  // composer
  const typingOut = new TypingSender(me, (data) => typingSub.publish(data));
  ui.input.addEventListener('input', () => {
    if (ui.input.value.trim()) typingOut.ping();
  });
  ui.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      ui.composer.requestSubmit ? ui.composer.requestSubmit() : ui.send.click();
    }
  });
  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = ui.input.value.trim();
    if (!text) return;
    ui.input.value = '';
    typingOut.reset();
    conv.send(text.slice(0, 2000));
    ui.input.focus();
  });

  // "change name": same user id, new display name (the agents' list hears of it)
  ui.changeName.addEventListener('click', () => {
    const form = document.createElement('form');
    form.className = 'name-form';
    const input = Object.assign(document.createElement('input'), { type: 'text', value: me.name, maxLength: 40 });
    input.setAttribute('aria-label', 'Your name');
    input.setAttribute('data-testid', 'name-input');
    form.appendChild(input);
    ui.name.replaceWith(form);
    ui.changeName.hidden = true;
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const value = input.value.trim();
      form.replaceWith(ui.name);
      ui.changeName.hidden = false;
      if (!save || !value || value === me.name) return;
      try {
        await session.requestToken(value, session.user);
        me.name = session.name;
        ui.name.textContent = session.name;
      } catch (err) {
        console.warn('rename', err);
      }
    };
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      finish(true);
    });
    input.addEventListener('blur', () => finish(true));
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') finish(false);
    });
  });

  chatSub.subscribe();
  typingSub.subscribe();
  ordersSub.subscribe();
  saleSub.subscribe();
  centrifuge.connect();
  refreshVisibility();
}

main().catch((err) => {
  console.error(err);
  ui.connState.textContent = 'disconnected';
  ui.connState.dataset.state = 'disconnected';
});
