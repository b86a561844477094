"""Tests of the ``covip`` command line: CliRunner in-process, plus one end-to-end run of the console script."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from covip.sdk.cli import cli, exit_code_for, main
from covip.sdk.errors import (
    BundleError,
    ConfigError,
    ConflictError,
    CovipError,
    EmbedderError,
    ImageError,
    IndexCorruptError,
    InputError,
    MissingExtraError,
    NotFoundError,
    SchemaError,
    StoreError,
)

pytest.importorskip("open_clip")


def make_photo(path: Path, seed: int, size: int = 64) -> Path:
    """Write a distinct PNG: a colour gradient plus noise, different for every seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    ramp = np.linspace(0, 1, size)[None, :, None] * rng.integers(0, 256, size=3)
    noise = rng.integers(0, 40, size=(size, size, 3))
    arr = np.clip(base * 0.5 + ramp * 0.5 + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.broadcast_to(arr, (size, size, 3)).copy()).save(path)
    return path


def run(home: Path, *args: str, input: str | None = None) -> Result:
    """Invoke ``covip --home HOME ARGS`` in-process (stdout and stderr kept apart)."""
    return CliRunner().invoke(cli, ["--home", str(home), *args], input=input, catch_exceptions=False)


def ok(result: Result) -> Result:
    """Assert the command succeeded (showing its stderr when it did not)."""
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def fail(result: Result, code: int, *needles: str) -> Result:
    """Assert an expected error: the exit code, `error:` on stderr, the message parts, no traceback."""
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "error:" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three distinct photos in a folder of their own."""
    folder = tmp_path_factory.mktemp("photos")
    return [make_photo(folder / f"p{i}.png", seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, photos: list[Path]) -> Path:
    """A shared, read-mostly memory: tiny embedder, user ana with three photos (Bori, Bori, Mina)."""
    h = tmp_path_factory.mktemp("shared") / "home"
    ok(run(h, "init", "--embedder", "tiny"))
    ok(run(h, "user", "add", "ana"))
    ok(run(h, "remember", str(photos[0]), "--user", "ana", "-c", "Bori", "--place", "Han river",
           "--taken-at", "2024-05-01T10:00", "-d", "User: This is my dog Bori.\nAssistant: So fluffy!"))
    ok(run(h, "remember", str(photos[1]), "--user", "ana", "-c", "Bori", "-d", "Bori at the park"))
    ok(run(h, "remember", str(photos[2]), "--user", "ana", "-c", "Mina", "-d", "User: My sister Mina."))
    return h


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """An initialized (tiny) home of this test's own, with user ana and no photos."""
    h = tmp_path / "home"
    ok(run(h, "init", "--embedder", "tiny"))
    ok(run(h, "user", "add", "ana"))
    return h


# ------------------------------------------------------------------------------------------- help, codes
def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _all_commands(cmd, (*prefix, name))
    return out


def test_every_command_help_has_description_and_example() -> None:
    commands = _all_commands(cli)
    assert {("init",), ("remember",), ("recall",), ("forget",), ("history",), ("export-memory",),
            ("import-memory",), ("verify",), ("user", "add"), ("user", "list"), ("concepts",),
            ("concept", "add"), ("concept", "rename"), ("concept", "merge"), ("concept", "share")} <= set(commands)
    for path in [(), *commands]:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Example" in result.output, path
        assert "covip " in result.output.split("Example", 1)[1], path


def test_exit_code_mapping() -> None:
    assert exit_code_for(InputError("x")) == 2
    assert exit_code_for(ImageError("x")) == 2
    assert exit_code_for(NotFoundError("x")) == 3
    assert exit_code_for(ConflictError("x")) == 4
    for exc in (StoreError("x"), SchemaError("x"), BundleError("x"), IndexCorruptError("x"), OSError(5, "io")):
        assert exit_code_for(exc) == 5
    assert exit_code_for(MissingExtraError("CLIP", "torch", "open_clip")) == 6
    for exc in (CovipError("x"), ConfigError("x"), EmbedderError("x")):
        assert exit_code_for(exc) == 1


def test_usage_error_is_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "recall"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_missing_extra_is_exit_6_without_traceback(home: Path, photos: list[Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from covip.sdk.cli.common import CliState

    def no_torch(self: CliState, mem: object) -> None:
        raise MissingExtraError("CLIP embeddings", "torch", "torch")

    monkeypatch.setattr(CliState, "embedder", no_torch)
    fail(run(home, "recall", str(photos[0]), "--user", "ana"), 6, "pip install 'covip[torch]'")


def test_verbose_shows_traceback_and_logging_is_restored(home: Path) -> None:
    root = logging.getLogger()
    before = (root.level, len(root.handlers), logging.getLogger("covip").level)
    result = run(home, "-v", "history", "--user", "nobody")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr and "error: no user named 'nobody'" in result.stderr
    assert (root.level, len(root.handlers), logging.getLogger("covip").level) == before


def test_home_without_memory_is_not_found(tmp_path: Path) -> None:
    fail(run(tmp_path / "nothing", "history", "--user", "ana"), 3, "covip init")
    assert not (tmp_path / "nothing").exists()


def test_main_returns_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path / "none"), "user", "list"]) == 3
    assert main(["--version"]) == 0
    assert "covip" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- init
def test_init_writes_config_and_refuses_overwrite(tmp_path: Path) -> None:
    h = tmp_path / "h"
    result = ok(run(h, "init", "--embedder", "tiny"))
    assert "meaningless" in result.stderr
    assert json.loads((h / "config.json").read_text())["embedder"] == {"model": "tiny", "pretrained": None}
    assert (h / "memory.db").is_file()
    fail(run(h, "init", "--embedder", "ViT-B-32"), 4, "--force")
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"0")
    ok(run(h, "init", "--force", "--embedder", "ViT-B-32/laion2b_s34b_b79k", "--pretrained", str(weights)))
    saved = json.loads((h / "config.json").read_text())["embedder"]
    assert saved == {"model": "ViT-B-32", "pretrained": str(weights.resolve())}
    ok(run(h, "init", "--force", "--embedder", "ViT-B-32/laion2b_s34b_b79k"))
    assert json.loads((h / "config.json").read_text())["embedder"]["pretrained"] == "laion2b_s34b_b79k"
    fail(run(h, "init", "--force", "--embedder", " "), 2)


def test_damaged_config_is_an_error_that_init_force_fixes(fresh: Path) -> None:
    (fresh / "config.json").write_text("{not json")
    fail(run(fresh, "user", "list"), 1, "covip init --force")
    ok(run(fresh, "init", "--force", "--embedder", "tiny"))
    assert "ana" in ok(run(fresh, "user", "list")).stdout


# ------------------------------------------------------------------------------------------- users, concepts
def test_users_and_concepts(fresh: Path, photos: list[Path]) -> None:
    fail(run(fresh, "user", "add", "ana"), 4, "already exists")
    ok(run(fresh, "user", "add", "minho"))
    users = json.loads(ok(run(fresh, "user", "list", "--json")).stdout)["users"]
    assert [u["name"] for u in users] == ["ana", "minho"]
    ok(run(fresh, "concept", "add", "--user", "ana", "Bory", "--kind", "pet", "--notes", "corgi"))
    ok(run(fresh, "concept", "add", "--user", "ana", "Boribori"))
    fail(run(fresh, "concept", "add", "--user", "ana", "Bory"), 4)
    fail(run(fresh, "concept", "add", "--user", "ana", "X", "--kind", "alien"), 2)
    ok(run(fresh, "concept", "rename", "--user", "ana", "Bory", "Bori"))
    ok(run(fresh, "remember", str(photos[0]), "--user", "ana", "-c", "Boribori", "-d", "hi"))
    ok(run(fresh, "concept", "merge", "--user", "ana", "Boribori", "--into", "Bori"))
    fail(run(fresh, "concept", "merge", "--user", "ana", "Nope", "--into", "Bori"), 3)
    ok(run(fresh, "concept", "share", "--user", "ana", "Bori", "--with", "minho"))
    concepts = json.loads(ok(run(fresh, "concepts", "--user", "ana", "--json")).stdout)["concepts"]
    assert [(c["name"], c["kind"], c["notes"], c["photo_count"]) for c in concepts] == [("Bori", "pet", "corgi", 1)]
    shared = ok(run(fresh, "concepts", "--user", "minho")).stdout
    assert "Bori" in shared and "shared by ana" in shared
    ok(run(fresh, "concept", "unshare", "--user", "ana", "Bori", "--with", "minho"))
    assert json.loads(ok(run(fresh, "concepts", "--user", "minho", "--json")).stdout)["concepts"] == []


# ------------------------------------------------------------------------------------------- remember
def test_remember_unknown_user_says_how_to_add(fresh: Path, photos: list[Path]) -> None:
    fail(run(fresh, "remember", str(photos[0]), "--user", "bob", "-c", "X", "-d", "hi"), 3,
         "covip user add bob", "--create-user")
    result = ok(run(fresh, "remember", str(photos[0]), "--user", "bob", "-c", "X", "-d", "hi", "--create-user"))
    assert "remembered photo" in result.stdout
    assert "meaningless" in result.stderr


def test_remember_bad_inputs(fresh: Path, photos: list[Path], tmp_path: Path) -> None:
    fail(run(fresh, "remember", str(tmp_path / "missing.png"), "--user", "ana", "-c", "X", "-d", "hi"), 2,
         "does not exist")
    fail(run(fresh, "remember", str(photos[0]), "--user", "ana", "-c", "X", "-d", "hi", "--taken-at", "soon"),
         2, "ISO")
    fail(run(fresh, "remember", str(photos[0]), "--user", "ana", "-c", "X", "-d", "@" + str(tmp_path / "no.txt")),
         2, "no.txt")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    fail(run(fresh, "remember", str(bad), "--user", "ana", "-c", "X", "-d", "hi"), 2, "bad.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    fail(run(fresh, "remember", str(empty), "--user", "ana", "-c", "X", "-d", "hi"), 2, "no image files")
    assert json.loads(ok(run(fresh, "history", "--user", "ana", "--json")).stdout)["items"] == []


def test_remember_directory_skips_unreadable_and_reads_dialogue_file(fresh: Path, tmp_path: Path) -> None:
    folder = tmp_path / "trip"
    for i in range(3):
        make_photo(folder / f"{i}.png", seed=10 + i)
    make_photo(folder / "sub" / "deep.png", seed=20)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    dialogue = tmp_path / "d.txt"
    dialogue.write_text("User: Our trip to Busan.\nAssistant: Looks sunny!\nUser: It was.")
    result = run(fresh, "remember", str(folder), "--user", "ana", "-c", "Busan", "-c", "Mina",
                 "-d", f"@{dialogue}", "--place", "Busan")
    fail(result, 2, "broken.jpg", "1 of 4")
    assert "remembered 3 photos" in result.stdout
    items = json.loads(ok(run(fresh, "history", "--user", "ana", "--json")).stdout)["items"]
    assert len(items) == 3
    ep = items[0]["episode"]
    assert [t["role"] for t in ep["dialogue"]] == ["user", "assistant", "user"]
    assert ep["concepts"] == ["Busan", "Mina"] and ep["place"] == "Busan"
    ok(run(fresh, "remember", str(folder / "sub"), str(folder / "0.png"), "--user", "ana", "-c", "Busan",
           "-d", "again", "--recursive"))
    assert len(json.loads(ok(run(fresh, "history", "--user", "ana", "--json")).stdout)["items"]) == 5


# ------------------------------------------------------------------------------------------- recall, history
def test_recall_json_is_one_document(home: Path, photos: list[Path]) -> None:
    result = ok(run(home, "recall", str(photos[2]), "--user", "ana", "-k", "2", "--json"))
    doc = json.loads(result.stdout)
    assert doc["embedder"]["meaningless"] is True
    assert "meaningless" in result.stderr
    assert len(doc["hits"]) == 2
    top = doc["hits"][0]
    assert top["concepts"] == ["Mina"] and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert Path(top["photo"]["path"]).is_file()
    assert top["episodes"][0]["dialogue"] == [{"role": "user", "text": "My sister Mina."}]
    assert doc["hits"][0]["score"] >= doc["hits"][1]["score"]


def test_recall_text(home: Path, photos: list[Path]) -> None:
    out = ok(run(home, "recall", str(photos[0]), "--user", "ana", "-k", "1")).stdout
    assert "score 1.000" in out and "Bori" in out and "Han river" in out and "2024-05-01" in out
    assert "User: This is my dog Bori." in out and "Assistant: So fluffy!" in out
    fail(run(home, "recall", str(photos[0]), "--user", "ana", "-k", "0"), 2)
    fail(run(home, "recall", str(photos[0]), "--user", "zed"), 3, "covip user add zed")


def test_history(home: Path) -> None:
    items = json.loads(ok(run(home, "history", "--user", "ana", "--concept", "bori", "--json")).stdout)["items"]
    assert len(items) == 2 and all("Bori" in i["episode"]["concepts"] for i in items)
    assert len(json.loads(ok(run(home, "history", "--user", "ana", "--limit", "1", "--json")).stdout)["items"]) == 1
    text = ok(run(home, "history", "--user", "ana")).stdout
    assert "My sister Mina." in text and "Han river" in text
    fail(run(home, "history", "--user", "ana", "--concept", "Nobody"), 3)


# ------------------------------------------------------------------------------------------- forget
def test_forget_needs_exactly_one_target_and_confirmation(fresh: Path, photos: list[Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ok(run(fresh, "remember", str(photos[0]), "--user", "ana", "-c", "Bori", "-d", "hi"))
    assert run(fresh, "forget", "--user", "ana").exit_code == 2
    assert run(fresh, "forget", "--user", "ana", "--all", "--concept", "Bori").exit_code == 2
    fail(run(fresh, "forget", "--user", "ana", "--all"), 2, "--yes")
    fail(run(fresh, "forget", "--user", "ana", "--concept", "Nope", "--yes"), 3)
    monkeypatch.setattr("covip.sdk.cli.memory_cmds.is_interactive", lambda: True)
    declined = run(fresh, "forget", "--user", "ana", "--concept", "Bori", input="n\n")
    assert declined.exit_code == 1 and "Forget concept 'Bori'" in declined.stderr
    assert len(json.loads(ok(run(fresh, "history", "--user", "ana", "--json")).stdout)["items"]) == 1
    ok(run(fresh, "forget", "--user", "ana", "--concept", "Bori", input="y\n"))
    assert json.loads(ok(run(fresh, "history", "--user", "ana", "--json")).stdout)["items"] == []


def test_forget_photo_by_path_and_id(fresh: Path, photos: list[Path]) -> None:
    for i, p in enumerate(photos[:2]):
        ok(run(fresh, "remember", str(p), "--user", "ana", "-c", f"C{i}", "-d", "hi"))
    doc = json.loads(ok(run(fresh, "forget", "--user", "ana", "--photo", str(photos[0]), "--yes", "--json")).stdout)
    assert doc["forgot"]["photos"] == 1 and doc["forgot"]["files"] == 1
    remaining = json.loads(ok(run(fresh, "history", "--user", "ana", "--json")).stdout)["items"]
    pid = remaining[0]["photo"]["id"]
    ok(run(fresh, "forget", "--user", "ana", "--photo", str(pid), "--yes"))
    fail(run(fresh, "forget", "--user", "ana", "--photo", str(pid), "--yes"), 3)
    assert ok(run(fresh, "verify")).stdout.strip().endswith("0 warnings")


# ------------------------------------------------------------------------------------------- bundles, verify
def test_export_import(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "ana.zip"
    ok(run(home, "export-memory", "--user", "ana", str(out)))
    assert zipfile.is_zipfile(out)
    fail(run(home, "export-memory", "--user", "ana", str(out)), 4, "--force")
    ok(run(home, "export-memory", "--user", "ana", str(out), "--force"))
    other = tmp_path / "other"
    ok(run(other, "init", "--embedder", "tiny"))
    doc = json.loads(ok(run(other, "import-memory", str(out), "--json")).stdout)
    assert doc["imported"]["photos"] == 3 and doc["imported"]["user"] == "ana"
    fail(run(other, "import-memory", str(out)), 4, "--merge")
    again = json.loads(ok(run(other, "import-memory", str(out), "--merge", "--json")).stdout)
    assert again["imported"]["photos"] == 0
    ok(run(other, "import-memory", str(out), "--user", "ana2"))
    assert [u["name"] for u in json.loads(ok(run(other, "user", "list", "--json")).stdout)["users"]] == ["ana", "ana2"]
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK not really")
    fail(run(other, "import-memory", str(junk)), 5, "not a covip memory bundle")


def test_verify_finds_damage_and_repairs_index(fresh: Path, photos: list[Path]) -> None:
    for p in photos:
        ok(run(fresh, "remember", str(p), "--user", "ana", "-c", "Bori", "-d", "hi"))
    assert json.loads(ok(run(fresh, "verify", "--json")).stdout)["ok"] is True
    index = next((fresh / "index").glob("*.faiss"))
    index.write_bytes(b"garbage")
    result = run(fresh, "verify", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["errors"]
    text = run(fresh, "verify")
    assert text.exit_code == 1 and "verify --repair" in text.stdout
    repaired = json.loads(ok(run(fresh, "verify", "--repair", "--json")).stdout)
    assert repaired["ok"] is True and repaired["repaired"]
    stored = next(p for p in (fresh / "photos").rglob("*") if p.is_file())
    stored.unlink()
    assert run(fresh, "verify", "--quick").exit_code == 1


# ------------------------------------------------------------------------------------------- end to end
def _covip_script() -> str:
    script = Path(sys.executable).parent / "covip"
    if not script.exists():
        pytest.skip("the covip console script is not installed in this environment")
    return str(script)


def test_console_script_end_to_end(tmp_path: Path) -> None:
    exe = _covip_script()
    env = {**os.environ, "COVIP_HOME": str(tmp_path / "home")}

    def covip(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([exe, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, f"covip {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    shots = [make_photo(tmp_path / "shots" / f"{name}.png", seed=100 + i)
             for i, name in enumerate(["bori", "mina", "park"])]
    covip("init", "--embedder", "tiny")
    covip("user", "add", "ana")
    (tmp_path / "bori.txt").write_text("User: This is Bori.\nAssistant: Nice photo!")
    bulk = covip("remember", str(shots[0]), str(shots[2]), "--user", "ana", "--concept", "Bori",
                 "--taken-at", "2024-05-01", "--dialogue", "@bori.txt")
    assert "remembered 2 photos" in bulk.stdout and "remembering" in bulk.stderr  # the progress bar
    covip("remember", str(shots[1]), "--user", "ana", "--concept", "Mina", "--place", "Seoul",
          "--dialogue", "User: This is Mina.\nAssistant: Nice photo!")
    proc = covip("recall", str(shots[1]), "--user", "ana", "-k", "3", "--json")
    doc = json.loads(proc.stdout)
    assert "meaningless" in proc.stderr
    assert len(doc["hits"]) == 3 and doc["hits"][0]["concepts"] == ["Mina"]
    assert doc["hits"][0]["episodes"][0]["dialogue"][1] == {"role": "assistant", "text": "Nice photo!"}
    history = json.loads(covip("history", "--user", "ana", "--json").stdout)["items"]
    assert len(history) == 3
    covip("export-memory", "--user", "ana", "ana.zip")
    covip("forget", "--user", "ana", "--all", "--yes")
    covip("history", "--user", "ana", code=3)
    imported = json.loads(covip("import-memory", "ana.zip", "--json").stdout)["imported"]
    assert imported["photos"] == 3 and imported["episodes"] == 3
    report = json.loads(covip("verify", "--json").stdout)
    assert report["ok"] is True and report["checked"]["photos"] == 3
    bad = covip("remember", str(shots[0]), "--user", "ana", "--concept", "Bori", "--dialogue", "hi",
                "--taken-at", "not-a-date", code=2)
    assert bad.stderr.startswith("error:") or "\nerror:" in bad.stderr
    assert "ISO" in bad.stderr and bad.stdout == ""


def test_a_library_logging_to_stdout_cannot_break_json(capsys):
    """DeepSpeed (in `[train]`) logs through its own stdout handler with propagate=False, and transformers imports
    it on every model load: under the CLI its records go to stderr (shown from -v on), never into stdout."""
    import io
    import logging

    from covip.sdk.cli.main import setup_logging

    out = io.StringIO()
    lib = logging.getLogger("DeepSpeed")
    own = logging.StreamHandler(out)  # what DeepSpeed does at import, with sys.stdout
    lib.addHandler(own)
    lib.propagate = False
    try:
        for verbose, shown in ((0, False), (1, True)):
            undo = setup_logging(verbose)
            try:
                lib.warning("Setting accelerator to CPU.")
            finally:
                undo()
            assert out.getvalue() == ""
            assert ("Setting accelerator to CPU." in capsys.readouterr().err) is shown
        lib.warning("outside the CLI")  # the library's own behaviour is left alone outside
        assert out.getvalue() == "outside the CLI\n"
    finally:
        lib.removeHandler(own)
