// The support agent's console: every open customer chat (support: and typing: channels,
// joined with subscription tokens from the demo backend, or, logged in by cookie, admitted
// by the shop backend's subscribe hook), unread counts, the customers' presence, chats the
// shop's bot handed over, order-status pushes and flash-sale announcements.
import {
  $,
  ApiError,
  BOT_NAME,
  Conversation,
  Session,
  TypingSender,
  UnauthorizedError,
  bindChat,
  chronological,
  clock,
  debug,
  el,
  pageVisible,
  queryParam,
  trackConnection,
  typingLine,
} from './common.js';

const STORE = 'relay-demo-agent';
const DEFAULT_NAME = 'Agent Anna';

const ui = {
  connState: $('#conn-state'),
  agentName: $('#agent-name'),
  agentsOnline: $('#agents-online'),
  agentsLabel: $('#agents-label'),
  chatList: $('#chat-list'),
  chatCount: $('#chat-count'),
  listEmpty: $('#chat-list-empty'),
  pane: $('#pane'),
  paneEmpty: $('#pane-empty'),
  paneChat: $('#pane-chat'),
  selName: $('#sel-name'),
  selId: $('#sel-id'),
  selDot: $('#sel-dot'),
  selSince: $('#sel-since'),
  slot: $('#messages-slot'),
  typing: $('#typing'),
  composer: $('#composer'),
  input: $('#chat-input'),
  orderForm: $('#order-tool'),
  orderNumber: $('#order-number'),
  orderSelect: $('#order-status-select'),
  pushResult: $('#push-result'),
  saleForm: $('#sale-form'),
  saleText: $('#sale-text'),
  saleResult: $('#sale-result'),
  currentSale: $('#current-sale'),
};

const relay = debug({ state: 'connecting', user: null, centrifuge: null });

let session = null;
let centrifuge = null;
let me = null;
const chats = new Map(); // chat channel -> chat record
let selected = null; // chat record

// ---------------------------------------------------------------- helpers

function subscriptionToken(ctx) {
  return session
    .authed('/demo/api/subscription-token', { body: { channel: ctx.channel } })
    .then((res) => res.token)
    .catch((err) => {
      if (err instanceof ApiError && err.status === 403) throw new UnauthorizedError(err.message);
      throw err;
    });
}

// Subscription options: a getToken only where relay knows us by tokens (an empty token would be
// "unauthorized" to the SDK; logged in by cookie, the backend's subscribe hook decides).
function subOptions(extra) {
  return session.usesTokens() ? { getToken: subscriptionToken, ...extra } : { ...extra };
}

function flash(node, text, ok) {
  node.textContent = text;
  node.className = `result ${ok ? 'ok' : 'err'}`;
  clearTimeout(node.timer);
  node.timer = setTimeout(() => {
    node.textContent = '';
    node.className = 'result';
  }, ok ? 4000 : 8000);
}

function isOnline(chat) {
  for (const user of chat.presence.values()) if (user === chat.customer) return true;
  return false;
}

// ---------------------------------------------------------------- chat list

function renderItem(chat) {
  const unread = chat.conv.unread();
  chat.badge.textContent = String(unread);
  chat.badge.classList.toggle('zero', unread === 0);
  chat.item.classList.toggle('has-unread', unread > 0);
  chat.nameNode.textContent = chat.name;
  const last = chat.conv.last;
  const typing = chat.conv.typers.size > 0;
  chat.preview.classList.toggle('typing-preview', typing);
  if (typing) chat.preview.textContent = 'typing…';
  else if (last) chat.preview.textContent = `${last.from === me.user ? 'You: ' : last.role === 'agent' || last.role === 'bot' ? `${last.name}: ` : ''}${last.text}`;
  else chat.preview.textContent = 'No messages yet';
  chat.timeNode.textContent = clock(last ? last.ts : chat.openedAt * 1000);
  const online = isOnline(chat);
  chat.dot.dataset.online = String(online);
  chat.dot.title = online ? 'online' : 'offline';
  if (chat === selected) {
    ui.selName.textContent = chat.name;
    ui.selDot.dataset.online = String(online);
    ui.selDot.title = online ? 'online' : 'offline';
  }
}

function activity(chat) {
  return Math.max(chat.conv.lastTs || 0, (chat.openedAt || 0) * 1000);
}

function resort() {
  const ordered = Array.from(chats.values()).sort((a, b) => activity(b) - activity(a));
  const current = Array.from(ui.chatList.children);
  if (ordered.length === current.length && ordered.every((c, i) => c.item === current[i])) return;
  for (const chat of ordered) ui.chatList.appendChild(chat.item);
}

function renderTotals() {
  let unread = 0;
  for (const chat of chats.values()) unread += chat.conv.unread();
  document.title = `${unread ? `(${unread}) ` : ''}Support console · Northwind Outfitters`;
  ui.chatCount.textContent = String(chats.size);
  ui.listEmpty.hidden = chats.size > 0;
}

// A chat the bot handed to the agents: flagged in the list, a line in the conversation.
function markHandedOff(chat, ts) {
  if (chat.handedOff) return;
  chat.handedOff = true;
  chat.item.dataset.handoff = 'true';
  chat.item.classList.add('handed-off');
  chat.flag.hidden = false;
  chat.conv.system(`${BOT_NAME} handed this chat to the agents`, { kind: 'handoff', key: 'handoff', ts });
}

// info: {customer, name, chat, typing, opened_at} (chat_opened, GET /demo/api/chats), and
// from the shop backend also order and handed_off.
function addChat(info) {
  if (!info || typeof info.customer !== 'string' || !info.customer.startsWith('c-')) return null;
  const customer = info.customer;
  const channel = typeof info.chat === 'string' && info.chat ? info.chat : `support:${customer}#${customer}`;
  const known = chats.get(channel);
  if (known) {
    if (info.name && info.name !== known.name) {
      known.name = info.name;
      renderItem(known);
    }
    if (info.handed_off) markHandedOff(known);
    return known;
  }
  const chat = {
    customer,
    name: info.name || customer,
    channel,
    typingChannel: info.typing || channel.replace(/^support:/, 'typing:'),
    order: info.order === undefined || info.order === null ? null : info.order,
    openedAt: Number(info.opened_at) || Date.now() / 1000,
    presence: new Map(), // client id -> user
    handedOff: false,
  };
  chat.sub = centrifuge.newSubscription(chat.channel, subOptions({ joinLeave: true }));
  chat.typingSub = centrifuge.newSubscription(chat.typingChannel, subOptions());
  chat.typingOut = new TypingSender(me, (data) => chat.typingSub.publish(data));
  chat.conv = new Conversation({
    me,
    publish: (data) => chat.sub.publish(data),
    onChange: (kind) => {
      if (chat === selected && (kind === 'typing' || kind === 'message')) typingLine(chat.conv, ui.typing);
      renderItem(chat);
      if (kind === 'message') resort();
      if (kind === 'message' || kind === 'unread') renderTotals();
    },
  });
  chat.conv.setEmptyText(`No messages yet. Say hello to ${chat.name}!`);

  chat.dot = el('span', { class: 'dot', 'data-testid': 'presence', 'data-online': 'false' });
  chat.nameNode = el('span', { class: 'ci-name' });
  chat.timeNode = el('time', { class: 'ci-time' });
  chat.preview = el('span', { class: 'ci-preview' });
  chat.badge = el('span', { class: 'badge zero', 'data-testid': 'unread' });
  chat.flag = el('span', { class: 'ci-flag', 'data-testid': 'handoff-flag', text: 'handoff', title: 'the bot handed this chat to the agents', hidden: true });
  chat.item = el('button', {
    type: 'button',
    class: 'chat-item',
    'data-testid': 'chat-item',
    'data-customer': customer,
    onclick: () => select(chat),
  },
  chat.dot,
  el('span', { class: 'ci-main' }, el('span', { class: 'ci-top' }, chat.nameNode, chat.flag, chat.timeNode),
    chat.preview),
  chat.badge);

  bindChat(chat.sub, chat.conv, {
    onSubscribed: () => {
      chat.sub.presence().then((res) => {
        chat.presence = new Map(Object.entries(res.clients || {}).map(([client, ci]) => [client, ci.user]));
        renderItem(chat);
      }).catch((err) => console.warn('presence', chat.channel, err));
      if (chat === selected) chat.conv.setVisible(pageVisible());
    },
  });
  chat.sub.on('join', (ctx) => {
    chat.presence.set(ctx.info.client, ctx.info.user);
    renderItem(chat);
  });
  chat.sub.on('leave', (ctx) => {
    chat.presence.delete(ctx.info.client);
    if (!isOnline(chat)) chat.conv.stopTyping(customer);
    renderItem(chat);
  });
  chat.sub.on('error', (ctx) => console.warn('subscription', chat.channel, ctx.error));
  chat.typingSub.on('publication', (ctx) => chat.conv.typing(ctx.data));

  chats.set(channel, chat);
  if (info.handed_off) markHandedOff(chat);
  ui.chatList.appendChild(chat.item);
  renderItem(chat);
  resort();
  renderTotals();
  chat.sub.subscribe();
  chat.typingSub.subscribe();
  return chat;
}

function select(chat) {
  if (selected === chat) {
    chat.conv.setVisible(pageVisible());
    ui.input.focus();
    return;
  }
  if (selected) {
    selected.conv.setVisible(false);
    selected.item.classList.remove('active');
    selected.item.removeAttribute('aria-current');
    selected.conv.list.remove();
  }
  selected = chat;
  chat.item.classList.add('active');
  chat.item.setAttribute('aria-current', 'true');
  ui.paneEmpty.hidden = true;
  ui.paneChat.hidden = false;
  ui.slot.appendChild(chat.conv.list);
  ui.selId.textContent = chat.order !== null ? `${chat.customer} · order #${chat.order}` : chat.customer;
  if (chat.order !== null) ui.orderNumber.value = String(chat.order); // the shop backend's order of this chat
  ui.selSince.textContent = `chat opened ${clock(chat.openedAt * 1000)}`;
  ui.pushResult.textContent = '';
  typingLine(chat.conv, ui.typing);
  chat.conv.setVisible(pageVisible());
  chat.conv.scrollToEnd();
  renderItem(chat);
  renderTotals();
  ui.input.value = '';
  ui.input.focus();
}

function refreshVisibility() {
  if (selected) selected.conv.setVisible(pageVisible());
}

// ---------------------------------------------------------------- agents online

function watchAgents(sub) {
  let clients = new Map(); // client id -> user
  const render = () => {
    const n = new Set(clients.values()).size;
    ui.agentsOnline.textContent = String(n);
    ui.agentsLabel.textContent = n === 1 ? 'agent online' : 'agents online';
  };
  sub.on('subscribed', () => {
    sub.presence().then((res) => {
      clients = new Map(Object.entries(res.clients || {}).map(([client, ci]) => [client, ci.user]));
      render();
    }).catch((err) => {
      console.warn('agents presence', err);
      sub.presenceStats().then((s) => {
        ui.agentsOnline.textContent = String(s.numUsers);
      }).catch(() => {});
    });
  });
  sub.on('join', (ctx) => {
    clients.set(ctx.info.client, ctx.info.user);
    render();
  });
  sub.on('leave', (ctx) => {
    clients.delete(ctx.info.client);
    render();
  });
  sub.on('error', (ctx) => console.warn('subscription', sub.channel, ctx.error));
}

// ---------------------------------------------------------------- main

function agentName() {
  const fromQuery = (queryParam('name') || '').trim();
  const stored = session.stored();
  if (fromQuery) return { name: fromQuery, user: stored.name === fromQuery ? stored.user : undefined };
  if (typeof stored.name === 'string' && stored.name.trim()) return { name: stored.name, user: stored.user };
  return { name: DEFAULT_NAME, user: undefined };
}

function setupRename() {
  ui.agentName.addEventListener('dblclick', rename);
  $('#rename').addEventListener('click', rename);
  function rename() {
    const input = el('input', { class: 'name-input', value: me.name, maxlength: '40', 'aria-label': 'Agent name' });
    const form = el('form', { class: 'name-form' }, input);
    ui.agentName.replaceWith(form);
    input.focus();
    input.select();
    let done = false;
    const finish = (save) => {
      if (done) return;
      done = true;
      form.replaceWith(ui.agentName);
      const value = input.value.trim();
      if (save && value && value !== me.name) {
        const url = new URL(window.location.href);
        url.searchParams.set('name', value);
        window.location.assign(url.toString());
      }
    };
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      finish(true);
    });
    input.addEventListener('blur', () => finish(false));
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') finish(false);
    });
  }
}

// {type: 'handoff', channel, customer, name, order, conversation, ts} from the shop's bot: the
// chat (added if new), flagged, with the conversation so far (the chat's history has it too).
function handOff(d) {
  if (typeof d.channel !== 'string' || !d.channel) return;
  const chat = addChat({ customer: d.customer, name: d.name, chat: d.channel, typing: d.typing, order: d.order,
    opened_at: Number(d.ts) / 1000 || undefined });
  if (!chat) return;
  if (Array.isArray(d.conversation)) chat.conv.loadHistory(d.conversation.map((m) => ({ data: m })));
  markHandedOff(chat, Number(d.ts) || undefined);
}

async function loadChats() {
  try {
    const res = await session.authed('/demo/api/chats', { method: 'GET' });
    for (const info of res.chats || []) addChat(info);
  } catch (err) {
    console.warn('chats', err);
  }
}

async function main() {
  session = new Session('agent', STORE);
  const wanted = agentName();
  ui.agentName.textContent = wanted.name;
  await session.login(wanted.name, wanted.user, () => {
    ui.connState.textContent = 'connecting';
  });
  me = { user: session.user, name: session.name, role: 'agent' };
  ui.agentName.textContent = me.name;
  ui.agentName.title = me.user;
  relay.user = me.user;
  relay.session = session;
  relay.chats = chats;

  centrifuge = session.connect();
  relay.centrifuge = centrifuge;
  trackConnection(centrifuge, ui.connState);

  const ch = session.channels;
  const agentsSub = centrifuge.newSubscription(ch.agents || 'agents:online', subOptions({
    joinLeave: true, // ask for join/leave pushes (the namespace may not force them)
  }));
  watchAgents(agentsSub);

  const inbox = centrifuge.newSubscription(ch.inbox || 'agents:inbox', subOptions());
  inbox.on('publication', (ctx) => {
    const d = ctx.data;
    if (d && d.type === 'chat_opened') addChat(d);
    else if (d && d.type === 'handoff') handOff(d);
  });
  // (re)subscribed: the backend's list is the truth (also covers a failed recovery)
  inbox.on('subscribed', () => loadChats());
  inbox.on('error', (ctx) => console.warn('subscription', inbox.channel, ctx.error));

  const sale = centrifuge.newSubscription(ch.sale || 'sale:flash');
  const showSale = (pub) => {
    if (!pub || !pub.data || typeof pub.data.text !== 'string') return;
    ui.currentSale.hidden = false;
    ui.currentSale.querySelector('.current-sale-text').textContent = pub.data.text;
    ui.currentSale.querySelector('time').textContent = clock(pub.data.ts);
  };
  sale.on('publication', showSale);
  sale.on('subscribed', () => {
    sale.history({ limit: 1, reverse: true })
      .then((res) => chronological(res.publications).forEach(showSale))
      .catch(() => {});
  });

  // composer
  ui.input.addEventListener('input', () => {
    if (selected && ui.input.value.trim()) selected.typingOut.ping();
  });
  ui.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (ui.composer.requestSubmit) ui.composer.requestSubmit();
      else ui.composer.dispatchEvent(new Event('submit', { cancelable: true }));
    }
  });
  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = ui.input.value.trim();
    if (!text || !selected) return;
    ui.input.value = '';
    selected.typingOut.reset();
    selected.conv.send(text.slice(0, 2000));
    ui.input.focus();
  });

  // order status push for the selected chat's customer
  ui.orderForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!selected) return;
    const chat = selected;
    const order = ui.orderNumber.value.trim() || 'NW-1042';
    const status = ui.orderSelect.value;
    try {
      await session.authed('/demo/api/order-status', { body: { customer: chat.customer, order, status } });
      flash(ui.pushResult, `Sent: ${order} → ${status}`, true);
      chat.conv.system(`You set order ${order} to “${status}”`, { kind: 'order' });
    } catch (err) {
      flash(ui.pushResult, `Failed: ${err.message}`, false);
    }
  });

  // flash sale announcement to every shopper
  ui.saleForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = ui.saleText.value.trim();
    if (!text) {
      ui.saleText.focus();
      return;
    }
    try {
      await session.authed('/demo/api/sale', { body: { text } });
      ui.saleText.value = '';
      flash(ui.saleResult, 'Announced', true);
    } catch (err) {
      flash(ui.saleResult, `Failed: ${err.message}`, false);
    }
  });

  document.addEventListener('visibilitychange', refreshVisibility);
  window.addEventListener('focus', refreshVisibility);
  setupRename();

  agentsSub.subscribe();
  inbox.subscribe();
  sale.subscribe();
  centrifuge.connect();
}

main().catch((err) => {
  console.error(err);
  ui.connState.textContent = 'disconnected';
});
