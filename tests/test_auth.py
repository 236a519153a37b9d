"""Connect-token verification: pinned algorithms, key families, claims, hostile tokens."""

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from relay.auth import TokenExpired, TokenInvalid, TokenVerifier

SECRET = "s" * 32
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUB = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PUB = EC_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()
NOW = int(time.time())  # at collection: the suite can run for many minutes before these tests do
VALID = 86400  # so valid tokens expire a day after NOW, not during the run


def claims(**kw):
    c = {"sub": "alice", "exp": NOW + VALID, "iat": NOW - 5, "aud": "shop", "iss": "https://auth.shop"}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def verifier(**kw):
    base = dict(algorithms=["HS256", "RS256", "ES256"], hmac_secret=SECRET, rsa_public_key=RSA_PUB,
                ecdsa_public_key=EC_PUB, audience="shop", issuer="https://auth.shop")
    base.update(kw)
    return TokenVerifier(**base)


def unsigned(payload: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(payload)}."


def test_each_allowed_algorithm_verifies():
    v = verifier()
    assert v.verify(jwt.encode(claims(), SECRET, algorithm="HS256")).user == "alice"
    assert v.verify(jwt.encode(claims(), RSA_KEY, algorithm="RS256")).user == "alice"
    c = v.verify(jwt.encode(claims(channels=["#alice", "orders:alice"], info={"name": "Al"}), EC_KEY,
                            algorithm="ES256"))
    assert c.channels == ("#alice", "orders:alice") and c.info == {"name": "Al"} and c.expire_at == NOW + VALID


@pytest.mark.parametrize("name,token,error", [
    ("alg none", unsigned(claims()), TokenInvalid),
    ("HS256 signed with the RSA public key (confusion)", "confusion", TokenInvalid),
    ("algorithm not in the allowed list", jwt.encode(claims(), "k" * 64, algorithm="HS512"), TokenInvalid),
    ("expired", jwt.encode(claims(exp=NOW - 10), SECRET, algorithm="HS256"), TokenExpired),
    ("not yet valid (nbf)", jwt.encode(claims(nbf=NOW + VALID), SECRET, algorithm="HS256"), TokenInvalid),
    ("issued in the future (iat)", jwt.encode(claims(iat=NOW + VALID), SECRET, algorithm="HS256"), TokenInvalid),
    ("wrong audience", jwt.encode(claims(aud="other-shop"), SECRET, algorithm="HS256"), TokenInvalid),
    ("missing audience", jwt.encode(claims(aud=None), SECRET, algorithm="HS256"), TokenInvalid),
    ("wrong issuer", jwt.encode(claims(iss="https://evil"), SECRET, algorithm="HS256"), TokenInvalid),
    ("sub not a string", jwt.encode(claims(sub=42), SECRET, algorithm="HS256"), TokenInvalid),
    ("16 KiB token", jwt.encode(claims(pad="x" * 16384), SECRET, algorithm="HS256"), TokenInvalid),
    ("bad signature", jwt.encode(claims(), "t" * 32, algorithm="HS256"), TokenInvalid),
    ("RS256 signed by another key", jwt.encode(claims(), rsa.generate_private_key(65537, 2048), algorithm="RS256"),
     TokenInvalid),
    ("channels not a list", jwt.encode(claims(channels="#alice"), SECRET, algorithm="HS256"), TokenInvalid),
    ("garbage", "not.a.token", TokenInvalid),
])
def test_hostile_tokens(name, token, error):
    if token == "confusion":
        header = {"alg": "HS256", "typ": "JWT"}
        import hmac
        import hashlib

        enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")  # noqa: E731
        signing = enc(json.dumps(header).encode()) + b"." + enc(json.dumps(claims()).encode())
        token = (signing + b"." + enc(hmac.new(RSA_PUB.encode(), signing, hashlib.sha256).digest())).decode()
        # with HS256 allowed, the HMAC key is the secret, never the RSA public key
    with pytest.raises(error):
        verifier().verify(token)
    if name.startswith("HS256 signed with the RSA"):
        with pytest.raises(TokenInvalid):  # an RS-only deployment never treats the public key as a secret
            TokenVerifier(algorithms=["RS256"], rsa_public_key=RSA_PUB, audience="shop",
                          issuer="https://auth.shop").verify(token)


def test_jwks_keys_by_kid(tmp_path):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    v = TokenVerifier(algorithms=["RS256"], jwks_file=str(path))
    good = jwt.encode(claims(aud=None, iss=None), RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
    assert v.verify(good).user == "alice"
    with pytest.raises(TokenInvalid):
        v.verify(jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "unknown"}))


def test_pem_from_file(tmp_path):
    path = tmp_path / "pub.pem"
    path.write_text(RSA_PUB)
    v = TokenVerifier(algorithms=["RS256"], rsa_public_key=str(path))
    assert v.verify(jwt.encode(claims(aud=None, iss=None), RSA_KEY, algorithm="RS256")).user == "alice"


def test_token_without_sub_is_anonymous_as_in_centrifugo():
    v = verifier()
    for sub in (None, ""):
        creds = v.verify(jwt.encode(claims(sub=sub, info={"guest": True}), SECRET, algorithm="HS256"))
        assert creds.user == "" and creds.info == {"guest": True} and creds.expire_at == NOW + VALID
    # a subscription token without sub is for an anonymous connection only
    sub_token = jwt.encode(claims(sub=None, channel="vip:room"), SECRET, algorithm="HS256")
    assert v.verify_subscription(sub_token, "", "vip:room") == NOW + VALID
    with pytest.raises(TokenInvalid):
        v.verify_subscription(sub_token, "alice", "vip:room")
    # an admin token still needs a user
    with pytest.raises(TokenInvalid):
        v.verify_admin(jwt.encode(claims(sub=None, admin=True), SECRET, algorithm="HS256"))


def test_subs_claim_names_server_side_subscriptions():
    v = verifier()
    creds = v.verify(jwt.encode(claims(subs={"news:sale": {}, "#alice": {}}, channels=["ignored"]), SECRET,
                                algorithm="HS256"))
    assert creds.channels == ("news:sale", "#alice")  # subs wins over channels, as in Centrifugo
    with pytest.raises(TokenInvalid):
        v.verify(jwt.encode(claims(subs=["news:sale"]), SECRET, algorithm="HS256"))
