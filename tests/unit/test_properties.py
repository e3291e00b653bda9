"""Properties of the pure core over generated input (hypothesis), and its "no I/O whatsoever" design goal.

Parsers meet registry bodies and user text: whatever arrives, they answer with a value or with their one
documented error, never anything else. The platform rules keep a few laws whatever the platform.
"""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from archaudit.core.errors import InvalidReference, ManifestError
from archaudit.core.manifests import (
    Document,
    ImageManifest,
    ImagePlatforms,
    Index,
    Schema1Manifest,
    parse_document,
    platform_from_config,
    platforms_of_index,
    platforms_of_manifest,
    sha256_digest,
)
from archaudit.core.platforms import (
    RUNTIMES,
    Fit,
    Platform,
    can_run,
    fit,
    normalize,
    select,
    windows_version_compatible,
)
from archaudit.core.reference import ImageReference, parse

EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------------------
# References


def reparses_to_itself(ref: ImageReference) -> None:
    again = parse(str(ref))
    assert again == ref
    assert str(again) == str(ref)
    assert parse(ref.familiar) == ref
    assert ref.registry
    assert ref.repository
    assert (ref.tag is None) <= (ref.digest is not None)  # no tag only when pinned


@EXAMPLES
@given(st.text(max_size=300))
def test_any_text_is_a_reference_or_invalid_reference(text: str) -> None:
    try:
        ref = parse(text)
    except InvalidReference:
        return
    reparses_to_itself(ref)


REFERENCE_ALPHABET = "abcAB09:/@._-+[]" + "sha256" + "\n é"


@EXAMPLES
@given(st.text(alphabet=REFERENCE_ALPHABET, max_size=80))
def test_reference_like_text_is_a_reference_or_invalid_reference(text: str) -> None:
    # The alphabet of the grammar makes near-misses likely, where a parser is most often wrong.
    try:
        ref = parse(text)
    except InvalidReference:
        return
    reparses_to_itself(ref)


PATH_COMPONENT = st.from_regex(r"[a-z0-9]{1,8}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,8}){0,2}", fullmatch=True)
HOST = st.one_of(
    st.just("localhost"),
    st.from_regex(r"[a-z0-9]{1,10}(?:\.[a-z0-9]{1,10}){1,3}", fullmatch=True),
    st.just("[::1]"),
)
REGISTRY = st.one_of(st.none(), st.tuples(HOST, st.one_of(st.none(), st.integers(1, 65535))))
TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}", fullmatch=True)
DIGEST = st.from_regex(r"[a-f0-9]{64}", fullmatch=True).map(lambda h: f"sha256:{h}")


@EXAMPLES
@given(
    REGISTRY,
    st.lists(PATH_COMPONENT, min_size=1, max_size=4),
    st.one_of(st.none(), TAG),
    st.one_of(st.none(), DIGEST),
)
def test_grammatical_references_parse(
    registry: tuple[str, int | None] | None, components: list[str], tag: str | None, digest: str | None
) -> None:
    path = "/".join(components)
    name = (
        path
        if registry is None
        else f"{registry[0]}{'' if registry[1] is None else f':{registry[1]}'}/{path}"
    )
    assume(len(path) <= 240 and not (registry is None and len(path) == 64))
    text = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse(text)
    reparses_to_itself(ref)
    assert ref.digest == digest
    assert ref.tag == (tag if tag or digest else "latest")
    assert str(ref).endswith(f"@{digest}" if digest else f":{tag or 'latest'}")
    if registry is not None:
        assert ref.registry == name.split("/", 1)[0]
        assert ref.repository == path


# --------------------------------------------------------------------------------------------------------
# Documents

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
MEDIA = st.sampled_from(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
        "text/html",
        "",
    ]
)
ANY_DIGEST = st.one_of(DIGEST, st.text(max_size=70))
PLATFORM_JSON = st.fixed_dictionaries(
    {},
    optional={
        "os": st.one_of(st.sampled_from(["linux", "windows", "unknown", ""]), JSON),
        "architecture": st.one_of(st.sampled_from(["amd64", "arm64", "arm", "unknown", "riscv64"]), JSON),
        "variant": st.one_of(st.sampled_from(["v7", "v8", "", "v8.2"]), JSON),
        "os.version": st.one_of(st.sampled_from(["10.0.20348.1", "10.0.17763.5"]), JSON),
        "os.features": st.one_of(st.lists(st.text(max_size=5), max_size=2), JSON),
    },
)
DESCRIPTOR_JSON = st.fixed_dictionaries(
    {"digest": ANY_DIGEST},
    optional={
        "mediaType": st.one_of(MEDIA, JSON),
        "size": st.one_of(st.integers(-5, 10**6), JSON),
        "platform": st.one_of(PLATFORM_JSON, JSON),
        "annotations": st.one_of(
            st.dictionaries(st.sampled_from(["vnd.docker.reference.type", "x"]), st.text(max_size=5)), JSON
        ),
    },
)
DOCUMENT_JSON = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.one_of(st.sampled_from([1, 2]), JSON),
        "mediaType": st.one_of(MEDIA, JSON),
        "manifests": st.one_of(st.lists(DESCRIPTOR_JSON, max_size=4), JSON),
        "config": st.one_of(DESCRIPTOR_JSON, JSON),
        "layers": st.one_of(st.lists(DESCRIPTOR_JSON, max_size=2), JSON),
        "architecture": st.one_of(st.sampled_from(["amd64", "arm"]), JSON),
        "signatures": JSON,
    },
)
NODES = st.sampled_from(["linux/amd64", "linux/arm64", "linux/arm/v7", "windows/amd64:10.0.20348"]).map(
    Platform.parse
)


def judge(document: Document, node: Platform) -> None:
    """Whatever a document parsed to must turn into platforms and a verdict without surprises."""
    image: ImagePlatforms
    if isinstance(document, Index):
        try:
            image = platforms_of_index(document, sha256_digest(b"x"))
        except ManifestError:
            assert document.nested_index_digests()  # only a nested index nobody fetched may fail here
            return
    else:
        image = platforms_of_manifest(document, sha256_digest(b"x"), None)
    verdict, pulled = image.runnable(node, ("containerd-strict", "containerd"))
    assert (verdict is Fit.NO) == (pulled is None)
    assert pulled is None or pulled in {e.digest for e in image.entries}


@EXAMPLES
@given(st.binary(max_size=2000), st.one_of(st.none(), MEDIA, st.text(max_size=30)))
def test_any_bytes_are_a_document_or_manifest_error(raw: bytes, content_type: str | None) -> None:
    try:
        document = parse_document(raw, content_type)
    except ManifestError:
        return
    assert isinstance(document, Index | ImageManifest | Schema1Manifest)


@EXAMPLES
@given(JSON, st.one_of(st.none(), MEDIA))
def test_any_json_is_a_document_or_manifest_error(value: Any, content_type: str | None) -> None:
    try:
        document = parse_document(json.dumps(value).encode(), content_type)
    except ManifestError:
        return
    assert isinstance(document, Index | ImageManifest | Schema1Manifest)


@EXAMPLES
@given(DOCUMENT_JSON, st.one_of(st.none(), MEDIA), NODES)
def test_manifest_shaped_json_is_judged_or_refused(
    value: dict[str, Any], content_type: str | None, node: Platform
) -> None:
    try:
        document = parse_document(json.dumps(value).encode(), content_type)
    except ManifestError:
        return
    judge(document, node)


@SOME
@given(st.one_of(JSON, PLATFORM_JSON))
def test_any_config_is_a_platform_none_or_manifest_error(value: Any) -> None:
    try:
        platform = platform_from_config(json.dumps(value).encode())
    except ManifestError:
        return
    assert platform is None or platform.architecture


# --------------------------------------------------------------------------------------------------------
# Platform laws

LINUX_NODES = [
    "linux/amd64",
    "linux/amd64/v2",
    "linux/amd64/v3",
    "linux/386",
    "linux/arm/v5",
    "linux/arm/v6",
    "linux/arm/v7",
    "linux/arm/v8",
    "linux/arm64",
    "linux/arm64/v8.2",
    "linux/arm64/v9",
    "linux/arm64/v9.3",
    "linux/riscv64",
    "linux/s390x",
    "linux/ppc64le",
]
IMAGES = [
    *LINUX_NODES,
    "linux/x86_64",
    "linux/i386",
    "linux/aarch64",
    "linux/arm64/v8",
    "linux/arm64/v8.1",
    "linux/arm64/v8.9",
    "linux/arm",
    "linux/armhf",
    "linux/armel",
    "linux/arm/7",
    "linux/arm/armv7",
    "linux/amd64/v4",
    "linux/mips64le",
    "windows/amd64",
    "unknown/unknown",
]
LINUX_NODE = st.sampled_from(LINUX_NODES).map(Platform.parse)
IMAGE = st.sampled_from(IMAGES).map(Platform.parse)
CANDIDATES = st.lists(st.one_of(IMAGE, st.none()), max_size=8)
RUNTIME = st.sampled_from(RUNTIMES)


@pytest.mark.parametrize("text", LINUX_NODES)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_node_runs_an_image_built_for_it(text: str, runtime: str) -> None:
    assert can_run(Platform.parse(text), Platform.parse(text), runtime)


@SOME
@given(IMAGE, RUNTIME)
def test_normalize_is_idempotent(image: Platform, runtime: str) -> None:
    once = normalize(image, runtime)
    assert normalize(once, runtime) == once


@SOME
@given(LINUX_NODE, IMAGE)
def test_strict_is_never_more_lenient(node: Platform, image: Platform) -> None:
    if can_run(node, image, "containerd-strict"):
        assert can_run(node, image, "containerd")


@EXAMPLES
@given(LINUX_NODE, CANDIDATES, RUNTIME)
def test_select_picks_a_runnable_entry_or_says_none_runs(
    node: Platform, candidates: list[Platform | None], runtime: str
) -> None:
    chosen = select(node, candidates, runtime)
    runnable = [i for i, c in enumerate(candidates) if c is not None and can_run(node, c, runtime)]
    if chosen is None:
        assert not runnable
        assert None not in candidates
    elif candidates[chosen] is None:
        assert not runnable  # the last resort comes after every match
    else:
        assert chosen in runnable


@EXAMPLES
@given(
    LINUX_NODE,
    CANDIDATES,
    st.sampled_from(["containerd", "containerd-strict", "containerd-1.7"]),
    st.randoms(),
)
def test_the_order_of_the_list_decides_only_between_equals(
    node: Platform, candidates: list[Platform | None], runtime: str, rnd: random.Random
) -> None:
    shuffled = list(candidates)
    rnd.shuffle(shuffled)
    first, second = select(node, candidates, runtime), select(node, shuffled, runtime)
    assert (first is None) == (second is None)
    if first is not None and second is not None:
        a, b = candidates[first], shuffled[second]
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert normalize(a, runtime) == normalize(b, runtime)


@SOME
@given(LINUX_NODE, IMAGE, RUNTIME)
def test_fit_with_one_profile_is_can_run(node: Platform, image: Platform, runtime: str) -> None:
    expected = (Fit.RUNS, 0) if can_run(node, image, runtime) else (Fit.NO, None)
    assert fit(node, [image], (runtime,)) == expected


@SOME
@given(LINUX_NODE, CANDIDATES)
def test_a_lenient_later_profile_only_adds_at_risk(node: Platform, candidates: list[Platform | None]) -> None:
    strict_only = fit(node, candidates, ("containerd-strict",))
    both = fit(node, candidates, ("containerd-strict", "containerd"))
    if strict_only[0] is Fit.RUNS:
        assert both == strict_only
    else:
        assert both[0] in (Fit.AT_RISK, Fit.NO)


WINDOWS_VERSION = st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(0, 70000)).map(
    lambda v: ".".join(map(str, v))
)


@SOME
@given(WINDOWS_VERSION)
def test_a_windows_build_runs_its_own_images(version: str) -> None:
    assert windows_version_compatible(version, version + ".1")


@SOME
@given(st.one_of(WINDOWS_VERSION, st.text(max_size=20)), st.one_of(WINDOWS_VERSION, st.text(max_size=20)))
def test_windows_versions_never_raise(node: str, image: str) -> None:
    assert windows_version_compatible(node, image) in (True, False)


@SOME
@given(st.text(max_size=40))
def test_platform_parse_returns_a_platform_or_value_error(text: str) -> None:
    try:
        platform = Platform.parse(text)
    except ValueError:
        return
    assert Platform.parse(str(platform)) == platform


# --------------------------------------------------------------------------------------------------------
# "Contains no I/O code whatsoever": a design goal with a test

CORE_DIR = Path(__file__).resolve().parents[2] / "operator" / "archaudit" / "core"
# Discovered, not listed: a module added to the core is held to the rule the day it lands.
CORE = sorted(p.stem for p in CORE_DIR.glob("*.py") if p.stem != "__init__")
# The modules the core must have; one moved away or renamed fails here instead of testing nothing.
EXPECTED_CORE = {
    "reference",
    "platforms",
    "manifests",
    "errors",
    "scheduling",
    "policy",
    "workloads",
    "reports",
    "credentials",
    "cloud",
    "mirrors",
    "auth",
    "config",
    "placement",
    "correlator",
    "warnings",
}
IO_MODULES = {
    "socket",
    "ssl",
    "asyncio",
    "selectors",
    "subprocess",
    "http",
    "urllib.request",
    "aiohttp",
    "kopf",
    "kubernetes",
    "prometheus_client",
    "requests",
    "multiprocessing",
    "threading",
    "pathlib",
    "archaudit.adapters",
}


def core_module(name: str) -> Path:
    path = CORE_DIR / f"{name}.py"
    assert path.exists(), f"archaudit.core.{name} is missing: the purity test would test nothing"
    return path


def test_the_core_holds_the_modules_the_design_names() -> None:
    assert set(CORE) >= EXPECTED_CORE, f"missing from archaudit/core: {sorted(EXPECTED_CORE - set(CORE))}"


def imported_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def is_io(name: str) -> bool:
    return any(name == io or name.startswith(io + ".") for io in IO_MODULES)


@pytest.mark.parametrize("name", CORE)
def test_core_modules_import_no_io_modules(name: str) -> None:
    tree = ast.parse(core_module(name).read_text(), filename=f"{name}.py")
    offending = sorted(n for n in imported_names(tree) if is_io(n))
    assert offending == [], f"archaudit.core.{name} imports I/O modules: {offending}"
    calls = sorted(
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"open", "input"}
    )
    assert calls == [], f"archaudit.core.{name} calls {calls}"


def test_importing_the_core_loads_no_io_module() -> None:
    # In a fresh interpreter, so that modules this test process already holds do not hide anything.
    present = [f"archaudit.core.{name}" for name in CORE]
    program = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        f"for name in {present!r}: __import__(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert {"archaudit.core.reference", "archaudit.core.platforms", "archaudit.core.manifests"} <= set(loaded)
    assert sorted(n for n in loaded if is_io(n)) == []
