"""The operator's own webhook certificate: issued for the right names, renewed and rotated without a gap.

The rotation rule's promise is checked with real TLS handshakes (Python's ssl, in memory): at every
step, a client that trusts the caBundle published one step earlier (the apiserver has not caught up
yet) still accepts what is served after the step.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import tempfile
from pathlib import Path

import pytest
from cryptography import x509

from archaudit.adapters import certs

HOSTS = [*certs.dns_names("archaudit-webhook", "archaudit"), "127.0.0.1"]
# The handshakes check validity against the real clock: simulated time starts now (the short
# lifetimes' steps all fall within the 5 minutes certificates are backdated by).
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
YEAR = certs.Lifetimes()  # the defaults: 1 year, renewed 30 days early, CA 10 years
SHORT = certs.Lifetimes.of_seconds(cert=60, renew_before=20, ca=200)  # overlap 5 s


def handshake(material: certs.TLSMaterial, trusted_pem: bytes, host: str = HOSTS[2]) -> bool:
    """A TLS handshake of a client trusting `trusted_pem` with a server serving `material`."""
    with tempfile.TemporaryDirectory() as d:
        cert, key, _ca = certs.write_files(material, Path(d))
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cadata=trusted_pem.decode())
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=host)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if done[name]:
                continue
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return True
    return False


def test_serving_certificate_names_the_service_and_chains_to_the_ca() -> None:
    material = certs.issue(HOSTS)
    cert = x509.load_pem_x509_certificate(material.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "archaudit-webhook.archaudit.svc" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    with tempfile.TemporaryDirectory() as d:
        _cert_path, key_path, _ca_path = certs.write_files(material, Path(d))
        assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    assert handshake(material, material.ca_pem)
    assert not handshake(material, material.ca_pem, host="elsewhere.example")


def test_fresh_certificate_needs_nothing() -> None:
    material = certs.issue(HOSTS, now=T0)
    assert certs.next_material(material, HOSTS, lifetimes=YEAR, now=T0) is None
    assert certs.next_material(material, HOSTS, lifetimes=YEAR, now=T0 + dt.timedelta(days=334)) is None


def test_serving_certificate_renewed_before_expiry_by_the_same_ca() -> None:
    material = certs.issue(HOSTS, now=T0)
    step = certs.next_material(material, HOSTS, lifetimes=YEAR, now=T0 + dt.timedelta(days=336))
    assert step is not None
    renewed, what = step
    assert what == "serving certificate renewed"
    assert renewed.ca_pem == material.ca_pem  # the caBundle the apiserver holds stays right
    assert renewed.cert_pem != material.cert_pem
    # Not valid yet by the real clock (issued 336 days from now): the chain is checked without TLS.
    (ca,) = x509.load_pem_x509_certificates(material.ca_pem)
    x509.load_pem_x509_certificate(renewed.cert_pem).verify_directly_issued_by(ca)
    after = x509.load_pem_x509_certificate(renewed.cert_pem).not_valid_after_utc
    assert after == T0 + dt.timedelta(days=336 + 365)


def test_renewal_when_a_name_is_missing_keeps_the_ca() -> None:
    material = certs.issue(HOSTS[:1], now=T0)
    step = certs.next_material(material, HOSTS, lifetimes=YEAR, now=T0)
    assert step is not None
    assert step[1] == "reissued"
    assert step[0].ca_pem == material.ca_pem
    assert handshake(step[0], material.ca_pem, host="127.0.0.1")


def test_garbage_is_replaced_by_a_new_ca() -> None:
    good = certs.issue(HOSTS)
    for bad in (
        certs.TLSMaterial(b"junk", good.cert_pem, good.key_pem),
        certs.TLSMaterial(good.ca_pem, b"junk", good.key_pem),
    ):
        step = certs.next_material(bad, HOSTS, lifetimes=YEAR)
        assert step is not None
        assert step[1] == "created"
    assert certs.next_material(None, HOSTS, lifetimes=YEAR) is not None


def test_ca_rotation_in_three_steps_never_leaves_a_caller_untrusted() -> None:
    now = T0
    material = certs.issue(HOSTS, now=now, lifetimes=SHORT)
    old_ca = material.ca_pem
    # Renewals of the serving certificate until the CA itself is due (200 s life, renewed 20 s early).
    renewals = 0
    while True:
        now += dt.timedelta(seconds=1)
        step = certs.next_material(material, HOSTS, lifetimes=SHORT, now=now, published=material.ca_pem)
        if step is None:
            continue
        previous, (material, what) = material, step
        assert handshake(material, previous.ca_pem), what
        if what != "serving certificate renewed":
            break
        renewals += 1
    # At 41, 82, 123 and 164 s (that one capped at the CA's end, 200 s); at 181 s the CA is due.
    assert renewals == 4
    assert what == "new CA trusted"
    assert not material.ca_pem.startswith(old_ca)  # newest first
    assert old_ca in material.ca_pem
    assert material.ca_pem != old_ca
    trusting = material
    # Step 2 waits `overlap` and for the apiserver to hold the new bundle.
    soon = now + SHORT.overlap - dt.timedelta(seconds=1)
    assert certs.next_material(trusting, HOSTS, lifetimes=SHORT, now=soon, published=trusting.ca_pem) is None
    later = now + SHORT.overlap
    assert certs.next_material(trusting, HOSTS, lifetimes=SHORT, now=later, published=old_ca) is None
    step = certs.next_material(trusting, HOSTS, lifetimes=SHORT, now=later, published=trusting.ca_pem)
    assert step is not None
    switched, what = step
    assert what == "serving certificate switched to the new CA"
    assert switched.ca_pem == trusting.ca_pem
    assert handshake(switched, trusting.ca_pem)  # what the apiserver holds now
    assert not handshake(switched, old_ca)  # hence the wait for it to hold the new bundle
    # Step 3: the old CA dropped, after another `overlap`.
    assert certs.next_material(switched, HOSTS, lifetimes=SHORT, now=later, published=switched.ca_pem) is None
    step = certs.next_material(
        switched, HOSTS, lifetimes=SHORT, now=later + SHORT.overlap, published=switched.ca_pem
    )
    assert step is not None
    dropped, what = step
    assert what == "old CA dropped"
    assert old_ca not in dropped.ca_pem
    assert len(x509.load_pem_x509_certificates(dropped.ca_pem)) == 1
    assert handshake(dropped, trusting.ca_pem)  # a caller still on the two-CA bundle
    assert handshake(dropped, dropped.ca_pem)
    # And then quiet: nothing due until the next renewal.
    assert certs.next_material(dropped, HOSTS, lifetimes=SHORT, now=later + 2 * SHORT.overlap) is None


def test_a_secret_without_the_ca_key_moves_to_a_new_ca_through_the_same_steps() -> None:
    legacy = certs.TLSMaterial(*_without_ca_key(certs.issue(HOSTS, now=T0)))
    step = certs.next_material(legacy, HOSTS, lifetimes=YEAR, now=T0)
    assert step is not None
    material, what = step
    assert what == "new CA trusted"
    assert material.cert_pem == legacy.cert_pem  # still served: the apiserver trusts only the old CA
    assert legacy.ca_pem in material.ca_pem


def test_the_secret_keeps_the_ca_key_and_the_step_time() -> None:
    material = certs.issue(HOSTS, now=T0)
    body = certs._secret_body("s", material, "7")
    back = certs._from_secret(body)
    assert back == material
    assert base64.b64decode(str(body["data"]["ca.key"])).startswith(b"-----BEGIN PRIVATE KEY-----")  # type: ignore[index]


def test_lifetimes_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="renew_before"):
        certs.Lifetimes.of_seconds(cert=10, renew_before=10, ca=100)
    with pytest.raises(ValueError, match="renew_before"):
        certs.Lifetimes.of_seconds(cert=100, renew_before=10, ca=50)
    assert YEAR.check_every == 60.0
    assert YEAR.overlap == dt.timedelta(minutes=5)


def test_ca_bundle_is_base64_pem() -> None:
    material = certs.issue(HOSTS)
    assert base64.b64decode(material.ca_bundle).startswith(b"-----BEGIN CERTIFICATE-----")


def _without_ca_key(material: certs.TLSMaterial) -> tuple[bytes, bytes, bytes]:
    return material.ca_pem, material.cert_pem, material.key_pem
