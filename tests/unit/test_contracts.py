"""The public names other tools and tests rely on (DESIGN.md "Contracts"): moving code must not move them.

`archaudit.platforms` and `archaudit.reference` are re-exports of the core's modules; the core's
package layout may change, these import paths and the signatures DESIGN.md names may not.
"""

from __future__ import annotations

import inspect

import archaudit.core.platforms
import archaudit.core.reference
import archaudit.platforms as platforms
import archaudit.reference as reference


def test_archaudit_platforms_keeps_its_public_names() -> None:
    assert set(platforms.__all__) >= {"Platform", "can_run", "select", "Fit", "RUNTIMES", "normalize"}
    for name in platforms.__all__:
        assert getattr(platforms, name) is getattr(archaudit.core.platforms, name)
    assert set(platforms.RUNTIMES) >= {"containerd", "containerd-strict", "containerd-1.7", "cri-o"}


def test_platforms_signatures_as_designed() -> None:
    assert platforms.Platform.parse("linux/arm/v7") == platforms.Platform("linux", "arm", "v7")
    assert list(inspect.signature(platforms.Platform).parameters) == [
        "os",
        "architecture",
        "variant",
        "os_version",
        "os_features",
    ]
    can_run = inspect.signature(platforms.can_run).parameters
    assert list(can_run)[:2] == ["node", "image"]
    assert can_run["runtime"].default == "containerd"
    select = inspect.signature(platforms.select).parameters
    assert list(select)[:2] == ["node", "candidates"]
    assert select["runtime"].default == "containerd"


def test_archaudit_reference_keeps_its_public_names() -> None:
    assert set(reference.__all__) >= {"parse", "ImageReference", "InvalidReference"}
    for name in reference.__all__:
        assert getattr(reference, name) is getattr(archaudit.core.reference, name)
    ref = reference.parse("busybox")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "docker.io",
        "library/busybox",
        "latest",
        None,
    )
    assert str(ref) == "docker.io/library/busybox:latest"
    assert issubclass(reference.InvalidReference, ValueError)
