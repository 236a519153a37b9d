"""A session's connecting: the connect command's credentials (a connection token, the event proxy's connect
hook, or anonymous), the subscriptions the token or the hook names (joined with the connect reply), the
refresh command and the connection's expiry (a refresh push at the token's exp, 3005 after the grace)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from relay import __version__
from relay.auth import TokenExpired, TokenInvalid
from relay.codes import DISCONNECTS, ERRORS, Disconnect
from relay.node.subscribe import check_position
from relay.node.host import SessionState

__all__ = ["Connecting"]

log = logging.getLogger("relay.session")  # the logger these events always had


class Connecting(SessionState):
    """A session's connect, refresh and expiry (mixed into relay.node.session.ClientSession)."""

    __slots__ = ()

    async def _cmd_connect(self, p: dict, cmd_id: int) -> None:
        node = self.node
        cfg = node.cfg
        token = p.get("token")
        server_channels: tuple[str, ...] = ()
        self.client_id = secrets.token_hex(16)
        proxy_data: Any = None
        proxy_subs: dict = {}
        if token:
            if not isinstance(token, str):
                raise Disconnect(DISCONNECTS.BAD_REQUEST.code, "bad request: token must be a string")
            try:
                creds = node.tokens.verify(token)
            except TokenExpired:
                node.stats.auth_failure("token_expired", remote=self.remote)
                raise ERRORS.TOKEN_EXPIRED from None
            except TokenInvalid:
                node.stats.auth_failure("invalid_token", remote=self.remote)
                raise DISCONNECTS.INVALID_TOKEN from None
            if not creds.user and cfg.disallow_anonymous_connection_tokens:
                node.stats.auth_failure("anonymous_token", remote=self.remote)
                raise DISCONNECTS.PERMISSION_DENIED
            self.user = creds.user
            self.expire_at = creds.expire_at
            self.conn_info = creds.info
            server_channels = creds.channels
        elif node.proxy is not None and node.proxy.enabled("connect"):
            fields = {k: p[k] for k in ("name", "version", "data") if k in p}
            res = await self._proxy_call("connect", self._proxy_body(**fields))
            self.user = res.get("user", "")
            expire_at = res.get("expire_at") or None
            if expire_at is not None and expire_at <= time.time():
                raise DISCONNECTS.EXPIRED
            self.expire_at = expire_at
            self.conn_info = res.get("info")
            self.meta = res.get("meta")
            self._proxied = True
            proxy_data = res.get("data")
            proxy_subs = res.get("subs", {})
            server_channels = self._proxy_channels([*res.get("channels", ()), *proxy_subs])
        elif cfg.allow_anonymous_connect:
            self.user = ""
        else:
            node.stats.auth_failure("no_credentials", remote=self.remote)
            raise Disconnect(DISCONNECTS.BAD_REQUEST.code, "bad request: credentials not found")
        if cfg.subscribe_to_user_personal_channel and self.user:  # never for anonymous connections
            personal = cfg.personal_channel(self.user)
            if personal not in server_channels:
                server_channels = (personal, *server_channels)
        limit = cfg.max_connections_per_user
        if limit and self.user and len(node.users.get(self.user, ())) >= limit:
            node.stats.auth_failure("user_limit", remote=self.remote, user=self.user)
            raise DISCONNECTS.CONNECTION_LIMIT
        self.connected = True
        self._stale_timer.cancel()
        node.register(self)
        self._schedule_expiry()
        result: dict = {"client": self.client_id, "version": __version__, "ping": int(cfg.ping_interval),
                        "pong": True}
        if self.expire_at is not None:
            result["expires"] = True
            result["ttl"] = max(1, int(self.expire_at - time.time()))
        if node.name:
            result["node"] = node.name
        if proxy_data is not None:
            result["data"] = proxy_data
        # Server-side subscriptions named by the token (e.g. the user's personal channel): the token is
        # the permission; the SDK asks to recover them on reconnect through connect.subs.
        recover = p.get("subs") if isinstance(p.get("subs"), dict) else {}
        joins: list = []
        try:
            for channel in server_channels[:cfg.max_channels_per_connection]:
                opts = cfg.channel_options(channel)
                if opts is None or not node.valid_channel(channel) or any(j[0] == channel for j in joins):
                    log.warning("token of %r names unusable channel %r: skipped", self.user, channel)
                    continue
                req = recover.get(channel) if isinstance(recover.get(channel), dict) else {}
                check_position(req)
                prepared = await self._prepare(channel, {**req, "recoverable": True}, opts)
                if prepared is None:
                    raise asyncio.CancelledError  # the client went away
                sub_data = proxy_subs.get(channel, {})
                if sub_data.get("data") is not None:  # the connect hook's initial data for it
                    prepared[0]["data"] = sub_data["data"]
                result.setdefault("subs", {})[channel] = prepared[0]
                joins.append((channel, prepared, opts))
        except BaseException:
            for channel, _, _ in joins:
                node.release(channel)
            raise
        self._server_subs = frozenset(j[0] for j in joins)
        self.send({"id": cmd_id, "connect": result})
        if cfg.personal_single_connection and self.user:  # this one stays; the user's others go, on every node
            limit = DISCONNECTS.CONNECTION_LIMIT
            node.spawn(node.server_ops.send_quietly("disconnect", user=self.user, code=limit.code, reason=limit.reason,
                                                    whitelist=[self.client_id]))
        for channel, (res, extra), opts in joins:
            await self._join(channel, res, extra, opts.join_leave and opts.force_push_join_leave, opts)

    async def _cmd_refresh(self, p: dict, cmd_id: int) -> dict:
        token = p.get("token")
        if not isinstance(token, str) or not token:
            raise ERRORS.BAD_REQUEST
        try:
            creds = self.node.tokens.verify(token)
        except TokenExpired:
            raise ERRORS.TOKEN_EXPIRED from None
        except TokenInvalid:
            raise DISCONNECTS.INVALID_TOKEN from None
        if creds.user != self.user:
            raise DISCONNECTS.INVALID_TOKEN
        self.expire_at = creds.expire_at
        self._schedule_expiry()
        result: dict = {"client": self.client_id, "version": __version__}
        if self.expire_at is not None:
            result["expires"] = True
            result["ttl"] = max(1, int(self.expire_at - time.time()))
        return result

    def server_refresh(self, expired: bool, expire_at: float | None, info: Any = None) -> None:
        """The server API's refresh: ``expired`` ends the connection (3005); otherwise the connection now
        expires at ``expire_at`` (None: never) and the client gets Centrifugo's refresh push."""
        if self.closed or not self.connected:
            return
        if expired or (expire_at is not None and expire_at <= time.time()):
            self.disconnect(DISCONNECTS.EXPIRED)
            return
        if info is not None:
            self.conn_info = info
            self._info_cache = None
        self.expire_at = expire_at
        self._schedule_expiry()
        push: dict = {} if expire_at is None else {"expires": True, "ttl": max(1, int(expire_at - time.time()))}
        self.send({"push": {"refresh": push}})

    # --- expiry ---

    def _schedule_expiry(self) -> None:
        """At the token's exp: tell the client to refresh; after token_expire_grace without a
        refresh: disconnect 3005 (connection expired)."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if self.expire_at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.expire_at - time.time())
        self._expiry_timer = loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        if self.closed:
            return
        if self._proxied:
            proxy = self.node.proxy
            if proxy is None or not proxy.enabled("refresh"):
                self.disconnect(DISCONNECTS.EXPIRED)
            else:
                self._expiry_timer = None
                self.node.spawn(self._proxy_refresh())
            return
        self.send({"push": {"refresh": {"expires": True, "ttl": 0}}})
        self._expiry_timer = asyncio.get_running_loop().call_later(
            self.node.cfg.token_expire_grace, self.disconnect, DISCONNECTS.EXPIRED)
