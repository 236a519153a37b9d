"""Connect tokens: JWTs verified by PyJWT with algorithms pinned by config.

The token's ``alg`` must be one of ``token_algorithms``; its key is chosen by that
algorithm's family (HS: the HMAC secret, RS: the RSA public key, ES: the EC public
key) or by ``kid`` from a JWKS file, so ``alg: none`` and algorithm confusion (an
HS256 token "signed" with the RSA public key) are refused. ``exp``, ``nbf``,
``iat``, and when configured ``aud`` and ``iss``, are checked.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

__all__ = ["Credentials", "TokenExpired", "TokenInvalid", "TokenVerifier", "make_connect_token",
           "SUPPORTED_ALGORITHMS"]

SUPPORTED_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    expire_at: float | None  # unix time; None: never
    info: Any = None
    channels: tuple[str, ...] = ()  # server-side subscriptions carried by the token


class TokenInvalid(Exception):
    pass


class TokenExpired(Exception):
    pass


def _pem(value: str) -> str:
    """A PEM given inline, or the path of a file holding it."""
    if not value or value.lstrip().startswith("-----BEGIN"):
        return value
    return Path(value).read_text()


class TokenVerifier:
    def __init__(self, *, algorithms: list[str] | tuple[str, ...] = ("HS256",), hmac_secret: str = "",
                 rsa_public_key: str = "", ecdsa_public_key: str = "", jwks_file: str = "",
                 audience: str = "", issuer: str = "", max_size: int = 8192, leeway: float = 0.0) -> None:
        self.algorithms = tuple(algorithms)
        self.audience = audience or None
        self.issuer = issuer or None
        self.max_size = max_size
        self.leeway = leeway
        self._keys: dict[str, Any] = {}
        if hmac_secret:
            self._keys["HS"] = hmac_secret
        if rsa_public_key:
            self._keys["RS"] = jwt.algorithms.RSAAlgorithm.from_jwk(rsa_public_key) \
                if rsa_public_key.lstrip().startswith("{") else _pem(rsa_public_key)
        if ecdsa_public_key:
            self._keys["ES"] = _pem(ecdsa_public_key)
        self._jwks: dict[str, jwt.PyJWK] = {}
        if jwks_file:
            for k in jwt.PyJWKSet.from_dict(json.loads(Path(jwks_file).read_text())).keys:
                if k.key_id:
                    self._jwks[k.key_id] = k

    @classmethod
    def from_config(cls, cfg) -> "TokenVerifier":
        return cls(algorithms=cfg.token_algorithms, hmac_secret=cfg.token_hmac_secret,
                   rsa_public_key=cfg.token_rsa_public_key, ecdsa_public_key=cfg.token_ecdsa_public_key,
                   jwks_file=cfg.token_jwks_file, audience=cfg.token_audience, issuer=cfg.token_issuer,
                   max_size=cfg.max_token_size)

    def _key(self, header: dict) -> Any:
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise TokenInvalid(f"algorithm {alg!r} is not allowed")
        kid = header.get("kid")
        if kid and self._jwks:
            jwk = self._jwks.get(kid)
            if jwk is None:
                raise TokenInvalid("unknown key id")
            if jwk.algorithm_name and jwk.algorithm_name != alg:
                raise TokenInvalid("key and token algorithms differ")
            return jwk.key
        key = self._keys.get(alg[:2])
        if key is None:
            raise TokenInvalid(f"no key configured for {alg}")
        return key

    def verify_subscription(self, token: str, user: str, channel: str) -> float | None:
        """Check a subscription token for ``user`` and ``channel``; its expiry (unix time) or None. A token
        without ``sub`` (or with ``""``) is for an anonymous connection, as in Centrifugo."""
        claims = self._claims(token)
        if _subject(claims) != user or claims.get("channel") != channel:
            raise TokenInvalid("subscription token is for another user or channel")
        exp = claims.get("exp")
        return float(exp) if exp is not None else None

    def verify_admin(self, token: str) -> str:
        """Check an admin token (``relay token --admin``: a signed token with ``"admin": true``); its user."""
        claims = self._claims(token)
        if claims.get("admin") is not True or "channel" in claims or not _subject(claims):
            raise TokenInvalid("not an admin token")
        return _subject(claims)

    def _claims(self, token: str) -> dict:
        if len(token) > self.max_size:
            raise TokenInvalid("token too large")
        try:
            header = jwt.get_unverified_header(token)
            return jwt.decode(token, self._key(header), algorithms=[header["alg"]], audience=self.audience,
                              issuer=self.issuer, leeway=self.leeway,
                              options={"verify_aud": self.audience is not None})
        except jwt.ExpiredSignatureError:
            raise TokenExpired() from None
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as e:
            raise TokenInvalid(str(e)) from None

    def verify(self, token: str) -> Credentials:
        """A connection token's credentials. Without ``sub`` (or with ``""``) the connection is anonymous
        (user ""), with the token's other claims, as in Centrifugo; ``disallow_anonymous_connection_tokens``
        is the caller's to apply."""
        claims = self._claims(token)
        if "channel" in claims:
            raise TokenInvalid("a subscription token cannot open a connection")
        sub = _subject(claims)
        exp = claims.get("exp")
        subs = claims.get("subs")  # Centrifugo's map of server-side subscriptions; wins over "channels"
        if subs is not None and not isinstance(subs, dict):
            raise TokenInvalid("subs must be an object")
        channels = list(subs) if subs else (claims.get("channels") or ())
        if not isinstance(channels, (list, tuple)) or not all(isinstance(c, str) for c in channels):
            raise TokenInvalid("channels must be a list of strings")
        return Credentials(user=sub, expire_at=float(exp) if exp is not None else None, info=claims.get("info"),
                           channels=tuple(channels))


def _subject(claims: dict) -> str:
    """The ``sub`` claim: absent or null is "" (anonymous, as Go's JSON decoding gives Centrifugo); anything
    but a string is an invalid token."""
    sub = claims.get("sub")
    if sub is None:
        return ""
    if not isinstance(sub, str):
        raise TokenInvalid("sub must be a string")
    return sub


def make_connect_token(user: str, secret: str, ttl: float | None = 3600, info: Any = None,
                       **claims: Any) -> str:
    """An HS256 connect token (``relay token``, tests and the demo)."""
    body: dict[str, Any] = {"sub": user, "iat": int(time.time())}
    if ttl:
        body["exp"] = int(time.time() + ttl)
    if info is not None:
        body["info"] = info
    body.update(claims)
    return jwt.encode(body, secret, algorithm="HS256")
