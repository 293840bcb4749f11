"""HTTPS upstreams through the production server: the certificate is verified against the CAs
the process trusts (`SSL_CERT_FILE` adds a private CA) and the name the route gives, and a
certificate that fails either check is a 502 before anything is sent."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(path: Path, *blobs: bytes) -> Path:
    path.write_bytes(b"".join(blobs))
    return path


def _certificates(folder: Path, *, host: str) -> tuple[Path, ssl.SSLContext]:
    """A private CA (its PEM file) and a server context holding a leaf for `host` signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Gatehouse test CA"))
        .issuer_name(_name("Gatehouse test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = _pem(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    chain = _pem(folder / f"{host}.pem", leaf.public_bytes(serialization.Encoding.PEM))
    key = _pem(
        folder / f"{host}.key",
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    return ca_file, context


def _hello(request):  # noqa: ANN001
    return Reply(200, b"over tls", headers=[("Content-Type", "text/plain")])


def test_an_https_upstream_signed_by_a_trusted_ca_is_proxied(
    tmp_path, http_server_factory, gateway_process_factory
):
    ca_file, context = _certificates(tmp_path, host="localhost")
    upstream = http_server_factory(_hello, tls=context)
    proxy_route(upstream.url, path="/secure/**")
    gateway = gateway_process_factory({"SSL_CERT_FILE": str(ca_file)})

    first = requests.get(f"{gateway}/gw/secure/a?x=1", timeout=10)
    second = requests.get(f"{gateway}/gw/secure/b", timeout=10)  # on the pooled TLS connection

    assert (first.status_code, first.content) == (200, b"over tls")
    assert second.status_code == 200
    assert [r.path for r in upstream.requests] == ["/secure/a?x=1", "/secure/b"]
    assert upstream.requests[0].header("Host") == f"localhost:{upstream.port}"


@pytest.mark.parametrize("case", ["untrusted CA", "another name"])
def test_a_certificate_that_fails_verification_is_a_502_and_nothing_is_sent(
    tmp_path, http_server_factory, gateway_process_factory, case
):
    ca_file, context = _certificates(
        tmp_path, host="localhost" if case == "untrusted CA" else "other.example"
    )
    upstream = http_server_factory(_hello, tls=context)
    proxy_route(upstream.url, path="/secure/**")
    env = {} if case == "untrusted CA" else {"SSL_CERT_FILE": str(ca_file)}
    gateway = gateway_process_factory(env)

    answer = requests.get(f"{gateway}/gw/secure/a", timeout=10)

    assert answer.status_code == 502, answer.text
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert "over tls" not in answer.text
    assert upstream.requests == []
