"""Every script in examples/ runs offline on the tiny models, as a subprocess with a temporary home, and prints
what it promises. The scripts start together (each mostly waits on imports), then each test checks one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytest.importorskip("open_clip")
pytest.importorskip("transformers")

EXPECTED = {
    "quickstart": ["remembered 3 photos for ana", "answer:", "caption:", "memories used:", "similarity",
                   "This is Bori, my white jindo"],
    "bring_your_own_model": ["with the transformers back end", "model: ", "answer: ", "memories used: ['Bori']",
                             "prompt tokens reused"],
    "openai_client": ["started covip serve at http://127.0.0.1:", "remembered photo 1 for ana", "answer: ",
                      "caption: ", "memories used: [(1, ['Bori'], 'User: This is Bori at the Han river.')]",
                      "streamed: "],
    "memory_walkthrough": ["concepts: blue bike (other, 1 photo), Bori (pet, 1 photo), Mom (person, 1 photo)",
                           "recall with a photo of Bori:", "history of Bori:", "exported ana's memory to",
                           "forgot Mom: 1 photo, 1 dialogue", "verify: ok"],
    "privacy": ["files holding her data: ['memory.db-wal', 'photos/",
                "files under the home still holding her dialogue or photo: none", "users left: []",
                "imported back: {'user': 'ana'", "ana's dialogue again: User: Bori's vet is Dr. Kim", "verify: ok",
                "encrypted home, ana remembered: files holding her dialogue or photo: none",
                "its bundle is encrypted: True"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_vlm_dir: Path) -> dict[str, tuple[subprocess.Popen, Path]]:
    """Start every example at once (each in its own temporary home and TMPDIR); name -> (process, TMPDIR)."""
    procs = {}
    for name in EXPECTED:
        tmp = tmp_path_factory.mktemp(name)
        (tmp / "tmpdir").mkdir()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp / "tmpdir"), "COVIP_HOME": str(tmp / "unused"),
               "PYTHONUNBUFFERED": "1"}
        env.pop("COVIP_API_TOKEN", None)
        args = ["--home", str(tmp / "home")]
        if name == "bring_your_own_model":
            args.insert(0, str(tiny_vlm_dir))  # a local save_pretrained directory, as a user's own model
        procs[name] = (subprocess.Popen([sys.executable, str(EXAMPLES / f"{name}.py"), *args], cwd=tmp, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), tmp / "tmpdir")
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_offline(runs: dict[str, tuple[subprocess.Popen, Path]], name: str) -> None:
    proc, tmpdir = runs[name]
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"examples/{name}.py did not finish in 300 s")
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    for needle in EXPECTED[name]:
        assert needle in out, f"{needle!r} not in the output of examples/{name}.py:\n{out}"
    leftovers = [p.name for p in tmpdir.iterdir()]
    assert leftovers == [], f"examples/{name}.py left temporary files behind: {leftovers}"


def test_a_model_that_cannot_be_opened_stops_the_example(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "bring_your_own_model.py"), str(tmp_path / "no-model")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "could not open" in proc.stderr and "answer:" not in proc.stdout


def test_every_example_is_tested() -> None:
    scripts = {p.stem for p in EXAMPLES.glob("*.py")}
    assert scripts == set(EXPECTED)
