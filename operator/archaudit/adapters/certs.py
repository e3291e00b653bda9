"""The webhook's CA and serving certificate, persisted in a Secret so every replica serves the same one.

Why the operator does this itself: the chart must install on a bare k3s cluster without cert-manager.
The CA signs a serving certificate for the Service's DNS names; the CA goes into the
ValidatingWebhookConfiguration's caBundle. Replicas race to write the Secret: every write is
conditional on the resourceVersion read, and the loser (HTTP 409) reads the winner's.

Rotation without a gap (`next_material`, run by every replica every `Lifetimes.check_every`):
- the serving certificate is renewed `renew_before` its expiry, signed by the same CA (its key is kept
  in the Secret, `ca.key`), so the caBundle the apiserver trusts does not change;
- the CA itself is renewed `renew_before` its expiry in three steps, each at least `overlap` after the
  one before, so that the apiserver and every replica have caught up with a step before the next:
  1. the new CA is added to the bundle (old + new trusted; the old CA still signs what is served);
  2. the serving certificate is switched to one signed by the new CA (only once the published caBundle
     holds the new CA);
  3. the old CA is dropped from the bundle.
A Secret written before rotation existed (no `ca.key`) goes through the same three steps.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes.client.exceptions import ApiException

from archaudit.adapters.kube import KubeApi

__all__ = [
    "Lifetimes",
    "TLSMaterial",
    "ensure_secret",
    "issue",
    "next_material",
    "not_after",
    "read_secret",
    "store",
    "write_files",
]

log = logging.getLogger(__name__)
STEP_ANNOTATION = "archaudit.io/rotation-step-at"  # when the Secret's last rotation step was written
_BACKDATE = dt.timedelta(minutes=5)  # notBefore in the past: a replica or apiserver whose clock lags


@dataclass(frozen=True)
class Lifetimes:
    """How long the self-made certificates live and how early they are replaced (webhook.cert_*)."""

    cert: dt.timedelta = dt.timedelta(days=365)
    renew_before: dt.timedelta = dt.timedelta(days=30)
    ca: dt.timedelta = dt.timedelta(days=3650)

    def __post_init__(self) -> None:
        if not dt.timedelta(0) < self.renew_before < self.cert <= self.ca:
            raise ValueError(
                "webhook certificate lifetimes must satisfy 0 < renew_before < cert validity <= CA "
                f"validity (got {self.renew_before}, {self.cert}, {self.ca})"
            )

    @classmethod
    def of_seconds(cls, cert: float, renew_before: float, ca: float) -> Lifetimes:
        td = dt.timedelta
        return cls(td(seconds=cert), td(seconds=renew_before), td(seconds=ca))

    @property
    def overlap(self) -> dt.timedelta:
        """Between two steps of a CA rotation: the apiserver and every replica catch up meanwhile."""
        return min(self.renew_before / 4, dt.timedelta(minutes=5))

    @property
    def check_every(self) -> float:
        """Seconds between two reads of the Secret by a replica: several reads within `overlap`."""
        return min(self.overlap.total_seconds() / 4, 60.0)


@dataclass(frozen=True)
class TLSMaterial:
    ca_pem: bytes  # the caBundle to publish: the CA, or during a rotation both CAs (newest first)
    cert_pem: bytes
    key_pem: bytes
    ca_key_pem: bytes = b""  # the key of the CA that signs renewals (absent in Secrets of old versions)
    step_at: dt.datetime | None = None  # when the last rotation step was written

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.ca_pem).decode("ascii")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def dns_names(service: str, namespace: str) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


_PEM = serialization.Encoding.PEM


def _new_ca(now: dt.datetime, lifetime: dt.timedelta) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # Each CA its own name (the serial in it), so a bundle of two is two distinct issuers.
    serial = x509.random_serial_number()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "archaudit-webhook-ca"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, f"{serial:x}"[:64]),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ca, key


def _serving(
    hosts: list[str],
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    lifetime: dt.timedelta,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        # Never past the CA: a chain is only as valid as its shortest-lived link.
        .not_valid_after(min(now + lifetime, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(_PEM), _key_pem(key)


def issue(
    hosts: list[str], *, now: dt.datetime | None = None, lifetimes: Lifetimes | None = None
) -> TLSMaterial:
    """A fresh CA and a serving certificate for `hosts` (DNS names or IP addresses)."""
    now = now or dt.datetime.now(dt.UTC)
    lifetimes = lifetimes or Lifetimes()
    ca, ca_key = _new_ca(now, lifetimes.ca)
    cert, key = _serving(hosts, ca, ca_key, now, lifetimes.cert)
    return TLSMaterial(ca.public_bytes(_PEM), cert, key, _key_pem(ca_key), step_at=now)


@dataclass(frozen=True)
class _Parsed:
    bundle: list[x509.Certificate]  # newest first
    serving: x509.Certificate
    signer: x509.Certificate | None  # the bundle's CA whose key we hold
    signer_key: ec.EllipticCurvePrivateKey | None
    issuer: x509.Certificate | None  # the bundle's CA that signed the serving certificate


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _parse(material: TLSMaterial) -> _Parsed | None:
    try:
        bundle = x509.load_pem_x509_certificates(material.ca_pem)
        serving = x509.load_pem_x509_certificate(material.cert_pem)
        serialization.load_pem_private_key(material.key_pem, password=None)
    except ValueError:
        return None
    signer = signer_key = None
    if material.ca_key_pem:
        try:
            loaded = serialization.load_pem_private_key(material.ca_key_pem, password=None)
        except ValueError:
            loaded = None
        if isinstance(loaded, ec.EllipticCurvePrivateKey):
            mine = _spki(loaded.public_key())
            for ca in bundle:
                public = ca.public_key()
                if isinstance(public, ec.EllipticCurvePublicKey) and _spki(public) == mine:
                    signer, signer_key = ca, loaded
    issuer = next((ca for ca in bundle if _issued_by(serving, ca)), None)
    return _Parsed(bundle, serving, signer, signer_key, issuer)


def _names(cert: x509.Certificate) -> set[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in sans.get_values_for_type(x509.DNSName)} | {
        str(n) for n in sans.get_values_for_type(x509.IPAddress)
    }


def _pems(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(_PEM) for c in certs)


def next_material(
    current: TLSMaterial | None,
    hosts: list[str],
    *,
    lifetimes: Lifetimes,
    now: dt.datetime | None = None,
    published: bytes | None = None,
) -> tuple[TLSMaterial, str] | None:
    """What the Secret must hold next, and the step's name; None while nothing is due.

    `published` is the caBundle (PEM) the webhook configuration holds now, None if unknown: the serving
    certificate only switches to a new CA once the apiserver has been told to trust it.
    """
    now = now or dt.datetime.now(dt.UTC)
    parsed = _parse(current) if current is not None else None
    if current is None or parsed is None:
        return issue(hosts, now=now, lifetimes=lifetimes), "created"
    valid_now = (
        parsed.issuer is not None
        and parsed.serving.not_valid_before_utc <= now < parsed.serving.not_valid_after_utc
        and parsed.issuer.not_valid_after_utc > now
        and set(hosts) <= _names(parsed.serving)
    )
    if not valid_now:
        # Nothing served now is any good (expired, a name missing, not from our CA): replace at once,
        # from the CA the apiserver already trusts when it can still sign.
        signer = parsed.signer
        if signer is not None and parsed.signer_key is not None and signer.not_valid_after_utc > now:
            cert, key = _serving(hosts, signer, parsed.signer_key, now, lifetimes.cert)
            return replace(current, cert_pem=cert, key_pem=key, step_at=now), "reissued"
        log.warning(
            "webhook certificate unusable and no CA left to sign a new one: starting with a new CA "
            "(until the apiserver has its caBundle, admission fails open)"
        )
        return issue(hosts, now=now, lifetimes=lifetimes), "created"
    waited = now - (current.step_at or dt.datetime.min.replace(tzinfo=dt.UTC)) >= lifetimes.overlap
    signer = parsed.signer
    if len(parsed.bundle) > 1 and signer is not None and parsed.signer_key is not None:
        if parsed.issuer is not signer:
            # Step 2: both CAs trusted; serve from the new one once the apiserver has the bundle.
            trusted = published is None or signer.public_bytes(_PEM) in published
            if not (waited and trusted):
                return None
            cert, key = _serving(hosts, signer, parsed.signer_key, now, lifetimes.cert)
            switched = replace(current, cert_pem=cert, key_pem=key, step_at=now)
            return switched, "serving certificate switched to the new CA"
        if not waited:
            return None
        # Step 3: every replica serves from the new CA by now: the old one is trusted no longer.
        return replace(current, ca_pem=_pems([signer]), step_at=now), "old CA dropped"
    if (
        signer is None
        or parsed.signer_key is None
        or signer.not_valid_after_utc - now < lifetimes.renew_before
    ):
        # Step 1: trust a new CA beside the one that signed what is served.
        ca, ca_key = _new_ca(now, lifetimes.ca)
        issuer = parsed.issuer
        assert issuer is not None  # valid_now
        bundle = _pems([ca, issuer])
        trusting = replace(current, ca_pem=bundle, ca_key_pem=_key_pem(ca_key), step_at=now)
        return trusting, "new CA trusted"
    if parsed.serving.not_valid_after_utc - now < lifetimes.renew_before:
        cert, key = _serving(hosts, signer, parsed.signer_key, now, lifetimes.cert)
        return replace(current, cert_pem=cert, key_pem=key, step_at=now), "serving certificate renewed"
    return None


def not_after(cert_pem: bytes) -> str:
    """When a PEM certificate expires (RFC 3339), for the log; "?" if it does not parse."""
    try:
        return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.isoformat()
    except ValueError:
        return "?"


def _from_secret(secret: dict[str, object]) -> TLSMaterial | None:
    data = secret.get("data")
    if not isinstance(data, dict):
        return None
    meta = secret.get("metadata")
    annotations = (meta.get("annotations") if isinstance(meta, dict) else None) or {}
    step_at = None
    if isinstance(annotations, dict) and isinstance(annotations.get(STEP_ANNOTATION), str):
        try:
            step_at = dt.datetime.fromisoformat(annotations[STEP_ANNOTATION])
        except ValueError:
            step_at = None
    try:
        return TLSMaterial(
            base64.b64decode(data["ca.crt"]),
            base64.b64decode(data["tls.crt"]),
            base64.b64decode(data["tls.key"]),
            base64.b64decode(data.get("ca.key", "")),
            step_at=step_at,
        )
    except (KeyError, ValueError):
        return None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _secret_body(name: str, material: TLSMaterial, resource_version: str | None = None) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "labels": {"app.kubernetes.io/name": "archaudit"}}
    if material.step_at is not None:
        meta["annotations"] = {STEP_ANNOTATION: material.step_at.isoformat()}
    if resource_version:
        meta["resourceVersion"] = resource_version
    data = {
        "ca.crt": b64(material.ca_pem),
        "tls.crt": b64(material.cert_pem),
        "tls.key": b64(material.key_pem),
    }
    if material.ca_key_pem:
        data["ca.key"] = b64(material.ca_key_pem)
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta, "data": data}


async def read_secret(api: KubeApi, *, namespace: str, name: str) -> tuple[TLSMaterial | None, str | None]:
    """The material in the Secret (None if absent or unreadable) and the resourceVersion read."""
    secret = await api.read_secret(namespace, name)
    if secret is None:
        return None, None
    rv = str(secret.get("metadata", {}).get("resourceVersion", "")) or None
    return _from_secret(secret), rv


async def store(
    api: KubeApi, *, namespace: str, name: str, material: TLSMaterial, resource_version: str | None
) -> bool:
    """Write `material` if the Secret is still at `resource_version` (None: absent); False if not."""
    try:
        if resource_version is None:
            await api.create_secret(namespace, _secret_body(name, material))
        else:
            await api.replace_secret(namespace, name, _secret_body(name, material, resource_version))
    except ApiException as e:
        if e.status == 409:  # another replica wrote first: read what it wrote
            return False
        raise
    return True


async def ensure_secret(
    api: KubeApi,
    *,
    namespace: str,
    name: str,
    hosts: list[str],
    lifetimes: Lifetimes | None = None,
    published: bytes | None = None,
) -> TLSMaterial:
    """The TLS material in the Secret after every step now due; concurrent replicas agree."""
    lifetimes = lifetimes or Lifetimes()
    for _attempt in range(10):
        current, rv = await read_secret(api, namespace=namespace, name=name)
        step = next_material(current, hosts, lifetimes=lifetimes, published=published)
        if step is None and current is not None:
            return current
        assert step is not None  # next_material always creates when there is nothing
        fresh, what = step
        if await store(api, namespace=namespace, name=name, material=fresh, resource_version=rv):
            log.info("webhook certificate in Secret %s/%s: %s", namespace, name, what)
            # Further steps of a CA rotation are not due yet (each waits `overlap`): serve this.
            return fresh
    raise RuntimeError(f"could not settle the webhook certificate in Secret {namespace}/{name}")


def write_files(material: TLSMaterial, directory: Path) -> tuple[Path, Path, Path]:
    """cert, key and CA files for the TLS server; written so the key is never world-readable.

    Each file is replaced whole (written aside, then renamed): a reader sees the old or the new one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, ca = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    files = ((key, material.key_pem, 0o600), (cert, material.cert_pem, 0o644), (ca, material.ca_pem, 0o644))
    for path, data, mode in files:
        aside = path.with_name(f".{path.name}.new")
        aside.touch(mode=mode)
        aside.chmod(mode)
        aside.write_bytes(data)
        aside.replace(path)
    return cert, key, ca
