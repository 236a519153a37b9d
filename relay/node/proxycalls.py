"""The calls a client session makes to the backend's event proxy (relay/integrations/proxy.py): the hook
request body in Centrifugo's proxy format, failures mapped to the client's errors, the channels a connect hook
names, the publish, refresh and sub_refresh hooks. ``ProxyCalls`` is a part of relay.node.session.ClientSession
and shares its state."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from relay.codes import DISCONNECTS, ERRORS, ClientError, Disconnect
from relay.core import WIRE_TCP
from relay.integrations.proxy import ProxyFailure
from relay.node.host import SessionState

__all__ = ["ProxyCalls"]

log = logging.getLogger("relay.session")  # the logger these events always had


class ProxyCalls(SessionState):
    """A session's calls to the event proxy (mixed into relay.node.session.ClientSession)."""

    __slots__ = ()

    def _proxy_body(self, **fields: Any) -> dict:
        """A hook request in Centrifugo's proxy format."""
        tcp = self.conn.wire == WIRE_TCP
        body = {"client": self.client_id, "transport": "tcp" if tcp else "websocket",
                "protocol": self.codec.name, "encoding": "json", "user": self.user}
        if self.meta is not None:
            body["meta"] = self.meta
        body.update(fields)
        return body

    async def _proxy_call(self, hook: str, body: dict, endpoint: str | None = None) -> dict:
        """The hook's result; its error or disconnect as ours; a failure as the temporary error 100 (the
        SDKs retry with backoff), 111 when shed, and for connect the configured code or, when shed, a
        reconnect-later disconnect with jittered advice."""
        proxy = self.node.proxy
        assert proxy is not None
        try:
            return await proxy.call(hook, body, self.headers, endpoint)
        except ClientError:
            if hook == "connect":
                self.node.stats.auth_failure("proxy_refused", remote=self.remote)
            raise
        except ProxyFailure as e:
            if hook == "connect":
                if e.kind == "overloaded":
                    raise Disconnect(DISCONNECTS.TOO_MANY_REQUESTS.code,
                                     f"backend busy, retry in {proxy.shed_advice():.1f}s") from None
                code = proxy.opts.connect_failure_code
                if code:
                    raise Disconnect(code, "backend unavailable") from None
            if e.kind == "overloaded":
                raise ERRORS.TOO_MANY_REQUESTS from None
            raise ERRORS.INTERNAL from None

    def _proxy_channels(self, channels: list[str]) -> tuple[str, ...]:
        """The server-side subscriptions a connect hook named that config allows: known namespace, valid
        name, and a '#' user list that names this user. The others are refused and logged."""
        node = self.node
        out: list[str] = []
        for ch in dict.fromkeys(channels):
            _, sep, users = ch.rpartition("#")
            listed = not sep or (bool(self.user) and self.user in users.split(","))
            if not node.valid_channel(ch) or node.cfg.channel_options(ch) is None or not listed:
                node.stats.auth_failure("proxy_channel", client=self.client_id, user=self.user)
                log.warning("connect hook named channel %r for user %r: refused by config", ch, self.user,
                            extra={"event": "proxy_channel_refused", "user": self.user})
                continue
            out.append(ch)
        return tuple(out)

    async def _proxy_publish(self, channel: str, data: Any) -> tuple[Any, bool]:
        """The publish hook: (data to fan out, skip history)."""
        res = await self._proxy_call("publish", self._proxy_body(channel=channel, data=data))
        return res.get("data", data), bool(res.get("skip_history"))

    async def _proxy_refresh(self) -> None:
        """A proxy-authenticated connection reached expire_at: the refresh hook prolongs it or ends it (3005).
        A failed hook is retried every few seconds (the backend may be restarting)."""
        if self.closed:
            return
        try:
            res = await self._proxy_call("refresh", self._proxy_body())
        except Disconnect as d:
            self.disconnect(d)
            return
        except ClientError:
            if not self.closed:
                self._expiry_timer = asyncio.get_running_loop().call_later(
                    random.uniform(3.0, 6.0), self._expired)
            return
        if self.closed:
            return
        expire_at = res.get("expire_at") or 0
        if res.get("expired") or (expire_at and expire_at <= time.time()):
            self.disconnect(DISCONNECTS.EXPIRED)
            return
        if "info" in res:
            self.conn_info = res["info"]
            self._info_cache = None
        self.expire_at = float(expire_at) if expire_at else None
        self._schedule_expiry()

    def _refresh_sub_at(self, channel: str, expires: float) -> None:
        """A proxied subscription with an expiry: at expire_at ask the sub_refresh hook to prolong it."""
        self._sub_timer(channel, max(0.0, expires - time.time()),
                        lambda: self.node.spawn(self._proxy_sub_refresh(channel)))

    async def _proxy_sub_refresh(self, channel: str) -> None:
        if self.closed or channel not in self.subs:
            return
        try:
            res = await self._proxy_call("sub_refresh", self._proxy_body(channel=channel))
        except Disconnect as d:
            self.disconnect(d)
            return
        except ClientError:
            if not self.closed and channel in self.subs:
                self._refresh_sub_at(channel, time.time() + random.uniform(3.0, 6.0))
            return
        expire_at = res.get("expire_at") or 0
        if res.get("expired") or (expire_at and expire_at <= time.time()):
            self.disconnect(DISCONNECTS.SUB_EXPIRED)
        elif expire_at:
            self._refresh_sub_at(channel, float(expire_at))
