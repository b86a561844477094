"""Repository rules a reviewer would otherwise check by hand: lint, module size, CI runs the README command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sdk", "training", "export")


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    out = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_module_past_800_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 800}
    assert long == {}


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    marker = readme.index("<!-- test-command -->")
    command = readme[marker + 2]
    assert "pip install" in command and "pytest" in command
    script = (ROOT / ".ci" / "run").read_text()
    extracted = subprocess.run(
        ["bash", "-c", "grep -A2 '<!-- test-command -->' README.md | sed -n '3p'"], capture_output=True, text=True,
        cwd=ROOT).stdout.strip()
    assert extracted == command
    assert 'bash -c "$cmd"' in script


def test_sdk_never_imports_training_or_export() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "sdk").rglob("*.py")
                 if "covip.training" in p.read_text() or "covip.export" in p.read_text()]
    assert offenders == []


def test_every_package_folder_is_in_the_distribution() -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(meta["packages"])
    mapping = meta["package-dir"]
    found = set()
    for pkg_name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((pkg_name, *rel)))
    assert found == listed  # a wheel would silently lack any package missing from the list


def test_no_package_imports_another_packages_private_names() -> None:
    """training, export and the benchmarks reach the SDK (and each other) through public names only
    (covip.sdk.support is the SDK's seam for them), so private modules can change freely."""
    import ast

    offenders = []
    for folder in (*PACKAGES, "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("covip."):
                    modules, names = [node.module], [a.name for a in node.names]
                elif isinstance(node, ast.Import):
                    modules, names = [a.name for a in node.names if a.name.startswith("covip.")], []
                else:
                    continue
                for module in modules:
                    parts = module.split(".")[1:]
                    if parts and parts[0] != folder and (any(p.startswith("_") for p in parts)
                                                         or any(n.startswith("_") for n in names)):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module} {names}")
    assert offenders == []
