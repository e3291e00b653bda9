"""The composite GitHub Action at the repository root (action.yml), and its use by the release workflow.

actionlint (test_chart.py) checks that release.yml calls `./` with inputs action.yml declares; here the
action's own shell is run through the real shellcheck, and its contract with users is pinned. The step
that runs archaudit is executed for real in tests/integration/test_cli_check_files.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ACTION = REPO / "action.yml"


def action() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(ACTION.read_text())
    return doc


def shell_steps() -> list[dict[str, Any]]:
    return [s for s in action()["runs"]["steps"] if "run" in s]


def test_inputs_and_outputs_are_the_contract() -> None:
    doc = action()
    assert doc["runs"]["using"] == "composite"
    assert {"manifests", "images", "platforms", "nodes", "fail-on", "format"} <= set(doc["inputs"])
    assert doc["inputs"]["format"]["default"] == "github"
    assert "exit-code" in doc["outputs"]
    uploads = [
        s
        for s in doc["runs"]["steps"]
        if str(s.get("uses", "")).startswith("github/codeql-action/upload-sarif")
    ]
    assert len(uploads) == 1
    assert "inputs.format == 'sarif'" in uploads[0]["if"]


def test_inputs_reach_scripts_only_through_the_environment() -> None:
    """`${{ inputs.x }}` inside run: is script injection; every script reads env vars instead."""
    for step in shell_steps():
        assert "${{" not in step["run"], step["name"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (make deps)")
def test_scripts_pass_shellcheck(tmp_path: Path) -> None:
    for i, step in enumerate(shell_steps()):
        script = tmp_path / f"step{i}.sh"
        script.write_text("#!/usr/bin/env bash\n" + step["run"])
        done = subprocess.run(
            ["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{step['name']}:\n{done.stdout}{done.stderr}"


def test_release_checks_its_own_chart_with_the_action() -> None:
    release = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
    job = release["jobs"]["chart-check"]
    assert job["needs"] == "image"
    steps = job["steps"]
    render = next(s for s in steps if "helm template" in s.get("run", ""))
    assert re.search(r"helm template \S+ charts/archaudit", render["run"])
    used = next(s for s in steps if s.get("uses") == "./")
    assert used["with"]["platforms"] == "${{ env.PLATFORMS }}"
    assert release["env"]["PLATFORMS"] == "linux/amd64,linux/arm64,linux/arm/v7"
    assert used["with"]["manifests"] in render["run"]
    assert "chart-check" in release["jobs"]["chart"]["needs"]  # no chart is published that failed it


def test_readme_workflow_snippet_passes_actionlint(tmp_path: Path) -> None:
    """The "Check in CI" snippet is a workflow people copy: it must lint as one."""
    from tests.unit.test_chart import actionlint

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Check in CI", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    assert "uses: archaudit/archaudit@" in snippet
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "snippet.yml").write_text("name: snippet\non: push\n" + snippet)
    done = subprocess.run(
        [str(actionlint()), "-no-color", "-oneline", str(workflows / "snippet.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
