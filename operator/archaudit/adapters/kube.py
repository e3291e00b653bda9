"""The few Kubernetes API calls kopf does not make for us, as small async functions.

The official `kubernetes` client is synchronous; every call here runs in a worker thread
(`asyncio.to_thread`) with a request timeout, so a slow apiserver never blocks the event loop that
serves admission reviews. Objects come back as plain API-shaped dicts (camelCase, as in the
AdmissionReview), not as the client's model classes, so the pure core reads both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from archaudit.core.credentials import Credential, Keyring, keyring_from_secret
from archaudit.core.reference import ImageReference

__all__ = ["KubeApi", "LeaseElector", "PullSecretCredentials", "load_client"]

log = logging.getLogger(__name__)
_TIMEOUT = (3.05, 10)  # (connect, read) seconds for every call


def load_client(kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or the flag)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call,unused-ignore]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call,unused-ignore]
            config_file=kubeconfig, client_configuration=configuration
        )
    return kubernetes.client.ApiClient(configuration)


class KubeApi:
    """The calls archaudit makes itself, as plain REST requests through the client's ApiClient.

    Not through the generated API classes: creating CoreV1Api, AdmissionregistrationV1Api and
    CoordinationV1Api imports some 350 pydantic model modules, about 25 MiB of a process that must fit
    in 150 MiB on a Raspberry Pi, for a dozen paths spelled out here.
    """

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client

    def request_now(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | Sequence[Any] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: tuple[float, float] = _TIMEOUT,
    ) -> Any:
        """Blocking: one request, its JSON answer; ApiException for any status but 2xx.

        Straight through the client's REST layer, which both generations of the generated client
        share (36: `call_api(resource_path, ...)`, 37: `param_serialize` + `call_api(url, ...)`);
        the client still brings the kubeconfig's TLS, client certificates and token refresh.
        """
        client = self.client
        configuration = client.configuration
        headers = {**client.default_headers, "Accept": accept, "Content-Type": content_type}
        for auth in configuration.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[str(auth["key"])] = str(auth["value"])
        url = configuration.host + path
        if query:
            url += "?" + urllib.parse.urlencode(list(query.items()))
        payload = None if body is None else dict(body) if isinstance(body, Mapping) else list(body)
        if method in ("GET", "HEAD"):
            headers.pop("Content-Type")
        try:
            response = client.rest_client.request(
                method, url, headers=headers, body=payload, _request_timeout=timeout
            )  # 36 raises ApiException itself for a status outside 2xx
            data = response.data if isinstance(response.data, bytes) else response.read()
            if not 200 <= response.status <= 299:
                raise ApiException(http_resp=response)
        except ApiException as e:
            log.debug('"%s %s" %s', method, path, e.status)
            raise
        # The request line and status only: bodies hold Secrets (the client's own DEBUG line for
        # response bodies is silenced in configure_logging).
        log.debug('"%s %s" %s', method, path, response.status)
        return json.loads(data or b"null")

    async def request(self, method: str, path: str, **options: Any) -> Any:
        """`request_now` (same options) in a worker thread: the event loop answers reviews meanwhile."""
        return await asyncio.to_thread(functools.partial(self.request_now, method, path, **options))

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", path)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return result

    async def list_nodes(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await self.request("GET", "/api/v1/nodes"))["items"]
        return items

    async def list_namespaces(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await self.request("GET", "/api/v1/namespaces"))["items"]
        return items

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"{_core(namespace)}/secrets/{_quote(name)}")

    async def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"{_core(namespace)}/serviceaccounts/{_quote(name)}")

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"{_core(namespace)}/secrets", body=body)
        return result

    async def replace_secret(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        path = f"{_core(namespace)}/secrets/{_quote(name)}"
        result: dict[str, Any] = await self.request("PUT", path, body=body)
        return result

    async def read_webhook_configuration(self, name: str, *, mutating: bool = False) -> dict[str, Any] | None:
        return await self._get_or_none(f"{_MUTATING if mutating else _WEBHOOKS}/{_quote(name)}")

    async def patch_webhook_ca_bundle(self, name: str, ca_bundle_b64: str, *, mutating: bool = False) -> bool:
        """Set caBundle on every webhook of the configuration; False when it does not exist (yet)."""
        current = await self.read_webhook_configuration(name, mutating=mutating)
        if current is None:
            return False
        hooks = current.get("webhooks") or []
        if all(h.get("clientConfig", {}).get("caBundle") == ca_bundle_b64 for h in hooks):
            return True
        patch = {
            "webhooks": [
                {"name": h["name"], "clientConfig": {**h.get("clientConfig", {}), "caBundle": ca_bundle_b64}}
                for h in hooks
            ]
        }
        # A strategic-merge patch keyed by webhook name keeps every other field as the chart set it.
        await self.request(
            "PATCH",
            f"{_MUTATING if mutating else _WEBHOOKS}/{_quote(name)}",
            body=patch,
            content_type="application/strategic-merge-patch+json",
        )
        return True

    async def list_pods(self, *, page: int = 500) -> list[dict[str, Any]]:
        """Every pod of the cluster, in pages (the pre-delete hook looks for gated pods)."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = {"limit": str(page), **({"continue": token} if token else {})}
            answer = await self.request("GET", "/api/v1/pods", query=query)
            items.extend(answer.get("items") or [])
            token = (answer.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    async def delete_webhook_configuration(self, name: str, *, mutating: bool = False) -> bool:
        """Delete a webhook configuration; False when it was not there."""
        try:
            await self.request("DELETE", f"{_MUTATING if mutating else _WEBHOOKS}/{_quote(name)}")
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"{_core(namespace)}/pods/{_quote(name)}")

    async def patch_pod_json(self, namespace: str, name: str, ops: Sequence[Mapping[str, Any]]) -> None:
        """A JSONPatch on a pod (placement: expressions added and scheduling gate removed at once)."""
        await self.request(
            "PATCH",
            f"{_core(namespace)}/pods/{_quote(name)}",
            body=list(ops),
            content_type="application/json-patch+json",
        )


_WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
_MUTATING = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _core(namespace: str) -> str:
    return f"/api/v1/namespaces/{_quote(namespace)}"


class PullSecretCredentials:
    """Credentials the kubelet would use for a pod: its imagePullSecrets, then its service account's.

    Secrets and service accounts are cached for `ttl` seconds: a burst of pods from one Deployment reads
    each secret once. A secret we may not read (RBAC value off) or that is malformed is skipped, as the
    kubelet skips it; the image is then tried anonymously.
    """

    def __init__(self, api: KubeApi, *, ttl: float = 30.0, extra: Keyring | None = None) -> None:
        self.api = api
        self.ttl = ttl
        self.extra = extra or Keyring()
        self._cache: dict[tuple[str, str, str], tuple[float, Any]] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._pods: dict[tuple[str, str, tuple[str, ...]], tuple[float, Keyring]] = {}

    async def _cached(self, kind: str, namespace: str, name: str) -> Any:
        key = (kind, namespace, name)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            value: Any
            try:
                if kind == "secret":
                    obj = await self.api.read_secret(namespace, name)
                    value = keyring_from_secret(obj) if obj is not None else Keyring()
                else:
                    value = await self.api.read_service_account(namespace, name)
            except ApiException as e:
                log.warning(
                    "cannot read %s %s/%s (HTTP %s): using no credentials from it",
                    kind,
                    namespace,
                    name,
                    e.status,
                )
                value = Keyring() if kind == "secret" else None
            except Exception as e:
                log.warning(
                    "cannot read %s %s/%s (%s): using no credentials from it",
                    kind,
                    namespace,
                    name,
                    type(e).__name__,
                )
                value = Keyring() if kind == "secret" else None
            self._cache[key] = (time.monotonic() + self.ttl, value)
            return value

    async def keyring_for_pod(self, namespace: str, pod_spec: Mapping[str, Any]) -> Keyring:
        key = _pod_key(namespace, pod_spec)
        hit = self._pods.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        _ns, sa_name, names = key
        wanted = list(names)
        sa = await self._cached("serviceaccount", namespace, sa_name)
        if sa:
            wanted += [s.get("name", "") for s in sa.get("imagePullSecrets") or [] if s.get("name")]
        keyring = Keyring()
        for name in dict.fromkeys(wanted):
            keyring = keyring + await self._cached("secret", namespace, name)
        keyring = keyring + self.extra
        if len(self._pods) >= _MAX_POD_KEYRINGS:
            self._pods.clear()  # many distinct secret sets: start over rather than grow
        self._pods[key] = (time.monotonic() + self.ttl, keyring)
        return keyring

    async def for_pod(
        self, namespace: str, pod_spec: Mapping[str, Any], image: ImageReference
    ) -> Sequence[Credential]:
        return (await self.keyring_for_pod(namespace, pod_spec)).lookup(image)

    def peek_for_pod(
        self, namespace: str, pod_spec: Mapping[str, Any], image: ImageReference
    ) -> Sequence[Credential] | None:
        """`for_pod` from the cache without an await, or None when it must be read (the warm path)."""
        hit = self._pods.get(_pod_key(namespace, pod_spec))
        if hit is None or hit[0] <= time.monotonic():
            return None
        return hit[1].lookup(image)


_MAX_POD_KEYRINGS = 4096


def _pod_key(namespace: str, pod_spec: Mapping[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    """(namespace, service account, pull secret names): the pods that share them share a keyring."""
    names = tuple(s.get("name", "") for s in pod_spec.get("imagePullSecrets") or () if s.get("name"))
    sa_name = pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount") or "default"
    return namespace, str(sa_name), names


class LeaseElector:
    """Leader election on a coordination.k8s.io Lease: with 2+ replicas exactly one audits.

    Every replica serves the webhook; only the holder of the Lease writes ImageAudits and Events.
    A holder that stops renewing loses the Lease after `duration` seconds; one that stops cleanly
    releases it (empty holder, as client-go's ReleaseOnCancel), so a standby takes over at its next
    try instead of waiting the duration out.
    """

    def __init__(
        self, api: KubeApi, *, namespace: str, name: str, identity: str, duration: float = 15.0
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.leading = False
        self.changed = asyncio.Event()
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{_quote(namespace)}/leases/{_quote(name)}"

    def is_leader(self) -> bool:
        return self.leading

    def _now(self) -> str:
        return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    async def try_acquire(self) -> bool:
        now = self._now()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.duration),
            "renewTime": now,
        }
        lease = await self.api._get_or_none(self._path)
        try:
            if lease is None:
                body = {"metadata": {"name": self.name}, "spec": {**spec, "acquireTime": now}}
                await self.api.request("POST", self._path.rsplit("/", 1)[0], body=body)
                return True
            current = lease.get("spec", {})
            holder = current.get("holderIdentity")
            renew = current.get("renewTime")
            expired = True
            if renew:
                renewed = dt.datetime.fromisoformat(renew.replace("Z", "+00:00"))
                age = (dt.datetime.now(dt.UTC) - renewed).total_seconds()
                expired = age > float(current.get("leaseDurationSeconds") or self.duration)
            if holder and holder != self.identity and not expired:
                return False  # an empty holder is a released Lease: free at once
            if holder != self.identity:
                spec["acquireTime"] = now
            lease["spec"] = {**current, **spec}
            # resourceVersion in the body makes this a compare-and-swap: two replicas cannot both win.
            await self.api.request("PUT", self._path, body=lease)
            return True
        except ApiException as e:
            if e.status in (409, 422):
                return False
            raise

    def _release_now(self) -> bool:
        """Blocking: empty the holder of the Lease if it is still ours. True when released."""
        try:
            lease = self.api.request_now("GET", self._path)
            current = lease.get("spec") or {}
            if current.get("holderIdentity") != self.identity:
                return False  # lost already: someone else's Lease now, not ours to touch
            now = self._now()
            lease["spec"] = {**current, "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": now}
            # resourceVersion in the body: a standby that took it meanwhile makes this a 409, not a theft.
            self.api.request_now("PUT", self._path, body=lease)
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise
        # Logged here, not by the awaiting task: a shutdown may cancel that task while this finishes.
        log.info("leader election: released Lease %s/%s", self.namespace, self.name)
        return True

    async def release(self) -> None:
        """Give the Lease up now (on a clean stop), if this replica holds it."""
        was_leading, self.leading = self.leading, False
        if not was_leading:
            return
        self.changed.set()
        # One worker thread does read and replace: once started it finishes even if this task is
        # cancelled again (asyncio.run waits for the default executor's threads at exit).
        try:
            await asyncio.to_thread(self._release_now)
        except Exception as e:
            log.warning("leader election: could not release Lease %s/%s: %s", self.namespace, self.name, e)

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire or renew every `duration / 3` seconds until `stop` (or cancellation), then release."""
        try:
            while not stop.is_set():
                try:
                    leading = await self.try_acquire()
                except Exception as e:
                    log.warning("leader election: %s", e)
                    leading = False
                if leading != self.leading:
                    self.leading = leading
                    log.info("leader election: %s", "leading" if leading else "standing by")
                    self.changed.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.duration / 3)
        finally:
            await self.release()
