"""The README's walkthrough runs as written: every block marked ``<!-- walkthrough -->``, in order, in a fresh
folder with a fresh home (the Python snippets twice: they must work again on the same home). The OpenAI
client snippet needs a running server and a real photo; ``examples/openai_client.py`` (run by
tests/test_examples.py) is the runnable version of it, and ``tests/export/test_readme_export.py`` runs the
export commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- walkthrough -->"


def walkthrough_blocks() -> list[tuple[str, str]]:
    """(language, code) of each marked fenced block, in README order."""
    text = (ROOT / "README.md").read_text()
    blocks = []
    for m in re.finditer(re.escape(MARK) + r"\n```(\w+)\n(.*?)\n```", text, re.S):
        blocks.append((m.group(1), m.group(2)))
    assert text.count(MARK) == len(blocks), "a walkthrough mark must sit right above a fenced code block"
    return blocks


def test_walkthrough_has_the_commands_a_newcomer_runs() -> None:
    blocks = walkthrough_blocks()
    shell = "\n".join(code for lang, code in blocks if lang == "bash")
    for command in ("covip demo", "covip init", "covip remember", "covip recall", "covip ask", "covip history",
                    "covip forget", "covip verify"):
        assert command in shell, command
    assert sum(lang == "python" for lang, _ in blocks) >= 2


def test_readme_walkthrough_runs_in_order_on_a_fresh_home(tmp_path: Path) -> None:
    from covip.sdk._config import cache_root

    work, home = tmp_path / "work", tmp_path / "user-home"
    work.mkdir()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("COVIP_HOME", "COVIP_NO_SERVER")}
    env.update(HOME=str(home), COVIP_CACHE=str(cache_root()), HF_HUB_OFFLINE="1",  # ~ is the fresh home;
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # models stay cached
    outputs = []
    for n, (lang, code) in enumerate(walkthrough_blocks()):
        if lang == "bash":
            runs = [["bash", "-euo", "pipefail", "-c", code]]
        else:
            runs = [[sys.executable, "-c", code]] * 2  # as written, and again on the same home
        for argv in runs:
            proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"block {n} ({lang}) failed:\n{code}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            outputs.append(proc.stdout)
    shell_out = outputs[0]
    for needle in ("memories used", "remembered photo", "score ", "Forgot", "ok: 0 errors"):
        assert needle.lower() in shell_out.lower(), (needle, shell_out[-3000:])
    assert (home / "covip-home" / "memory.db").is_file()  # "~/covip-home" is the fresh home's, nobody else's
    assert (work / "my-home" / "memory.db").is_file()
