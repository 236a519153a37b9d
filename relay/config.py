"""relay's one typed configuration: every limit and default, in one place.

Sources, later ones win: defaults < TOML file < ``RELAY_*`` environment <
command-line flags. ``load()`` raises ``ConfigError`` naming every bad key or
value. Nested keys in the environment use ``__``:
``RELAY_WS_PORT=9000``, ``RELAY_CHANNEL__PRESENCE=true``,
``RELAY_NAMESPACES__CHAT__HISTORY_SIZE=100``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.config_sources import ConfigError, apply, env_tree, read_toml

__all__ = ["Config", "ChannelOptions", "ACCESS_MODES", "SUBSCRIBE_MODES", "ConfigError", "load", "from_mapping",
           "NAMESPACE_RE"]

# RELAY_* variables that are not config keys (build and test switches)
NON_CONFIG_ENV = frozenset({"RELAY_PUREPYTHON", "RELAY_EXPECT_COMPILED", "RELAY_DEBUG_BUILD", "RELAY_DEPS_UNLOCKED"})

# who may do an operation in a namespace, from strictest to widest (docs/protocol.md, "Permissions")
ACCESS_MODES = ("none", "token", "subscribers", "authenticated", "anonymous")
SUBSCRIBE_MODES = ("token", "authenticated", "anonymous")
DELTA_TYPES = ("fossil",)  # subscribe "delta" values relay speaks
# keys of earlier versions, named in the error so an old config file says what to write instead
_RENAMED = {
    "allow_subscribe": "subscribe_access = 'token' (was allow_subscribe = false)",
    "allow_anonymous": "subscribe_access = 'anonymous' (was allow_anonymous = true)",
    "allow_publish": "publish_access = 'subscribers' (was allow_publish = true)",
    "allow_history": "history_access = 'none' (was allow_history = false)",
}

NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


#: the namespaces the shop demo (relay/demo) publishes and subscribes in; deploy/relay.dev.toml has them
DEMO_NAMESPACES = ("support", "typing", "orders", "sale", "agents")


@dataclass
class ChannelOptions:
    """Options of a channel namespace (``[channel]`` applies to names without a namespace)."""

    subscribe_access: str = _doc("who may subscribe: 'authenticated' (connections with a user), 'anonymous' "
                                 "(any connection) or 'token' (only with a subscription token); user-limited "
                                 "'#' channels still check the user; a subscription token always grants",
                                 default="authenticated")
    publish_access: str = _doc("who may publish from a client: 'none' (only the server API), 'token' "
                               "(subscribers whose subscription came from a token), 'subscribers', "
                               "'authenticated' (any connection with a user, subscribed or not) or 'anonymous'",
                               default="none")
    presence: bool = _doc("track who is subscribed (presence, presence_stats, join/leave)", default=False)
    presence_access: str = _doc("who may call presence and presence_stats (same modes as publish_access)",
                                default="subscribers")
    join_leave: bool = _doc("send join/leave pushes to subscribers who ask for them", default=False)
    force_push_join_leave: bool = _doc("send join/leave pushes to every subscriber", default=False)
    history_size: int = _doc("publications kept per channel (0: no history)", default=0)
    history_ttl: float = _doc("seconds a publication stays in history", default=300.0)
    force_recovery: bool = _doc("subscriptions are recoverable: clients get offsets and recover gaps",
                                default=False)
    history_access: str = _doc("who may call history (same modes as publish_access)", default="subscribers")
    allowed_delta_types: list[str] = _doc(
        "delta compressions a subscriber may ask for (Centrifugo's subscribe delta): [\"fossil\"] or [] (none); "
        "given to positioned or recoverable subscriptions over WebSocket", default_factory=list)
    delta_publish: bool = _doc("publications of this namespace go to delta subscribers as fossil deltas from the "
                               "previous one (when smaller); without it they get every publication whole",
                               default=False)
    proxy_subscribe: bool = _doc("ask the backend ([proxy] subscribe_endpoint) before a subscribe without a "
                                 "subscription token; it may refuse, or add data and an expiry; it cannot allow "
                                 "what subscribe_access or a '#' user list refuses", default=False)
    proxy_publish: bool = _doc("ask the backend ([proxy] publish_endpoint) before a client publish; it may "
                               "refuse it or replace its data", default=False)
    proxy_sub_refresh: bool = _doc("when a proxied subscription's expire_at comes, ask the backend "
                                   "([proxy] sub_refresh_endpoint) to prolong it", default=False)
    redact_cards: bool = _doc("replace payment-card numbers (13-19 digits, a card scheme's prefix, Luhn-valid) "
                              "in client publications before anything sees them (docs/redaction.md)",
                              default=False)
    redact_patterns: list[str] = _doc("more regular expressions replaced in client publications",
                                      default_factory=list)
    redact_replacement: str = _doc("what a redacted card number or pattern match becomes", default="[redacted]")
    support_chat: bool = _doc("a support chat namespace: relay measures the time from a customer's message to "
                              "the first reply by someone else (relay_first_response_seconds), counts chats "
                              "waiting too long and can call an escalation webhook (docs/support.md)",
                              default=False)
    support_wait_threshold: float = _doc("seconds after which a waiting chat counts in "
                                         "relay_support_chats_waiting", default=60.0)
    support_escalate_after: float = _doc("seconds a chat may wait before relay POSTs it to "
                                         "support_escalation_url, once per wait (0: never)", default=0.0)
    support_server_replies: bool = _doc("a publication without a user (server API, outbox: the shop's backend "
                                        "or its bot) answers a waiting chat; false: only another user's "
                                        "message does", default=True)
    support_wait_expire: float = _doc("seconds after which a chat still waiting, or quiet, is forgotten (the "
                                      "customer left): no observation, no longer counted", default=86400.0)
    support_skip_types: list[str] = _doc("publications whose data is an object with one of these 'type' values "
                                         "(read receipts, typing events) neither start nor answer a wait",
                                         default_factory=lambda: ["receipt", "typing"])
    lane: str = _doc("priority lane of this namespace's publications and join/leave pushes: 'chat' (never "
                     "dropped), 'update' (dropped past client_queue_update_limit) or 'bulk' (dropped first, past "
                     "client_queue_bulk_limit); a dropped publication unsubscribes its channel with 2500 so the "
                     "SDK resubscribes and recovers (docs/lanes.md); a server API publish may name its own",
                     default="chat")
    pace_ms: int = _doc("spread each publication's fan-out over this many milliseconds, every connection at its "
                        "own stable moment in the window, when the channel has at least pace_min_subscribers "
                        "on the node (docs/pacing.md); 0: at once; a server API publish may name its own",
                        default=0)


#: publication classes (priority lanes), most important first: relay.core.LANES maps them to the core's
#: keys of earlier versions per table, for the error (relay.config_sources.apply)
RENAMED = {ChannelOptions: _RENAMED}

LANE_NAMES = ("chat", "update", "bulk")
#: the longest pacing window (paced broadcasts), in milliseconds
MAX_PACE_MS = 600_000

#: the proxy hooks, in the order of Centrifugo's documentation
PROXY_HOOKS = ("connect", "refresh", "subscribe", "sub_refresh", "publish", "rpc")
#: headers forwarded to the backend unless [proxy] http_headers says otherwise (Centrifugo's common choice)
DEFAULT_PROXY_HEADERS = ("Cookie", "Authorization", "User-Agent", "X-Real-Ip", "X-Forwarded-For", "Origin",
                         "Accept-Language")


@dataclass
class ProxyOptions:
    """The event proxy: HTTP hooks to the shop's backend, in Centrifugo's HTTP proxy format."""

    connect_endpoint: str = _doc("URL asked to authenticate a client that connects without a token (its "
                                 "forwarded headers and cookies); empty: tokens only", default="")
    refresh_endpoint: str = _doc("URL asked to prolong a proxy-authenticated connection at its expire_at; "
                                 "empty: such connections end with 3005 at expire_at", default="")
    subscribe_endpoint: str = _doc("URL of the subscribe hook (namespaces with proxy_subscribe)", default="")
    sub_refresh_endpoint: str = _doc("URL of the sub_refresh hook (namespaces with proxy_sub_refresh)",
                                     default="")
    publish_endpoint: str = _doc("URL of the publish hook (namespaces with proxy_publish)", default="")
    rpc_endpoint: str = _doc("URL for rpc methods that no rpc_routes pattern matches; empty: those "
                             "methods answer 104 method not found (with no rpc_endpoint and no rpc_routes "
                             "every rpc answers 108 not available, as in Centrifugo)", default="")
    rpc_routes: dict[str, str] = _doc("rpc method pattern (fnmatch, e.g. 'orders.*') -> URL; the first "
                                      "matching pattern in file order wins", default_factory=dict)
    timeout: float = _doc("seconds a hook request may take (connect, queue wait excluded)", default=1.0)
    max_in_flight: int = _doc("requests of one hook in flight at once (each hook has its own pool)",
                              default=64)
    queue_size: int = _doc("requests of one hook waiting for a free slot; beyond it requests are shed at once",
                           default=1000)
    queue_deadline: float = _doc("seconds a request may wait for a free slot before it is shed", default=2.0)
    http_headers: list[str] = _doc("client handshake headers forwarded to the backend (allow-list)",
                                   default_factory=lambda: list(DEFAULT_PROXY_HEADERS))
    cookies: list[str] = _doc("cookie names forwarded in the Cookie header (allow-list; empty: the whole "
                              "Cookie header when http_headers has it)", default_factory=list)
    max_response_size: int = _doc("bytes a hook response may have; larger is a failure", default=65536)
    connect_failure_code: int = _doc("0: a failed connect hook answers the temporary internal error 100 (the "
                                     "SDKs retry with backoff); 3000-4999: disconnect with that code instead",
                                     default=0)
    shed_retry_after: float = _doc("mean seconds advised to clients shed by a full connect queue (jittered "
                                   "0.5-1.5x in the disconnect reason)", default=5.0)

    def endpoint(self, hook: str) -> str:
        return getattr(self, f"{hook}_endpoint")


@dataclass
class Config:
    host: str = _doc("address the listeners bind to", default="127.0.0.1")
    ws_port: int = _doc("WebSocket port (0: disabled)", default=8000)
    ws_path: str = _doc("WebSocket endpoint path", default="/connection/websocket")
    ws_echo_path: str = _doc("a WebSocket echo endpoint for protocol conformance runs (Autobahn); "
                             "empty: none (never enable in production)", default="")
    tcp_port: int = _doc("raw TCP (msgpack) port (0: disabled)", default=8001)
    api_port: int = _doc("HTTP server API, /healthz, /readyz port (0: disabled)", default=8002)
    tls_cert_file: str = _doc("PEM certificate (chain): all listeners serve TLS (wss://, TLS TCP, https://)",
                              default="")
    tls_key_file: str = _doc("PEM private key of tls_cert_file", default="")
    node_name: str = _doc("name shown in info and logs (default: host name)", default="")
    log_level: str = _doc("DEBUG, INFO, WARNING or ERROR", default="INFO")
    log_format: str = _doc("'json' (one object per line), 'text', or 'auto' (text on a terminal, else JSON)",
                           default="auto")
    log_rate: float = _doc("log lines per second of one event kind; beyond it (and log_burst) lines are "
                           "dropped and a later line says how many, so a flood of bad clients cannot fill "
                           "the disk", default=10.0)
    log_burst: int = _doc("log lines of one event kind allowed at once above log_rate", default=50)
    metrics: bool = _doc("serve Prometheus metrics at /metrics on the API port", default=True)
    metrics_interval: float = _doc("seconds between updates of the exported metrics (with several workers, "
                                   "how old a worker's figures in a scrape may be)", default=1.0)

    workers: int = _doc("worker processes sharing the ports (SO_REUSEPORT); 0 = one per CPU core (auto)",
                        default=1)
    reuse_port: bool = _doc("bind with SO_REUSEPORT (set for each worker when workers > 1)", default=False)
    broker: str = _doc("'memory' (one process, the default) or 'redis' (many workers and nodes)",
                       default="memory")
    redis_urls: list[str] = _doc("Redis instances; channels are spread over them by consistent hash",
                                 default_factory=lambda: ["redis://127.0.0.1:6379/0"])
    redis_cluster: bool = _doc("redis_urls are seed nodes of one Redis Cluster (sharded pub/sub, Redis 7+)",
                               default=False)
    redis_prefix: str = _doc("prefix of every Redis key and pub/sub channel", default="relay")
    redis_pubsub_connections: int = _doc("pub/sub connections per Redis instance", default=2)
    outbox_dsn: str = _doc("PostgreSQL DSN of the outbox table relay consumes server API commands from "
                           "(postgresql://user@host/db); empty: no outbox consumer", default="")
    outbox_table: str = _doc("the outbox table (`relay outbox init` creates it; SQL in deploy/outbox.sql)",
                             default="relay_outbox")
    outbox_partitions: int = _doc("partitions of the outbox (rows carry partition 0..N-1); nodes on one table "
                                  "split them, each partition in order on one node at a time", default=16)
    outbox_batch_size: int = _doc("rows claimed per batch", default=100)
    outbox_poll_interval: float = _doc("seconds between polls when no NOTIFY arrives (the fallback)", default=1.0)
    redis_unsubscribe_delay: float = _doc("seconds before a node leaves a Redis channel it no longer needs "
                                          "(a channel that flaps is not re-subscribed each time)", default=1.0)
    broker_ping_interval: float = _doc("seconds between liveness checks of every broker connection, pub/sub ones "
                                       "included (a PING on each; a Redis shard or Cluster master that misses "
                                       "them is down, docs/operations.md)", default=0.5)
    broker_ping_timeout: float = _doc("seconds a broker connection has to answer its liveness PING; a silent "
                                      "network cut is seen within about interval + 2 x timeout", default=0.8)
    broker_down_grace: float = _doc("seconds a broker shard may be down before the subscribers of its channels on "
                                    "this node get 2500 (their SDKs show 'subscribing' and retry)", default=4.0)
    broker_heal_reconnect_window: float = _doc("after a down shard is back: clients told of it that have not "
                                               "resubscribed by themselves get 3011 (reconnect) at a random moment "
                                               "within this many seconds", default=2.0)
    position_check_interval: float = _doc("seconds between checks that this node has every publication of its "
                                          "recoverable channels (Redis); a gap resyncs their subscribers",
                                          default=2.0)
    recovery_coalesce: bool = _doc("subscribes that read one channel's stream at the same time (a reconnect storm "
                                   "recovering) share one broker history read (docs/recovery.md); false: one "
                                   "read per subscribe", default=True)
    recovery_max_concurrent_reads: int = _doc("broker history reads for subscribes in flight at once on this "
                                              "process, over all channels (the others wait their turn)",
                                              default=32)
    recovery_read_interval: float = _doc("with recovery_coalesce, in a storm (subscribes of one channel piling up "
                                         "behind its read): seconds between the starts of two recovering broker reads "
                                         "of that channel, the subscribes meanwhile sharing the next one; position "
                                         "reads and a channel without contention are read at once", default=0.5)
    presence_ttl: float = _doc("seconds a presence entry lives in Redis unless refreshed", default=60.0)
    idempotency_window: float = _doc("seconds a publish idempotency_key is remembered", default=300.0)

    token_hmac_secret: str = _doc("HMAC secret for HS256/384/512 connect tokens", default="")
    token_algorithms: list[str] = _doc("JWT algorithms accepted for connect tokens (alg is pinned to these)",
                                       default_factory=lambda: ["HS256"])
    token_rsa_public_key: str = _doc("RSA public key (PEM, or a path to it) for RS256 tokens", default="")
    token_ecdsa_public_key: str = _doc("EC public key (PEM, or a path to it) for ES256 tokens", default="")
    token_jwks_file: str = _doc("JWKS file: keys chosen by the token's kid", default="")
    token_audience: str = _doc("required aud claim (empty: aud not checked)", default="")
    token_issuer: str = _doc("required iss claim (empty: iss not checked)", default="")
    allowed_origins: list[str] = _doc("browser origins allowed to open a WebSocket ('https://shop.example.com', "
                                      "'https://*.example.com', '*'); empty: the page's host must be relay's "
                                      "(403 before the upgrade)", default_factory=list)
    token_expire_grace: float = _doc("seconds a client whose token expired has to refresh before 3005",
                                     default=25.0)
    max_token_size: int = _doc("longest connect token in bytes (3500 invalid token)", default=8192)
    allow_anonymous_connect: bool = _doc("clients may connect without a token (user '')", default=False)
    subscribe_to_user_personal_channel: bool = _doc(
        "subscribe every connection with a user to its personal channel at connect ('#<user>', or "
        "'<personal_channel_namespace>:#<user>'), a server-side subscription in the connect reply, as "
        "Centrifugo's client.subscribe_to_user_personal_channel", default=False)
    personal_channel_namespace: str = _doc("the namespace of personal channels (empty: none, '#<user>')",
                                           default="")
    personal_single_connection: bool = _doc(
        "one connection per user: a new connection closes the user's others, on every node, with 3504",
        default=False)
    disallow_anonymous_connection_tokens: bool = _doc(
        "refuse a connection token without a user (no or empty 'sub'), closing with 3507; by default such a "
        "token opens an anonymous connection with its other claims, as in Centrifugo", default=False)
    api_key: str = _doc("key for the HTTP server API (X-API-Key); empty: API refuses every call",
                        default="")

    client_queue_max_size: int = _doc("bytes a connection may have queued before 3008 slow (chat publications "
                                      "and replies are refused only here)", default=1048576)
    lanes: bool = _doc("priority lanes: past the limits below a slow connection loses bulk, then update "
                       "publications (2500 'insufficient state' for their channel) instead of its chats "
                       "(false: every publication is chat)", default=True)
    client_queue_update_limit: int = _doc("queued bytes past which a connection's 'update' publications are "
                                          "dropped (0: half of client_queue_max_size)", default=0)
    client_queue_bulk_limit: int = _doc("queued bytes past which a connection's 'bulk' publications are dropped "
                                        "(0: a quarter of client_queue_max_size)", default=0)
    pace_min_subscribers: int = _doc("local subscribers a channel needs before a paced publication (pace_ms) is "
                                     "spread; smaller channels get it at once", default=1000)
    backpressure_queue_bytes: int = _doc("bytes queued for clients that do not keep up (all of them) past which "
                                         "the node refuses new publications: server API 429 with Retry-After, "
                                         "client publish error 106 (docs/backpressure.md); 0: no limit",
                                         default=268435456)
    backpressure_memory_bytes: int = _doc("resident memory of this process past which it refuses new "
                                          "publications (set it below the container's limit); 0: no limit",
                                          default=0)
    backpressure_publish_latency: float = _doc("seconds of broker publish round trip (a moving average) past "
                                               "which the node refuses new publications; 0: no limit",
                                               default=0.25)
    max_publishes_in_flight: int = _doc("publications waiting for the broker at once past which the node refuses "
                                        "new ones; 0: no limit", default=10000)
    backpressure_retry_after: float = _doc("seconds a refused server API publisher is told to wait (Retry-After: "
                                           "between this and twice it, whole seconds)", default=1.0)
    client_send_buffer: int = _doc("bytes of kernel send buffer per client socket (SO_SNDBUF; the kernel doubles "
                                   "it); 0: the kernel's autotuning, which on fast links lets megabytes wait in "
                                   "the kernel, unseen by lanes, the queue cap and backpressure", default=0)
    client_write_high_water: int = _doc("transport buffer bytes before writes pause", default=65536)
    client_write_delay: float = _doc("seconds to hold a connection's outbound queue so more messages share one "
                                     "frame and one write (0: write at the end of each loop iteration)",
                                     default=0.0)
    ping_interval: float = _doc("seconds between server pings", default=25.0)
    pong_timeout: float = _doc("seconds a client has to answer a ping before 3012 no pong", default=10.0)
    client_stale_timeout: float = _doc("seconds to send connect after the socket opens (3502 stale)",
                                       default=10.0)
    handshake_timeout: float = _doc("seconds to finish the WebSocket handshake", default=5.0)
    max_handshakes_per_ip: int = _doc("WebSocket handshakes in progress from one IP address (0: no limit); past "
                                      "it the oldest is closed, so half-open sockets cannot lock out the real "
                                      "clients behind the same address, whose handshake takes one round trip. "
                                      "Apart from max_connections_per_ip, which counts established connections",
                                      default=2048)
    max_ws_message_size: int = _doc("largest WebSocket message a client may send (1009)", default=65536)
    max_ws_fragments: int = _doc("most frames one WebSocket message may come in (1009): a message is reassembled "
                                 "in one buffer, and a peer cannot keep one open with endless empty fragments",
                                 default=128)
    max_tcp_frame_size: int = _doc("largest raw TCP frame a client may send (3501)", default=65536)
    max_handshake_size: int = _doc("largest WebSocket handshake request in bytes (431)", default=8192)
    max_handshake_headers: int = _doc("most headers in a WebSocket handshake (431)", default=64)
    client_command_rate: float = _doc("commands per second a connection may send (111 too many requests)",
                                      default=100.0)
    client_command_burst: int = _doc("commands a connection may send at once above its rate; refusing as "
                                     "many again in a row disconnects it (3013)", default=200)
    client_publish_rate: float = _doc("publications per second a connection may make (111)", default=20.0)
    client_publish_burst: int = _doc("publications a connection may make at once above its rate", default=40)
    max_connections: int = _doc("connections this process accepts (0: 90 % of the open-file limit); over it a "
                                "WebSocket handshake gets 503 and a TCP client 3011 'server full'", default=0)
    max_connections_per_ip: int = _doc("connections from one IP address (0: unlimited); over it 429 / 3504",
                                       default=1000)
    max_connections_per_user: int = _doc("connections of one user (0: unlimited); over it 3504 connection limit",
                                         default=100)
    max_channels_per_connection: int = _doc("subscriptions per connection (106 limit exceeded)", default=128)
    max_channel_length: int = _doc("longest channel name in bytes (107 bad request)", default=255)
    max_commands_per_message: int = _doc("commands in one WebSocket message (3501)", default=100)
    api_max_body_size: int = _doc("largest HTTP server API request body in bytes (413)", default=1048576)
    api_max_batch_commands: int = _doc("commands in one server API batch request; more: 107", default=1000)
    api_batch_concurrency: int = _doc("commands of a parallel batch in flight at once", default=64)
    hub_shards: int = _doc("channel shards in the hub", default=64)
    history_meta_ttl: float = _doc("seconds a channel's stream position (epoch) outlives its last publish",
                                   default=86400.0)
    shutdown_timeout: float = _doc("seconds a closing connection has to finish the close handshake before it "
                                   "is cut", default=5.0)
    drain_window: float = _doc("on SIGTERM: seconds over which connected clients are disconnected with 3001 "
                               "'shutdown' (reconnect), each at a random moment so they do not all reconnect "
                               "elsewhere at once; the process exits within drain_window + 5 s", default=10.0)
    demo: bool = _doc("serve the shop chat demo (/demo/shop, /demo/agent) on the API port; its /demo/api/token "
                      "mints tokens for anyone, so never in production", default=False)
    admin: bool = _doc("serve the read-only admin page /admin on the API port (its figures need the API key "
                       "or an admin token from `relay token --admin`)", default=True)
    support_escalation_url: str = _doc("http(s) URL relay POSTs a support chat to (JSON: channel, customer, "
                                       "waiting_since, waited_seconds, namespace) when it has waited "
                                       "support_escalate_after; exactly one node calls it (docs/support.md)",
                                       default="")
    support_escalation_timeout: float = _doc("seconds one escalation request may take; a failed one is tried "
                                             "3 times in all", default=5.0)

    proxy: ProxyOptions = _doc("event proxy to the backend ([proxy] table)", default_factory=ProxyOptions)
    channel: ChannelOptions = _doc("options for channels without a namespace", default_factory=ChannelOptions)
    namespaces: dict[str, ChannelOptions] = _doc("options per namespace ('ns:' prefix)", default_factory=dict)

    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    def lane_limits(self) -> tuple[int, int]:
        """Queued bytes past which (bulk, update) publications are dropped; the cap itself with lanes off."""
        cap = self.client_queue_max_size
        if not self.lanes:
            return cap, cap
        return (self.client_queue_bulk_limit or cap // 4, self.client_queue_update_limit or cap // 2)

    def personal_channel(self, user: str) -> str:
        """A user's personal channel (subscribe_to_user_personal_channel)."""
        ns = self.personal_channel_namespace
        return f"{ns}:#{user}" if ns else f"#{user}"

    def channel_options(self, channel: str) -> ChannelOptions | None:
        """Options for ``channel``, or None when its namespace is not configured."""
        ns, sep, _ = channel.partition(":")
        if not sep:
            return self.channel
        return self.namespaces.get(ns)

    def validate(self) -> list[str]:
        errs: list[str] = []
        for name in ("ws_port", "tcp_port", "api_port"):
            v = getattr(self, name)
            if not 0 <= v <= 65535:
                errs.append(f"{name}: {v} is not a port (0-65535)")
        if not self.ws_path.startswith("/"):
            errs.append("ws_path: must start with '/'")
        positive = ("client_queue_max_size", "client_write_high_water", "max_ws_message_size", "max_ws_fragments",
                    "max_tcp_frame_size", "max_handshake_size", "max_handshake_headers",
                    "max_channels_per_connection", "max_channel_length", "max_commands_per_message",
                    "api_max_body_size", "api_max_batch_commands", "api_batch_concurrency",
                    "hub_shards", "ping_interval", "pong_timeout", "client_stale_timeout",
                    "handshake_timeout", "history_meta_ttl", "shutdown_timeout",
                    "client_command_rate", "client_command_burst", "client_publish_rate", "client_publish_burst",
                    "token_expire_grace")
        for name in positive:
            if getattr(self, name) <= 0:
                errs.append(f"{name}: must be > 0")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            errs.append("tls_cert_file, tls_key_file: give both or neither")
        for name in ("tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                errs.append(f"{name}: {path!r} is not a readable file")
        if self.workers < 0:
            errs.append("workers: must be >= 0 (0 = one per CPU core)")
        if self.worker_count() > 1 and self.broker == "memory":
            errs.append(f"workers: {self.worker_count()} workers need broker = 'redis' (the memory broker lives "
                        "inside one process, so workers would not see each other's clients); set broker = 'redis' "
                        "and redis_urls, or run workers = 1")
        if self.broker not in ("memory", "redis"):
            errs.append(f"broker: {self.broker!r} is not 'memory' or 'redis'")
        if self.broker == "redis" and not self.redis_urls:
            errs.append("redis_urls: at least one Redis URL is needed with broker = 'redis'")
        for u in self.redis_urls:
            if not u.startswith(("redis://", "rediss://", "unix://")):
                errs.append(f"redis_urls: {u!r} is not a redis://, rediss:// or unix:// URL")
        for name in ("redis_pubsub_connections", "presence_ttl", "idempotency_window", "position_check_interval",
                     "broker_ping_interval", "broker_ping_timeout"):
            if getattr(self, name) <= 0:
                errs.append(f"{name}: must be > 0")
        for name in ("broker_down_grace", "broker_heal_reconnect_window"):
            if getattr(self, name) < 0:
                errs.append(f"{name}: must be >= 0")
        if self.redis_unsubscribe_delay < 0:
            errs.append("redis_unsubscribe_delay: must be >= 0")
        if not 1 <= self.recovery_max_concurrent_reads <= 10000:
            errs.append("recovery_max_concurrent_reads: must be between 1 and 10000")
        if not 0 <= self.recovery_read_interval <= 5:
            errs.append("recovery_read_interval: must be between 0 and 5 seconds")
        for name in ("backpressure_queue_bytes", "backpressure_memory_bytes", "backpressure_publish_latency",
                     "max_publishes_in_flight"):
            if getattr(self, name) < 0:
                errs.append(f"{name}: must be >= 0 (0: no limit)")
        if not 0 < self.backpressure_retry_after <= 3600:
            errs.append("backpressure_retry_after: must be in (0, 3600] seconds")
        if self.client_send_buffer < 0:
            errs.append("client_send_buffer: must be >= 0 (0: the kernel's autotuning)")
        if self.pace_min_subscribers < 0:
            errs.append("pace_min_subscribers: must be >= 0")
        bulk, update = self.lane_limits()
        if self.client_queue_bulk_limit < 0 or self.client_queue_update_limit < 0 \
                or not bulk <= update <= self.client_queue_max_size:
            errs.append("client_queue_bulk_limit <= client_queue_update_limit <= client_queue_max_size "
                        f"(0: the default share), got {bulk}, {update}, {self.client_queue_max_size}")
        if not 0 <= self.client_write_delay <= 1:
            errs.append("client_write_delay: must be between 0 and 1 second")
        if self.log_format not in ("auto", "json", "text"):
            errs.append(f"log_format: {self.log_format!r} is not 'auto', 'json' or 'text'")
        for name in ("log_rate", "log_burst", "metrics_interval"):
            if getattr(self, name) <= 0:
                errs.append(f"{name}: must be > 0")
        if self.drain_window < 0:
            errs.append("drain_window: must be >= 0 (0: disconnect everyone at once)")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            errs.append(f"log_level: {self.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
        from relay.auth import SUPPORTED_ALGORITHMS

        for alg in self.token_algorithms:
            if alg not in SUPPORTED_ALGORITHMS:
                errs.append(f"token_algorithms: {alg!r} is not one of {', '.join(SUPPORTED_ALGORITHMS)}")
        families = {a[:2] for a in self.token_algorithms}
        if "HS" in families and not self.token_hmac_secret and not self.allow_anonymous_connect \
                and families == {"HS"}:
            errs.append("token_hmac_secret: required unless allow_anonymous_connect = true")
        for family, option in (("RS", "token_rsa_public_key"), ("ES", "token_ecdsa_public_key")):
            if family in families and not getattr(self, option) and not self.token_jwks_file:
                errs.append(f"token_algorithms: {family}* tokens need {option} or token_jwks_file")
        for name in ("max_connections", "max_connections_per_ip", "max_connections_per_user", "max_handshakes_per_ip"):
            if getattr(self, name) < 0:
                errs.append(f"{name}: must be >= 0 (0: {'automatic' if name == 'max_connections' else 'no limit'})")
        if self.max_token_size <= 0:
            errs.append("max_token_size: must be > 0")
        for ns, opts in [("channel", self.channel)] + [(f"namespaces.{k}", v) for k, v in self.namespaces.items()]:
            if ns.startswith("namespaces.") and not NAMESPACE_RE.match(ns[11:]):
                errs.append(f"{ns}: namespace names are 1-64 of A-Z a-z 0-9 _ - .")
            if opts.history_size < 0:
                errs.append(f"{ns}.history_size: must be >= 0")
            if opts.history_ttl <= 0:
                errs.append(f"{ns}.history_ttl: must be > 0")
            if opts.subscribe_access not in SUBSCRIBE_MODES:
                errs.append(f"{ns}.subscribe_access: {opts.subscribe_access!r} is not one of "
                            f"{', '.join(SUBSCRIBE_MODES)}")
            for op in ("publish_access", "history_access", "presence_access"):
                if getattr(opts, op) not in ACCESS_MODES:
                    errs.append(f"{ns}.{op}: {getattr(opts, op)!r} is not one of {', '.join(ACCESS_MODES)}")
            if opts.force_recovery and opts.history_size == 0:
                errs.append(f"{ns}.force_recovery: needs history_size > 0")
            unknown = [t for t in opts.allowed_delta_types if t not in DELTA_TYPES]
            if unknown:
                errs.append(f"{ns}.allowed_delta_types: {unknown[0]!r} is not one of {', '.join(DELTA_TYPES)}")
            if opts.delta_publish and not opts.allowed_delta_types:
                errs.append(f"{ns}.delta_publish: needs allowed_delta_types = [\"fossil\"]")
            for i, pattern in enumerate(opts.redact_patterns):
                try:
                    re.compile(pattern)
                except re.error as e:
                    errs.append(f"{ns}.redact_patterns[{i}]: not a regular expression ({e})")
            if not 0 <= opts.pace_ms <= MAX_PACE_MS:
                errs.append(f"{ns}.pace_ms: must be between 0 and {MAX_PACE_MS} (10 minutes)")
            if opts.lane not in LANE_NAMES:
                errs.append(f"{ns}.lane: {opts.lane!r} is not one of {', '.join(LANE_NAMES)}")
            if len(opts.redact_replacement) > 64:
                errs.append(f"{ns}.redact_replacement: at most 64 characters")
        px = self.proxy
        for hook in PROXY_HOOKS:
            url = px.endpoint(hook)
            if url and not re.match(r"^https?://[^\s/]+", url):
                errs.append(f"proxy.{hook}_endpoint: an http:// or https:// URL, got {url!r}")
        for pattern, url in px.rpc_routes.items():
            if not re.match(r"^https?://[^\s/]+", url):
                errs.append(f"proxy.rpc_routes.{pattern}: an http:// or https:// URL, got {url!r}")
        if not 0 < px.timeout <= 60:
            errs.append("proxy.timeout: must be in (0, 60] seconds")
        if px.max_in_flight < 1 or px.queue_size < 0 or not px.queue_deadline >= 0:
            errs.append("proxy: max_in_flight >= 1, queue_size >= 0 and queue_deadline >= 0")
        if px.max_response_size < 1024:
            errs.append("proxy.max_response_size: must be >= 1024")
        if px.connect_failure_code and not 3000 <= px.connect_failure_code <= 4999:
            errs.append("proxy.connect_failure_code: 0, or a disconnect code in 3000-4999")
        if not px.shed_retry_after > 0:
            errs.append("proxy.shed_retry_after: must be > 0")
        for ns, opts in [("channel", self.channel)] + [(f"namespaces.{k}", v) for k, v in self.namespaces.items()]:
            for hook in ("subscribe", "publish", "sub_refresh"):
                if getattr(opts, f"proxy_{hook}") and not px.endpoint(hook):
                    errs.append(f"{ns}.proxy_{hook}: needs proxy.{hook}_endpoint")
        if self.outbox_partitions < 1 or self.outbox_partitions > 1024:
            errs.append("outbox_partitions: must be between 1 and 1024")
        if self.outbox_batch_size < 1 or self.outbox_batch_size > 10000:
            errs.append("outbox_batch_size: must be between 1 and 10000")
        if not self.outbox_poll_interval > 0:
            errs.append("outbox_poll_interval: must be > 0")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?", self.outbox_table):
            errs.append("outbox_table: a plain SQL identifier (optionally schema.table)")
        ns = self.personal_channel_namespace
        if ns and ns not in self.namespaces:
            errs.append(f"personal_channel_namespace: no namespace {ns!r} (add [namespaces.{ns}])")
        if self.personal_single_connection and not self.subscribe_to_user_personal_channel:
            errs.append("personal_single_connection: only with subscribe_to_user_personal_channel = true")
        errs += self._support_errors()
        missing = [ns for ns in DEMO_NAMESPACES if ns not in self.namespaces]
        if self.demo and missing:
            errs.append(f"demo: the shop demo needs the namespaces {', '.join(DEMO_NAMESPACES)}; missing "
                        f"{', '.join(missing)} (copy them from deploy/relay.dev.toml)")
        return errs

    def _support_errors(self) -> list[str]:
        """The support chat keys (docs/support.md): thresholds that make sense, a webhook when one is due."""
        errs: list[str] = []
        defaults = ChannelOptions()
        for ns, opts in [("channel", self.channel)] + [(f"namespaces.{k}", v) for k, v in self.namespaces.items()]:
            if not opts.support_chat:
                changed = [k for k in ("support_wait_threshold", "support_escalate_after", "support_server_replies",
                                       "support_wait_expire", "support_skip_types")
                           if getattr(opts, k) != getattr(defaults, k)]
                if changed:
                    errs.append(f"{ns}.{changed[0]}: only with support_chat = true")
                continue
            if ns == "channel":
                errs.append("channel.support_chat: only a namespace can be a support chat (its name labels the "
                            "metrics); use [namespaces.<name>]")
                continue
            if not opts.support_wait_threshold > 0:
                errs.append(f"{ns}.support_wait_threshold: must be > 0 seconds")
            if not opts.support_escalate_after >= 0:
                errs.append(f"{ns}.support_escalate_after: must be >= 0 seconds (0: no escalation)")
            elif opts.support_escalate_after > 0 and not self.support_escalation_url:
                errs.append(f"{ns}.support_escalate_after: needs support_escalation_url (the webhook to call)")
            if any(not t for t in opts.support_skip_types):
                errs.append(f"{ns}.support_skip_types: empty type names")
            longest = max(opts.support_wait_threshold, opts.support_escalate_after)
            if not opts.support_wait_expire > longest:
                errs.append(f"{ns}.support_wait_expire: must be longer than support_wait_threshold and "
                            f"support_escalate_after ({longest:g} s)")
        url = self.support_escalation_url
        if url and not re.match(r"^https?://[^\s/]+", url):
            errs.append(f"support_escalation_url: an http:// or https:// URL, got {url!r}")
        if not 0 < self.support_escalation_timeout <= 60:
            errs.append("support_escalation_timeout: must be in (0, 60] seconds")
        return errs


# what Kubernetes puts in every pod for a Service named "relay" (service links): not config
_K8S_SERVICE_ENV = re.compile(r"^RELAY_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
                              r"|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$")


def _not_config(name: str) -> bool:
    return name in NON_CONFIG_ENV or _K8S_SERVICE_ENV.match(name) is not None


def _checked(cfg: Config, errs: list[str]) -> Config:
    if errs:
        raise ConfigError(errs)
    errs = cfg.validate()
    if errs:
        raise ConfigError(errs)
    return cfg


def from_mapping(data: Mapping[str, Any], from_text: bool = False) -> Config:
    errs: list[str] = []
    cfg = apply(Config(), data, errs, from_text=from_text, renamed=RENAMED)
    return _checked(cfg, errs)


def load(path: str | None = None, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the config from a TOML file, the environment and flag overrides."""
    errs: list[str] = []
    cfg = apply(Config(), read_toml(path) if path else {}, errs, renamed=RENAMED)
    env = env_tree(os.environ if environ is None else environ, "RELAY_", _not_config)
    if env:
        cfg = apply(cfg, env, errs, from_text=True, renamed=RENAMED)
    if overrides:
        cfg = apply(cfg, {k: v for k, v in overrides.items() if v is not None}, errs, renamed=RENAMED)
    return _checked(cfg, errs)
