"""`archaudit readiness`: what could move to a platform today, what blocks the rest, and the fixing tags.

Reads the ImageAudits the auditor wrote (their `status.runsOn`, per-container `runsOn` and `fixes`,
`replicas` and `requests`) with the user's kubeconfig, as kubectl does, and nothing else: no registry
traffic of its own, so it answers in a second on a cluster of any size and shows exactly what the
operator concluded. The grouping and the sums are core.readiness (pure); this module is the I/O.

Exit codes: 0 answered (whatever the answer), 2 the question could not be asked (no cluster, no CRD,
no permission: one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from archaudit.core import readiness
from archaudit.core.platforms import Platform

if TYPE_CHECKING:  # the kubernetes client is imported when the command runs, not to build the parser
    import kubernetes

    from archaudit.adapters.kube import KubeApi

__all__ = ["ReadinessError", "add_parser", "list_audits", "main"]

_PATH = "/apis/archaudit.io/v1alpha1"
_PAGE = 500


class ReadinessError(Exception):
    """The question could not be asked: exit 2 with this message."""


def add_parser(sub: Any) -> None:
    """The `readiness` subcommand, on `sub` (argparse subparsers of the `archaudit` command)."""
    p = sub.add_parser(
        "readiness",
        help="which workloads could run on a platform today, what blocks the rest (reads ImageAudits)",
        description="From the ImageAudits archaudit wrote: the workloads whose every image runs on "
        "PLATFORM, the blocked ones with the blocking images and the tag that fixes each (when one was "
        "found), and for each group the CPU and memory requested (requests x replicas).",
    )
    p.add_argument("--platform", default="linux/arm64", help="the target platform (default linux/arm64)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="one namespace (default: the kubeconfig context's)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")


def _client(kubeconfig: str | None, context: str | None) -> tuple[kubernetes.client.ApiClient, str]:
    """(API client, default namespace), as kubectl finds them: kubeconfig first, else in-cluster."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    first = path.split(os.pathsep)[0]
    if kubeconfig or context or os.path.exists(first):
        try:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call,unused-ignore]
                config_file=first, context=context, client_configuration=configuration
            )
            _contexts, active = kubernetes.config.list_kube_config_contexts(config_file=first)  # type: ignore[no-untyped-call,unused-ignore]
            chosen = next((c for c in _contexts if c["name"] == context), active) if context else active
            namespace = str(((chosen or {}).get("context") or {}).get("namespace") or "default")
        except (kubernetes.config.ConfigException, OSError) as e:
            raise ReadinessError(f"cannot load kubeconfig {first}: {e}") from None
        return kubernetes.client.ApiClient(configuration), namespace
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call,unused-ignore]
    except kubernetes.config.ConfigException:
        raise ReadinessError(
            "no kubeconfig (KUBECONFIG, --kubeconfig, ~/.kube/config) and not in a pod"
        ) from None
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            namespace = f.read().strip() or "default"
    except OSError:
        namespace = "default"
    return kubernetes.client.ApiClient(configuration), namespace


def list_audits(api: KubeApi, namespace: str | None) -> Iterator[Mapping[str, Any]]:
    """Every ImageAudit in `namespace` (None: all), in pages, as a LIST through kubectl would read them."""
    path = f"{_PATH}/namespaces/{namespace}/imageaudits" if namespace else f"{_PATH}/imageaudits"
    token = ""
    while True:
        query = {"limit": str(_PAGE), **({"continue": token} if token else {})}
        page = api.request_now("GET", path, query=query)
        yield from page.get("items") or ()
        token = str((page.get("metadata") or {}).get("continue") or "")
        if not token:
            return


def main(args: argparse.Namespace) -> tuple[int, str]:
    """(exit code, output) for `archaudit readiness`; ReadinessError when it cannot ask."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    from archaudit.adapters.kube import KubeApi

    try:
        platform = str(Platform.parse(args.platform))
    except ValueError as e:
        raise ReadinessError(f"--platform {args.platform!r}: {e}") from None
    # As status.runsOn names platforms: the way a node of that platform is named (linux/arm is v7).
    platform = next(
        (str(n.platform) for n in readiness.target_nodes([], [platform], profiles=("containerd",))), platform
    )
    client, default_namespace = _client(args.kubeconfig, args.context)
    namespace = None if args.all_namespaces else (args.namespace or default_namespace)
    try:
        with client:
            audits = list(list_audits(KubeApi(client), namespace))
    except ApiException as e:
        if e.status == 404:
            raise ReadinessError(
                "no ImageAudits here: is archaudit installed (CRD imageaudits.archaudit.io)?"
            ) from None
        raise ReadinessError(f"listing ImageAudits: HTTP {e.status} {e.reason}") from None
    except (OSError, kubernetes.client.exceptions.OpenApiException) as e:
        raise ReadinessError(f"cannot reach the cluster: {e}") from None
    except Exception as e:  # urllib3 connection errors come in many shapes
        raise ReadinessError(f"cannot reach the cluster: {type(e).__name__}: {e}") from None
    doc = readiness.readiness(audits, platform)
    out = json.dumps(doc, indent=2) if args.output == "json" else readiness.render_text(doc)
    return 0, out
