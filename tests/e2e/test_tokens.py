"""Connect tokens over the wire: RS256 with aud/iss pinned; hostile tokens get 3500, expired ones 109."""

import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.rawclients import RawWS


async def test_rs256_deployment(relay_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    r = relay_factory({"token_algorithms": ["RS256"], "token_rsa_public_key": pub, "token_audience": "shop",
                       "token_issuer": "auth", "token_hmac_secret": ""})
    now = int(time.time())
    good = jwt.encode({"sub": "alice", "exp": now + 60, "aud": "shop", "iss": "auth"}, key, algorithm="RS256")
    ws = await RawWS.open(r.ws_port)
    assert (await ws.call("connect", {"token": good}))["connect"]["client"]
    ws.close()
    hostile = [
        _hs256_with_public_key(pub, now),
        jwt.encode({"sub": "alice", "exp": now + 60, "aud": "other", "iss": "auth"}, key, algorithm="RS256"),
        jwt.encode({"sub": "alice", "exp": now + 60, "aud": "shop", "iss": "evil"}, key, algorithm="RS256"),
        jwt.encode({"sub": "alice", "exp": now + 60, "aud": "shop", "iss": "auth", "pad": "x" * 16384}, key,
                   algorithm="RS256"),
    ]
    for token in hostile:
        ws = await RawWS.open(r.ws_port)
        await ws.send_cmds({"id": 1, "connect": {"token": token}})
        assert await ws.expect_close() == (3500, "invalid token")
    expired = jwt.encode({"sub": "alice", "exp": now - 5, "aud": "shop", "iss": "auth"}, key, algorithm="RS256")
    ws = await RawWS.open(r.ws_port)
    assert (await ws.call("connect", {"token": expired}))["error"]["code"] == 109
    ws.close()


def _hs256_with_public_key(pub: str, now: int) -> str:
    """The classic algorithm-confusion attack: an HS256 token whose HMAC key is the RSA public key."""
    import base64
    import hashlib
    import hmac
    import json

    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")  # noqa: E731
    signing = (enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"."
               + enc(json.dumps({"sub": "admin", "exp": now + 60, "aud": "shop", "iss": "auth"}).encode()))
    return (signing + b"." + enc(hmac.new(pub.encode(), signing, hashlib.sha256).digest())).decode()
