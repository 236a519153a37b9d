"""The composition root: builds the broker, node, transports and API, starts and stops them in order."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from relay import core
from relay.api.http import build_api_app
from relay.brokers.base import Broker, PresenceManager
from relay.brokers.memory import MemoryBroker, MemoryPresenceManager
from relay.config import Config
from relay.node.registry import Node
from relay.integrations.proxy import EventProxy
from relay.rules.support import SupportDesk
from relay.transports.tcp import TcpProtocol
from relay.transports.websocket import WebSocketProtocol

__all__ = ["App", "run"]

log = logging.getLogger("relay")


def build_broker(cfg: Config) -> tuple[Broker, PresenceManager]:
    if cfg.broker == "redis":
        from relay.brokers.redis import RedisBroker
        from relay.brokers.redis_presence import RedisPresenceManager

        broker = RedisBroker(cfg.redis_urls, prefix=cfg.redis_prefix, pubsub_per_instance=cfg.redis_pubsub_connections,
                             unsubscribe_delay=cfg.redis_unsubscribe_delay, node_name=cfg.node_name,
                             cluster=cfg.redis_cluster, ping_interval=cfg.broker_ping_interval,
                             ping_timeout=cfg.broker_ping_timeout)
        return broker, RedisPresenceManager(broker, ttl=cfg.presence_ttl)
    return MemoryBroker(), MemoryPresenceManager()


def build_proxy(cfg: Config) -> EventProxy | None:
    """The event proxy to the backend (relay/integrations/proxy.py), when any of its hooks is configured."""
    px = cfg.proxy
    endpoints = [px.connect_endpoint, px.refresh_endpoint, px.subscribe_endpoint, px.sub_refresh_endpoint,
                 px.publish_endpoint, px.rpc_endpoint, *px.rpc_routes.values()]
    return EventProxy(px) if any(endpoints) else None


class App:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        broker, presence = build_broker(cfg)
        self.node = Node(cfg, broker, presence, proxy=build_proxy(cfg), support=SupportDesk.for_node(cfg, broker))
        self.servers: list[asyncio.AbstractServer] = []
        self._api_runner: web.AppRunner | None = None
        self.ready = False
        self.draining = False
        self.ports: dict[str, int] = {}
        self._metrics_task: asyncio.Task | None = None

    def ssl_context(self):
        """The server TLS context when tls_cert_file is set (TLS 1.2+), else None."""
        if not self.cfg.tls_cert_file:
            return None
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cfg.tls_cert_file, self.cfg.tls_key_file)
        return ctx

    async def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        tls = self.ssl_context()
        if core.IMPORT_ERROR:
            log.error("compiled core not loaded (%s): running the pure-Python core", core.IMPORT_ERROR)
        await self.node.start()
        if self.node.support is not None:  # support chats: the waiting gauge and escalations (relay/rules/support.py)
            self.node.support.start()
        if cfg.outbox_dsn:
            from relay.integrations.outbox import OutboxConsumer

            self.node.outbox = OutboxConsumer(self.node, cfg)
            await self.node.outbox.start()
        if cfg.metrics:
            from relay.ops.metrics import Exporter

            self.node.metrics = Exporter(self.node)
            self._metrics_task = loop.create_task(self._metrics_loop())
        if cfg.ws_port:
            srv = await loop.create_server(lambda: WebSocketProtocol(self.node), cfg.host, cfg.ws_port,
                                           backlog=4096, reuse_address=True, reuse_port=cfg.reuse_port, ssl=tls)
            self.servers.append(srv)
            self.ports["ws"] = srv.sockets[0].getsockname()[1]
        if cfg.tcp_port:
            srv = await loop.create_server(lambda: TcpProtocol(self.node), cfg.host, cfg.tcp_port,
                                           backlog=4096, reuse_address=True, reuse_port=cfg.reuse_port, ssl=tls)
            self.servers.append(srv)
            self.ports["tcp"] = srv.sockets[0].getsockname()[1]
        if cfg.api_port:
            api_app = build_api_app(self.node, self.readiness)
            if cfg.demo:
                from relay.demo import add_demo_routes

                add_demo_routes(api_app, self.node)
                log.warning("demo mode is on: /demo/api/token mints tokens for anyone; never enable it in production")
            self._api_runner = web.AppRunner(api_app, access_log=None)
            await self._api_runner.setup()
            site = web.TCPSite(self._api_runner, cfg.host, cfg.api_port, reuse_address=True,
                               reuse_port=cfg.reuse_port, ssl_context=tls)
            await site.start()
            self.ports["api"] = cfg.api_port
        self.ready = True
        s = "s" if tls else ""
        log.info("relay started: core=%s broker=%s ws=%s tcp=%s api=%s", core.IMPLEMENTATION, cfg.broker,
                 f"ws{s}://{cfg.host}:{cfg.ws_port}{cfg.ws_path}" if cfg.ws_port else "off",
                 f"{cfg.host}:{cfg.tcp_port}{' (TLS)' if tls else ''}" if cfg.tcp_port else "off",
                 f"http{s}://{cfg.host}:{cfg.api_port}" if cfg.api_port else "off",
                 extra={"event": "started", "core": core.IMPLEMENTATION, "broker": cfg.broker})

    async def readiness(self) -> str:
        """'ready' (accepting connections, the broker up), or why not: 'starting', 'draining', 'broker
        unreachable' (every shard of it down). From local state only: the broker's own liveness checks
        (relay/brokers/health.py) keep it current, so probes and scrapes never wait on the broker."""
        if self.draining:
            return "draining"
        if not self.ready:
            return "starting"
        health = self.node.broker.health()
        if health and not any(health.values()):
            return "broker unreachable"
        return "ready"

    async def is_ready(self) -> bool:
        return await self.readiness() == "ready"

    async def _metrics_loop(self) -> None:
        exporter = self.node.metrics
        interval = self.cfg.metrics_interval
        while True:
            await asyncio.sleep(interval)
            state = await self.readiness()
            exporter.sync(ready=state == "ready")

    async def stop(self, drain: bool = True, hurry: asyncio.Event | None = None) -> None:
        """Shut down. With ``drain``: readiness turns false, the listeners stop accepting, and the
        connected clients are disconnected with 3001 over ``drain_window`` (each after its queued
        messages); ``hurry`` set meanwhile disconnects the rest at once."""
        self.ready = False
        self.draining = True
        if self.node.outbox is not None:
            await self.node.outbox.stop()  # claims nothing more: a batch in flight commits or is abandoned
        for srv in self.servers:
            srv.close()  # the listening sockets only: open connections stay
        if drain:
            await self.node.drain(self.cfg.drain_window, hurry)
        if self.node.support is not None:
            await self.node.support.stop()  # before the broker's connections close
        await self.node.stop()
        for srv in self.servers:
            await srv.wait_closed()
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            self.node.metrics.sync(ready=False)
        if self._api_runner is not None:
            await self._api_runner.cleanup()


async def _serve(cfg: Config, on_started=None) -> None:
    app = App(cfg)
    await app.start()
    if on_started is not None:
        on_started(app)
    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second signal: disconnect everyone now

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    log.info("draining: %d connections over %.1fs", app.node.admission.num_connections, cfg.drain_window,
             extra={"event": "draining", "connections": app.node.admission.num_connections, "window": cfg.drain_window})
    await app.stop(hurry=hurry)
    log.info("stopped", extra={"event": "stopped"})


def run(cfg: Config, on_started=None) -> None:
    import uvloop

    uvloop.run(_serve(cfg, on_started))
