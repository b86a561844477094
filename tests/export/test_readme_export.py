"""The README's "Export for laptops" commands, run verbatim from a fresh working directory.

They use relative paths (``runs/tiny``, ``exports/tiny``) the way a newcomer types them; every path must be
resolved before it reaches a subprocess that runs elsewhere (llama.cpp's converter runs in its own folder).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_block(heading: str) -> list[str]:
    """The shell commands of the first fenced block after ``heading`` (comments stripped)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(heading)
    fence = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    end = next(i for i in range(fence + 1, len(lines)) if lines[i].startswith("```"))
    out = []
    for line in lines[fence + 1:end]:
        command = line.split("  #")[0].strip()
        if command and not command.startswith("#"):
            out.append(command)
    return out


def test_the_readme_export_commands_run_verbatim_with_relative_paths(tmp_path: Path) -> None:
    commands = _readme_block("## Export for laptops (GGUF and ONNX)")
    assert any(c.startswith("covip export gguf runs/") for c in commands)  # relative paths, as documented
    covip = str(Path(sys.executable).with_name("covip"))
    env = {**os.environ, "COVIP_HOME": str(tmp_path / "home")}
    work = tmp_path / "work"
    work.mkdir()
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "covip", command
        proc = subprocess.run([covip, *argv[1:]], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert (work / "exports" / "tiny").is_dir() and any((work / "exports" / "tiny").glob("*q8_0*.gguf"))
    assert any((work / "exports" / "tiny-onnx").rglob("*.onnx"))
