"""The `archaudit` command: `check` one image from a terminal or CI, `run` the operator.

Why a CLI at all: "will this image run on my Raspberry Pi nodes?" is a question people ask before
they deploy, and the answer must be the one the webhook would give. So `check` goes through the
same resolver, the same runtime profiles and the same registry configuration as the operator.

Exit codes (a contract, scripts rely on them): 0 every requested platform runs the image (or none was
requested), 1 at least one does not, 2 the question could not be answered (one line on stderr).
`check -f` (manifests, in checkfiles.py) has its own, in DESIGN.md: 0 / 1 Incompatible / 2 input error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archaudit import __version__, checkfiles
from archaudit.adapters.cloud import NONE as NO_CLOUD
from archaudit.adapters.cloud import CloudCredentials
from archaudit.adapters.registry.files import registries_from_file
from archaudit.adapters.resolver import Resolver
from archaudit.core import config
from archaudit.core.credentials import Credential, Keyring, keyring_from_docker_config
from archaudit.core.errors import ArchauditError, InvalidReference, ResolutionError, UsageError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.mirrors import EMPTY, RegistriesConfig
from archaudit.core.platforms import RUNTIMES, Fit, Platform
from archaudit.core.reference import ImageReference, parse

__all__ = ["build_parser", "check", "main"]

EXIT_OK, EXIT_NOT_RUNNABLE, EXIT_ERROR = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archaudit",
        description="Check which platforms a container image can run on, the way the node's runtime decides.",
    )
    parser.add_argument("--version", action="version", version=f"archaudit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{check,run,readiness}")

    check = sub.add_parser(
        "check",
        help="resolve an image and check it against node platforms",
        description="Resolve IMAGE in its registry and list its platforms; with --platform, say whether "
        "a node of that platform can run it. Exit 0: all runnable, 1: some not, 2: error. "
        "With -f instead of IMAGE: judge manifests as the webhook would (--platform or --nodes); "
        "exit 0: nothing Incompatible, 1: something is (or what --fail-on names), 2: an input error.",
    )
    check.add_argument(
        "image",
        metavar="IMAGE",
        nargs="?",
        help="image reference, e.g. nginx:1.27 or ghcr.io/o/r@sha256:... (or -f for manifests)",
    )
    check.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="P",
        help="node platform os/arch[/variant], e.g. linux/arm/v7 (repeatable)",
    )
    check.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="container runtime profile that decides compatibility (default: containerd; with --nodes, "
        "each node's containerRuntimeVersion)",
    )
    check.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk plain HTTP to this registry (repeatable)",
    )
    check.add_argument("--registries", metavar="FILE", help="k3s registries.yaml: mirrors, credentials, TLS")
    check.add_argument(
        "--docker-config",
        metavar="FILE",
        help="docker config.json with registry credentials (default: $DOCKER_CONFIG/config.json or "
        "~/.docker/config.json when present)",
    )
    check.add_argument(
        "-o", "--output", choices=checkfiles.FORMATS, default="text", help="output format (sarif, github: -f)"
    )
    check.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="total time for the image (default: ARCHAUDIT_REGISTRY_TIMEOUT_SECONDS or 8)",
    )
    checkfiles.add_arguments(check)

    sub.add_parser(
        "run",
        help="start the operator (webhook, auditor, metrics); see `archaudit run --help`",
        add_help=False,
    )
    # Its own module (cli.py only dispatches), imported here: it needs the kubernetes client, which
    # `archaudit check` in CI should not pay to import.
    from archaudit import readiness

    readiness.add_parser(sub)
    return parser


# -- check


def _platforms(texts: Sequence[str]) -> list[Platform]:
    out = []
    for text in texts:
        try:
            out.append(Platform.parse(text))
        except ValueError as e:
            raise UsageError(f"--platform {text!r}: {e}") from None
    return out


def _default_docker_config() -> Path | None:
    base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    path = Path(base) / "config.json"
    return path if path.is_file() else None


def _keyring(docker_config: str | None) -> Keyring:
    path = Path(docker_config) if docker_config else _default_docker_config()
    if path is None:
        return Keyring()
    try:
        return keyring_from_docker_config(path.read_bytes())
    except OSError as e:
        raise UsageError(f"--docker-config {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"--docker-config {path}: {e}") from None


def _credentials(ref: ImageReference, docker_config: str | None) -> list[Credential]:
    return _keyring(docker_config).lookup(ref)


def _registries(path: str | None, settings: config.RegistrySettings) -> RegistriesConfig:
    path = path or settings.registries_file
    if not path:
        return EMPTY
    try:
        return registries_from_file(path)
    except OSError as e:
        raise UsageError(f"--registries {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"--registries {path}: {e}") from None


def platform_json(p: Platform) -> dict[str, str]:
    out = {"os": p.os, "architecture": p.architecture, "variant": p.variant}
    if p.os_version:
        out["os.version"] = p.os_version
    return out


def report(
    image: ImagePlatforms, ref: ImageReference, requested: Sequence[tuple[str, Platform]], runtime: str
) -> dict[str, Any]:
    """The JSON document of `check` (DESIGN.md: a contract)."""
    checks = []
    for text, node in requested:
        verdict, manifest = image.runnable(node, (runtime,))
        checks.append({"platform": text, "runnable": verdict is Fit.RUNS, "manifest": manifest})
    return {
        "image": str(ref),
        "digest": image.digest,
        "mediaType": image.media_type,
        "platforms": [platform_json(p) for p in image.platforms],
        "checks": checks,
    }


def render_text(doc: dict[str, Any], kind: str) -> str:
    platforms = [
        "/".join(x for x in (p["os"], p["architecture"], p["variant"]) if x)
        + (f" ({p['os.version']})" if p.get("os.version") else "")
        for p in doc["platforms"]
    ]
    if not platforms:
        platforms = ["none (an OCI artifact, not an image)" if kind == "artifact" else "none declared"]
    lines = [
        f"image       {doc['image']}",
        f"digest      {doc['digest']}",
        f"media type  {doc['mediaType']}",
        f"platforms   {', '.join(platforms)}",
    ]
    if doc["checks"]:
        width = max(len("platform"), *(len(c["platform"]) for c in doc["checks"]))
        lines += ["", f"{'platform':<{width}}  runnable  manifest pulled"]
        for c in doc["checks"]:
            lines.append(
                f"{c['platform']:<{width}}  {'yes' if c['runnable'] else 'no':<8}  {c['manifest'] or '-'}"
            )
    return "\n".join(lines)


def _registry_settings(args: argparse.Namespace, settings: config.Settings) -> config.RegistrySettings:
    if args.timeout is None:
        return settings.registry
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    return _replace(settings.registry, timeout_seconds=args.timeout)


async def _check_files(args: argparse.Namespace, settings: config.Settings) -> tuple[int, str]:
    """`archaudit check -f`: the manifest form lives in checkfiles; this only hands it the options."""
    if args.image is not None:
        raise UsageError(f"give IMAGE or -f, not both (IMAGE {args.image!r})")
    registry_settings = _registry_settings(args, settings)
    return await checkfiles.check_files(
        args,
        settings,
        registry_settings=registry_settings,
        registries=_registries(args.registries, registry_settings),
        keyring=_keyring(args.docker_config),
    )


async def check(args: argparse.Namespace, settings: config.Settings) -> tuple[int, str]:
    """Run `archaudit check`; returns (exit code, output)."""
    if args.files:
        return await _check_files(args, settings)
    if args.image is None:
        raise UsageError("check needs IMAGE, or -f PATH for manifests")
    if args.output not in ("text", "json") or args.nodes or args.fail_on:
        raise UsageError("-o sarif|github, --nodes and --fail-on need -f")
    nodes = _platforms(args.platform)
    try:
        ref = parse(args.image)
    except InvalidReference as e:
        raise UsageError(f"image {args.image!r}: {e}") from None
    registry_settings = _registry_settings(args, settings)
    credentials = _credentials(ref, args.docker_config)
    # The operator's chain with the user's own cloud identity (AWS profile or keys, GCP metadata on
    # a CI runner, Azure workload identity): after the docker config's credentials.
    cloud = CloudCredentials.from_settings(registry_settings)
    resolver = Resolver.from_settings(
        registry_settings,
        registries=_registries(args.registries, registry_settings),
        insecure=args.insecure_registry,
    )
    answer = NO_CLOUD
    try:
        answer = await cloud.for_image(ref)
        resolution = await resolver.resolve(ref, answer.after(credentials))
    except ResolutionError as e:
        raise answer.explain(e) from None
    finally:
        await resolver.aclose()
        await cloud.aclose()
    runtime = args.runtime or "containerd"
    doc = report(resolution.image, ref, list(zip(args.platform, nodes, strict=True)), runtime)
    code = EXIT_OK if all(c["runnable"] for c in doc["checks"]) else EXIT_NOT_RUNNABLE
    out = json.dumps(doc, indent=2) if args.output == "json" else render_text(doc, resolution.image.kind)
    return code, out


def _replace(s: config.RegistrySettings, **changes: Any) -> config.RegistrySettings:
    return dataclasses.replace(s, **changes)


# -- run


def _run_operator(argv: Sequence[str]) -> int:
    try:
        from archaudit import app  # the operator's kopf glue: heavy imports, only when asked for
    except ImportError as e:
        print(f"archaudit: error: the operator is not available in this build ({e})", file=sys.stderr)
        return EXIT_ERROR
    result = app.main(list(argv))
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        return _run_operator(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    if args.command == "readiness":
        return _readiness(args)
    try:
        settings = config.from_env()
        code, out = asyncio.run(check(args, settings))
    except (ArchauditError, ValueError) as e:  # UsageError, ResolutionError, ... (errors.py's tree)
        print(f"archaudit: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    print(out)
    return code


def _readiness(args: argparse.Namespace) -> int:
    from archaudit import readiness

    try:
        code, out = readiness.main(args)
    except readiness.ReadinessError as e:
        print(f"archaudit: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(out)
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
