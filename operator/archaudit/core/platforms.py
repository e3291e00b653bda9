"""Which image platform a node's container runtime would run: the rules of containerd and CRI-O, in Python.

archaudit's verdicts are only worth something if they agree, case for case, with the runtime on the node
(docs: spec/platforms.md). The runtimes differ, so each behaviour is a named *profile*:

    containerd          containerd 2.x pulling in the CRI process (`platforms.Only(node)`): normalize, then
                        walk the node's vector (amd64 -> 386, arm/v7 -> v6 -> v5, arm64 -> arm/v8..v5 ...)
    containerd-strict   containerd 2.x pulling through the transfer service (`OnlyStrict`): exact match
                        after normalization, no fallbacks
    containerd-1.7      containerd 1.x (platforms v0.2.1): like `containerd`, but arm64 v8.x/v9.x are not
                        understood and os.features are ignored
    cri-o               containers/image: no normalization, exact strings, its own variant table

A node whose profile is not known for sure (containerd 2.x: the pull path depends on its config) is
judged with several profiles by `fit`: the first profile says what surely runs, the later ones what runs
only if the node is configured for it.

This module is pure: it contains no I/O code whatsoever (tested in tests/unit/test_properties.py).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

__all__ = [
    "DEFAULT_RUNTIME",
    "LABEL_ARCH",
    "LABEL_OS",
    "LABEL_PULL_MODE",
    "LABEL_VARIANT",
    "LABEL_WINDOWS_BUILD",
    "PULL_MODES",
    "RUNTIMES",
    "Fit",
    "Platform",
    "can_run",
    "fit",
    "node_platform",
    "normalize",
    "profiles_for",
    "select",
    "windows_version_compatible",
]

RUNTIMES = ("containerd", "containerd-strict", "containerd-1.7", "cri-o")
DEFAULT_RUNTIME = "containerd"
PULL_MODES = ("local", "transfer")

LABEL_OS = "kubernetes.io/os"
LABEL_ARCH = "kubernetes.io/arch"
LABEL_VARIANT = "archaudit.io/variant"  # labels carry no variant: a Raspberry Pi Zero says "v6" here
LABEL_WINDOWS_BUILD = "node.kubernetes.io/windows-build"
LABEL_PULL_MODE = "archaudit.io/containerd-pull"  # "local" | "transfer": how a containerd 2.x node pulls

_COMPONENT = re.compile(r"[A-Za-z0-9_.-]+")
_CONTAINERD_SPECIFIER = re.compile(r"([A-Za-z0-9_-]+)\(([A-Za-z0-9_.-]*)\)")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Platform:
    """An OCI platform: an index entry's `platform` object, an image config's top level, or a node."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Read `os/arch[/variant][:os.version]`, e.g. `linux/arm/v7` or `windows/amd64:10.0.20348`.

        containerd's `windows(10.0.20348)/amd64` form is accepted too. Values are kept as written (no
        normalization): `linux/aarch64` and `linux/arm64` are different strings to CRI-O.
        """
        spec = text.strip()
        os_version = ""
        if ":" in spec:
            spec, os_version = spec.split(":", 1)
            if not _COMPONENT.fullmatch(os_version):
                raise ValueError(
                    f"platform {text!r}: os.version {os_version!r} is not a version like 10.0.20348"
                )
        parts = spec.split("/")
        if len(parts) < 2:
            raise ValueError(f"platform {text!r}: expected os/architecture[/variant], e.g. linux/arm64")
        if len(parts) > 3:
            raise ValueError(f"platform {text!r}: too many '/' parts; expected os/architecture[/variant]")
        os_part = parts[0]
        wrapped = _CONTAINERD_SPECIFIER.fullmatch(os_part)
        if wrapped:
            if os_version:
                raise ValueError(f"platform {text!r}: os.version given twice")
            os_part, os_version = wrapped.group(1), wrapped.group(2)
        for name, value in zip(("os", "architecture", "variant"), [os_part, *parts[1:]], strict=False):
            if not _COMPONENT.fullmatch(value):
                raise ValueError(
                    f"platform {text!r}: {name} {value!r} must be letters, digits, '_', '.' or '-'"
                )
        variant = parts[2] if len(parts) == 3 else ""
        return cls(os=os_part, architecture=parts[1], variant=variant, os_version=os_version)

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        if self.variant:
            text += f"/{self.variant}"
        if self.os_version:
            text += f":{self.os_version}"
        return text

    def normalized(self, runtime: str = DEFAULT_RUNTIME) -> Platform:
        """This platform as `runtime` compares it; see `normalize`."""
        return normalize(self, runtime)


class Fit(enum.StrEnum):
    """How sure archaudit is that a node runs an image."""

    RUNS = "runs"
    AT_RISK = (
        "at-risk"  # runs only if the node is configured a certain way, or the entry's platform is unknown
    )
    NO = "no"


# ---------------------------------------------------------------------------------------------------------
# Normalization (containerd normalize.go)


def normalize(p: Platform, runtime: str = DEFAULT_RUNTIME) -> Platform:
    """The canonical form `runtime` compares: aarch64 -> arm64, arm -> arm/v7, arm64/v8 -> arm64.

    An empty os stays empty here (containerd reads it as "the node's own os", which only matching knows).
    CRI-O does not normalize at all: the platform comes back unchanged.
    """
    _check_runtime(runtime)
    if runtime == "cri-o":
        return p
    architecture, variant = _normalize_arch(p.architecture, p.variant, legacy=runtime == "containerd-1.7")
    os = p.os.lower()
    if os == "macos":
        os = "darwin"
    return Platform(os, architecture, variant, p.os_version, tuple(sorted(set(p.os_features))))


def _normalize_arch(architecture: str, variant: str, *, legacy: bool) -> tuple[str, str]:
    architecture, variant = architecture.lower(), variant.lower()
    match architecture:
        case "i386":
            return "386", ""
        case "x86_64" | "x86-64" | "amd64":
            return "amd64", "" if variant == "v1" else variant
        case "aarch64" | "arm64":
            return "arm64", _normalize_arm64_variant(variant, legacy=legacy)
        case "armhf":
            return "arm", "v7"
        case "armel":
            return "arm", "v6"
        case "arm":
            if variant in ("", "7"):
                return "arm", "v7"
            if variant in ("5", "6", "8"):
                return "arm", "v" + variant
            return "arm", variant
    return architecture, variant


def _normalize_arm64_variant(variant: str, *, legacy: bool) -> str:
    if legacy:  # platforms v0.2.1 knew only v8
        return "" if variant in ("8", "v8") else variant
    if variant in ("8", "v8", "v8.0"):
        return ""
    if variant in ("9", "9.0", "v9.0"):
        return "v9"
    return variant


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime profile {runtime!r}; expected one of {', '.join(RUNTIMES)}")


# ---------------------------------------------------------------------------------------------------------
# Vectors: the platforms a node accepts, most preferred first (containerd compare.go)


def _amd64_vector(node: Platform) -> list[Platform]:
    # containerd never detects micro-architecture levels: a plain amd64 node takes no amd64/v2..v4 entry
    vector = [node]
    level = _version_number(node.variant)
    if level is not None and level > 1:
        vector += [replace(node, variant="" if n == 1 else f"v{n}") for n in range(level - 1, 0, -1)]
    return [*vector, replace(node, architecture="386", variant="")]


def _arm_vector(node: Platform) -> list[Platform]:
    vector = [node]
    version = _version_number(node.variant)
    if version is not None and version > 5:
        vector += [replace(node, variant=f"v{n}") for n in range(version - 1, 4, -1)]
    return vector


def _version_number(variant: str) -> int | None:
    digits = variant.removeprefix("v")
    return int(digits) if _DIGITS.fullmatch(digits) else None


def _arm64_variants() -> dict[str, tuple[str, ...]]:
    """The arm64 variant table: node variant -> the arm64 variants it runs, newest first.

    Armv8.x runs v8.0..v8.x; Armv9.x runs v9.0..v9.x and Armv8.0..v8.(x+5) (v9.0 branched from v8.5),
    capped at v8.9. Minors are one digit, as containerd parses them. The names are normalized ones
    (`v8` is the empty variant, `v9.0` is `v9`).
    """

    def name(major: int, minor: int) -> str:
        if (major, minor) == (8, 0):
            return ""
        return f"v{major}" if minor == 0 else f"v{major}.{minor}"

    table: dict[str, tuple[str, ...]] = {}
    for minor in range(10):
        table[name(8, minor)] = tuple(name(8, m) for m in range(minor, -1, -1))
    for minor in range(10):
        v9 = tuple(name(9, m) for m in range(minor, -1, -1))
        table[name(9, minor)] = v9 + tuple(name(8, m) for m in range(min(minor + 5, 9), -1, -1))
    return table


_ARM64_VARIANTS = _arm64_variants()
_ARM_ON_ARM64 = ("v8", "v7", "v6", "v5")  # arm64 nodes run 32-bit arm images


def _arm64_vector(node: Platform, *, legacy: bool) -> list[Platform]:
    if legacy:  # v0.2.1: the node itself, then the arm vector of its variant
        arm = replace(node, architecture="arm", variant=node.variant or "v8")
        return [node, *_arm_vector(arm)]
    variants = _ARM64_VARIANTS.get(node.variant)
    if variants is None:
        return []  # containerd: a variant it does not know accepts nothing
    return [replace(node, variant=v) for v in variants] + [
        replace(node, architecture="arm", variant=v) for v in _ARM_ON_ARM64
    ]


def _vector(node: Platform, runtime: str) -> list[Platform]:
    """The normalized node's accepted platforms, in preference order, for a containerd profile."""
    if runtime == "containerd-strict" or node.os == "windows":
        return [node]  # Windows nodes: exact match plus the os.version rule, no 386 fallback
    match node.architecture:
        case "amd64":
            return _amd64_vector(node)
        case "arm":
            return _arm_vector(node)
        case "arm64":
            return _arm64_vector(node, legacy=runtime == "containerd-1.7")
    return [node]


def _containerd_matches(wanted: Platform, image: Platform, runtime: str) -> bool:
    """containerd's matcher: `wanted` and `image` are normalized, the image's empty os already filled in."""
    if (wanted.os, wanted.architecture, wanted.variant) != (image.os, image.architecture, image.variant):
        return False
    if wanted.os == "windows" and not windows_version_compatible(wanted.os_version, image.os_version):
        return False
    if runtime == "containerd-1.7":
        return True  # os.features arrived with containerd 2.3
    return set(image.os_features) <= set(wanted.os_features)


def _containerd_rank(node: Platform, image: Platform, runtime: str) -> int | None:
    node = normalize(node, runtime)
    image = normalize(replace(image, os=image.os or node.os), runtime)
    for position, wanted in enumerate(_vector(node, runtime)):
        if _containerd_matches(wanted, image, runtime):
            return position
    return None


# ---------------------------------------------------------------------------------------------------------
# CRI-O (containers/image pkg/platform): exact strings, its own variant table

_CRIO_VARIANTS = {"arm": ("v8", "v7", "v6", "v5"), "arm64": ("v8",)}


def _crio_wanted(node: Platform) -> list[tuple[str, str, str]]:
    # containers/image's WantedPlatforms: the node's strings as given, never normalized (armel stays
    # armel, aarch64 stays aarch64). A node that names a variant walks the table down from it and then
    # takes "" last; a node that names none takes "" FIRST and then the whole table, most capable
    # first: an arm node without a variant prefers a plain `arm` entry, then arm/v8, before arm/v7.
    table = _CRIO_VARIANTS.get(node.architecture, ())
    if node.variant:
        start = table.index(node.variant) if node.variant in table else None
        variants = [*(table[start:] if start is not None else (node.variant,)), ""]
    else:
        variants = ["", *table]
    return [(node.os, node.architecture, v) for v in variants]


def _crio_rank(node: Platform, image: Platform) -> int | None:
    key = (image.os, image.architecture, image.variant)
    wanted = _crio_wanted(node)
    return wanted.index(key) if key in wanted else None


# ---------------------------------------------------------------------------------------------------------
# Public decisions


_LAST_RESORT = 1 << 30  # an entry without a platform: ranked behind every vector position


def _rank(node: Platform, image: Platform, runtime: str) -> int | None:
    if runtime == "cri-o":
        return _crio_rank(node, image)
    return _containerd_rank(node, image, runtime)


def can_run(node: Platform, image: Platform, runtime: str = DEFAULT_RUNTIME) -> bool:
    """Whether `runtime` on `node` accepts an image entry declaring `image`."""
    _check_runtime(runtime)
    return _rank(node, image, runtime) is not None


def select(
    node: Platform, candidates: Sequence[Platform | None], runtime: str = DEFAULT_RUNTIME
) -> int | None:
    """The index of the entry `runtime` on `node` would pull, or None ("no match for platform in manifest").

    Entries are ordered by their position in the node's preference vector (earlier wins); among equals the
    first listed wins. An entry without a platform is a last resort, after every entry that matches:
    containerd sorts such entries last and CRI-O takes one only when nothing else matched.
    """
    _check_runtime(runtime)
    best: tuple[int, int] | None = None  # (rank, index)
    for index, candidate in enumerate(candidates):
        rank = _LAST_RESORT if candidate is None else _rank(node, candidate, runtime)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, index)
    return None if best is None else best[1]


def fit(
    node: Platform, candidates: Sequence[Platform | None], profiles: Sequence[str]
) -> tuple[Fit, int | None]:
    """Judge `candidates` on `node` with `profiles` in order (see `profiles_for`).

    RUNS with the selected index when the first profile selects an entry; AT_RISK with the index when only
    a later profile does; NO, None when none does. An entry selected only as the last resort (it declares
    no platform) is at most AT_RISK: the runtime would pull it, whether it runs is unknown.
    """
    if not profiles:
        raise ValueError("fit needs at least one runtime profile")
    return _fit(node, tuple(candidates), tuple(profiles))


# Every admission review asks this for each (node platform, image entries, profiles): a cluster has a
# handful of node platforms and images are few, so the answers repeat. All inputs are frozen values.
@functools.lru_cache(maxsize=16384)
def _fit(
    node: Platform, candidates: tuple[Platform | None, ...], profiles: tuple[str, ...]
) -> tuple[Fit, int | None]:
    for position, profile in enumerate(profiles):
        index = select(node, candidates, profile)
        if index is not None:
            sure = position == 0 and candidates[index] is not None
            return (Fit.RUNS if sure else Fit.AT_RISK), index
    return Fit.NO, None


# ---------------------------------------------------------------------------------------------------------
# Windows os.version (containerd platform_windows_compat.go)

_WS2022 = 20348
_LTSC_BUILDS = (_WS2022, 26100)  # Windows Server 2022, 2025: stable-ABI long-term releases


def _windows_version(text: str) -> tuple[int, int, int] | None:
    parts = text.split(".")
    if len(parts) < 3 or not all(_DIGITS.fullmatch(part) for part in parts[:3]):
        return None
    major, minor, build = (int(part) for part in parts[:3])
    if major > 0xFF or minor > 0xFF or build > 0xFFFF:  # containerd reads uint8.uint8.uint16
        return None
    return major, minor, build


def windows_version_compatible(node_version: str, image_version: str) -> bool:
    """Whether a Windows node of `node_version` runs a container image of `image_version` (process isolation).

    Either side empty or unparsable: compatible. Otherwise major.minor must be equal; a node older than
    Windows Server 2022 needs the same build; a newer node runs images from the newest LTSC build strictly
    below its own (20348 if none) up to its own build.
    """
    node, image = _windows_version(node_version), _windows_version(image_version)
    if node is None or image is None:
        return True
    if node[:2] != image[:2]:
        return False
    node_build, image_build = node[2], image[2]
    if node_build < _WS2022:
        return image_build == node_build
    oldest = max((b for b in _LTSC_BUILDS if b < node_build), default=_WS2022)
    return oldest <= image_build <= node_build


# ---------------------------------------------------------------------------------------------------------
# Nodes


def profiles_for(container_runtime_version: str, pull_mode: str | None = None) -> tuple[str, ...]:
    """The runtime profiles to judge a node by, from `status.nodeInfo.containerRuntimeVersion`.

    `containerd://1.x` -> containerd-1.7; `cri-o://...` -> cri-o; `containerd://2.x` (and later) depends on
    how the node pulls: `pull_mode` "local" -> containerd, "transfer" -> containerd-strict, unknown ->
    strict first (what surely runs), then containerd (what runs if the node pulls locally). Anything
    else -> containerd.
    """
    scheme, _, version = container_runtime_version.strip().partition("://")
    scheme = scheme.lower()
    if scheme == "cri-o":
        return ("cri-o",)
    if scheme != "containerd":
        return ("containerd",)
    major = _DIGITS.match(version.strip().removeprefix("v"))
    if major is None:
        return ("containerd",)
    if int(major.group()) < 2:
        return ("containerd-1.7",)
    mode = (pull_mode or "").strip().lower()
    if mode == "local":
        return ("containerd",)
    if mode == "transfer":
        return ("containerd-strict",)
    return ("containerd-strict", "containerd")


def node_platform(labels: Mapping[str, str], node_info: Mapping[str, str] | None = None) -> Platform:
    """A node's platform, normalized: `kubernetes.io/os`/`arch` labels, falling back to `status.nodeInfo`.

    Labels carry no variant, so the variant comes from the `archaudit.io/variant` label, else the usual
    one (arm -> v7, arm64 -> v8, which normalizes to empty). A Windows node's os.version is its
    `node.kubernetes.io/windows-build` label (falling back to nodeInfo.kernelVersion, which Windows
    kubelets report as the build). Raises ValueError when neither source names the os and architecture.
    """
    info = node_info or {}
    os = labels.get(LABEL_OS) or labels.get("beta.kubernetes.io/os") or info.get("operatingSystem", "")
    arch = labels.get(LABEL_ARCH) or labels.get("beta.kubernetes.io/arch") or info.get("architecture", "")
    if not os or not arch:
        raise ValueError(
            f"node has no {LABEL_OS}/{LABEL_ARCH} labels nor status.nodeInfo operatingSystem/architecture"
        )
    os_version = ""
    if os.lower() == "windows":
        os_version = labels.get(LABEL_WINDOWS_BUILD) or info.get("kernelVersion", "")
        if _windows_version(os_version) is None:
            os_version = ""
    return normalize(Platform(os, arch, labels.get(LABEL_VARIANT, "").strip(), os_version), "containerd")
