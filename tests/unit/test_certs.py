"""The operator's own webhook certificate: issued for the right names, renewed in time."""

from __future__ import annotations

import datetime as dt
import ssl
import tempfile
from pathlib import Path

from cryptography import x509

from archaudit.adapters import certs

HOSTS = [*certs.dns_names("archaudit-webhook", "archaudit"), "127.0.0.1"]


def test_serving_certificate_names_the_service_and_chains_to_the_ca() -> None:
    material = certs.issue(HOSTS)
    cert = x509.load_pem_x509_certificate(material.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "archaudit-webhook.archaudit.svc" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # The real check: Python's TLS stack accepts the chain for the service name.
    with tempfile.TemporaryDirectory() as d:
        cert_path, key_path, ca_path = certs.write_files(material, Path(d))
        assert oct(key_path.stat().st_mode & 0o777) == "0o600"
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert_path, key_path)
        client = ssl.create_default_context(cafile=str(ca_path))
        assert client.verify_mode == ssl.CERT_REQUIRED


def test_fresh_certificate_needs_no_renewal() -> None:
    assert not certs.needs_renewal(certs.issue(HOSTS), HOSTS)


def test_renewal_when_two_thirds_of_the_life_are_gone() -> None:
    issued = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    material = certs.issue(HOSTS, now=issued)
    assert not certs.needs_renewal(material, HOSTS, now=issued + dt.timedelta(days=200))
    assert certs.needs_renewal(material, HOSTS, now=issued + dt.timedelta(days=250))


def test_renewal_when_a_name_is_missing() -> None:
    material = certs.issue(HOSTS[:1])
    assert certs.needs_renewal(material, HOSTS)


def test_renewal_when_the_material_is_garbage() -> None:
    good = certs.issue(HOSTS)
    assert certs.needs_renewal(certs.TLSMaterial(b"junk", good.cert_pem, good.key_pem), HOSTS)
    assert certs.needs_renewal(certs.TLSMaterial(good.ca_pem, b"junk", good.key_pem), HOSTS)


def test_ca_bundle_is_base64_pem() -> None:
    import base64

    material = certs.issue(HOSTS)
    assert base64.b64decode(material.ca_bundle).startswith(b"-----BEGIN CERTIFICATE-----")
