"""The webhook's CA and serving certificate, persisted in a Secret so every replica serves the same one.

Why the operator does this itself: the chart must install on a bare k3s cluster without cert-manager.
The CA signs a serving certificate for the Service's DNS names; the CA goes into the
ValidatingWebhookConfiguration's caBundle. Replicas race to create the Secret: the loser of the create
(HTTP 409) reads the winner's. Certificates are renewed when less than a third of their life is left.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes.client.exceptions import ApiException

from archaudit.adapters.kube import KubeApi

__all__ = ["TLSMaterial", "ensure_secret", "issue", "needs_renewal", "write_files"]

log = logging.getLogger(__name__)
CA_LIFETIME = dt.timedelta(days=3650)
CERT_LIFETIME = dt.timedelta(days=365)


@dataclass(frozen=True)
class TLSMaterial:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

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


def issue(hosts: list[str], *, now: dt.datetime | None = None) -> TLSMaterial:
    """A fresh CA and a serving certificate for `hosts` (DNS names or IP addresses)."""
    now = now or dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "archaudit-webhook-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
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
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return TLSMaterial(ca.public_bytes(pem), cert.public_bytes(pem), _key_pem(key))


def needs_renewal(material: TLSMaterial, hosts: list[str], *, now: dt.datetime | None = None) -> bool:
    """True when the certificate is unreadable, expires within a third of its life, or lacks a host."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(material.cert_pem)
        x509.load_pem_x509_certificate(material.ca_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return True
    have = {str(n) for n in sans.get_values_for_type(x509.DNSName)}
    have |= {str(n) for n in sans.get_values_for_type(x509.IPAddress)}
    if not set(hosts) <= have:
        return True
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < life / 3


def _from_secret(secret: dict[str, object]) -> TLSMaterial | None:
    data = secret.get("data")
    if not isinstance(data, dict):
        return None
    try:
        return TLSMaterial(
            base64.b64decode(data["ca.crt"]),
            base64.b64decode(data["tls.crt"]),
            base64.b64decode(data["tls.key"]),
        )
    except (KeyError, ValueError):
        return None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _secret_body(name: str, material: TLSMaterial, resource_version: str | None = None) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "labels": {"app.kubernetes.io/name": "archaudit"}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": meta,
        "data": {
            "ca.crt": b64(material.ca_pem),
            "tls.crt": b64(material.cert_pem),
            "tls.key": b64(material.key_pem),
        },
    }


async def ensure_secret(api: KubeApi, *, namespace: str, name: str, hosts: list[str]) -> TLSMaterial:
    """The TLS material in the Secret, created or renewed when needed; concurrent replicas agree."""
    for _attempt in range(5):
        secret = await api.read_secret(namespace, name)
        current = _from_secret(secret) if secret else None
        if current is not None and not needs_renewal(current, hosts):
            return current
        fresh = issue(hosts)
        try:
            if secret is None:
                await api.create_secret(namespace, _secret_body(name, fresh))
            else:
                rv = str(secret.get("metadata", {}).get("resourceVersion", "")) or None
                await api.replace_secret(namespace, name, _secret_body(name, fresh, rv))
            log.info(
                "webhook certificate %s in Secret %s/%s",
                "created" if secret is None else "renewed",
                namespace,
                name,
            )
            return fresh
        except ApiException as e:
            if e.status == 409:  # another replica won the race: read what it wrote
                continue
            raise
    raise RuntimeError(f"could not settle the webhook certificate in Secret {namespace}/{name}")


def write_files(material: TLSMaterial, directory: Path) -> tuple[Path, Path, Path]:
    """cert, key and CA files for the TLS server; written so the key is never world-readable."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, ca = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    key.touch(mode=0o600)
    key.write_bytes(material.key_pem)
    cert.write_bytes(material.cert_pem)
    ca.write_bytes(material.ca_pem)
    return cert, key, ca
