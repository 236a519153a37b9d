"""TLS on every listener, with a self-signed certificate made by the test."""

import asyncio
import datetime
import ipaddress
import json
import ssl
import urllib.request

import msgpack
from centrifuge import Client, PublicationContext, SubscriptionEventHandler
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_wss_tls_tcp_and_https(tmp_path, relay_factory):
    cert, key = self_signed(tmp_path)
    r = relay_factory({"tls_cert_file": cert, "tls_key_file": key})
    ctx = ssl.create_default_context(cafile=cert)  # trusts exactly this certificate
    # WebSocket over TLS with the published SDK
    got = []

    class H(SubscriptionEventHandler):
        async def on_publication(self, c: PublicationContext) -> None:
            got.append(c.pub.data)

    assert r.ws_url.startswith("wss://")
    client = Client(r.ws_url, token=r.token("alice"), ssl_context=ctx)
    sub = client.new_subscription("chat:tls", H())
    await client.connect()
    await sub.subscribe()
    # HTTPS server API
    req = urllib.request.Request(f"{r.api_url}/publish", method="POST",
                                 data=json.dumps({"channel": "chat:tls", "data": "over https"}).encode(),
                                 headers={"X-API-Key": r.api_key})
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(req, context=ctx).read())
    assert json.loads(body)["result"]["offset"] == 1
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.05)
    assert got == ["over https"]
    await client.disconnect()
    # raw TCP over TLS
    reader, writer = await asyncio.open_connection("127.0.0.1", r.tcp_port, ssl=ctx, server_hostname="localhost")
    body = msgpack.packb({"id": 1, "connect": {"token": r.token("bob")}})
    writer.write(len(body).to_bytes(4, "big") + body)
    n = int.from_bytes(await reader.readexactly(4), "big")
    assert msgpack.unpackb(await reader.readexactly(n))["connect"]["client"]
    writer.close()
    # plain text to a TLS port gets nothing served
    reader, writer = await asyncio.open_connection("127.0.0.1", r.ws_port)
    writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 101")
