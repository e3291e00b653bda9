"""The exception tree of archaudit.core.errors: complete, drawn, and what callers catch."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import archaudit
from archaudit.core import credentials, errors
from archaudit.core.errors import ArchauditError, CredentialsError, Reason, ResolutionError, UsageError


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def _import_everything() -> None:
    """Every module that could define an ArchauditError (the operator's kopf glue needs kopf: skip it)."""
    for info in pkgutil.walk_packages(archaudit.__path__, "archaudit."):
        if info.name.endswith("__main__"):
            continue  # runs the CLI when imported
        try:
            importlib.import_module(info.name)
        except ImportError:
            continue


def test_every_archaudit_error_is_defined_in_errors_and_drawn_in_its_docstring() -> None:
    _import_everything()
    tree = errors.__doc__ or ""
    for cls in _all_subclasses(ArchauditError):
        if not cls.__module__.startswith("archaudit."):
            continue  # a test's own subclass
        assert cls.__module__ == "archaudit.core.errors", f"{cls.__qualname__} is defined in {cls.__module__}"
        assert f" {cls.__name__} " in tree or f" {cls.__name__}\n" in tree, f"{cls.__name__} is not drawn"
        assert cls.__name__ in errors.__all__


def test_credentials_error_keeps_its_old_home_and_its_value_error_base() -> None:
    assert credentials.CredentialsError is CredentialsError
    with pytest.raises(ValueError, match="not valid JSON"):
        credentials.keyring_from_docker_config(b"{")


def test_the_cli_reports_a_usage_error_on_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from archaudit import cli

    assert cli.main(["check", "busybox", "--platform", "linux"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("archaudit: error: --platform 'linux'")
    assert err.count("\n") == 1
    assert issubclass(UsageError, ArchauditError)


def test_resolution_errors_print_their_reason_first() -> None:
    assert str(ResolutionError(Reason.AUTH, "x: refused")) == "auth: x: refused"
