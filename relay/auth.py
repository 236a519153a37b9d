"""Connect tokens: HS256 JWTs signed with the configured secret (PyJWT does the work)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

__all__ = ["Credentials", "TokenExpired", "TokenInvalid", "verify_connect_token", "make_connect_token"]


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    expire_at: float | None  # unix time; None: never
    info: Any = None


class TokenInvalid(Exception):
    pass


class TokenExpired(Exception):
    pass


def verify_connect_token(token: str, secret: str) -> Credentials:
    if not secret:
        raise TokenInvalid("no token secret configured")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub"]})
    except jwt.ExpiredSignatureError:
        raise TokenExpired() from None
    except jwt.PyJWTError as e:
        raise TokenInvalid(str(e)) from None
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise TokenInvalid("sub must be a string")
    exp = claims.get("exp")
    return Credentials(user=sub, expire_at=float(exp) if exp is not None else None, info=claims.get("info"))


def make_connect_token(user: str, secret: str, ttl: float | None = 3600, info: Any = None) -> str:
    claims: dict[str, Any] = {"sub": user, "iat": int(time.time())}
    if ttl:
        claims["exp"] = int(time.time() + ttl)
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm="HS256")
