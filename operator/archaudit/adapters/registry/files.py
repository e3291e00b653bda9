"""Configuration files the registry client reads at start-up (the core parses, this reads)."""

from __future__ import annotations

from pathlib import Path

from archaudit.core.mirrors import RegistriesConfig

__all__ = ["registries_from_file"]


def registries_from_file(path: str | Path) -> RegistriesConfig:
    """Read and parse a k3s registries.yaml file (OSError if it cannot be read)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return RegistriesConfig.load(text)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
