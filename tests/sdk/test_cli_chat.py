"""Tests of the inference commands (init --model, caption, ask, chat, demo) on the tiny random-weight models.

CliRunner in-process (the tiny VLM is built once per session by the ``tiny_vlm_dir`` fixture; each command
then only loads it), plus one run of the installed ``covip demo`` console script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from covip.sdk.cli import cli

pytest.importorskip("open_clip")
pytest.importorskip("transformers")

FAST = ("--max-tokens", "4")  # random-weight models never stop by themselves; keep every pass short


def run(home: Path | None, *args: str, input: str | None = None) -> Result:
    """Invoke ``covip [--home HOME] ARGS`` in-process (stdout and stderr kept apart)."""
    prefix = ["--home", str(home)] if home is not None else []
    return CliRunner().invoke(cli, [*prefix, *args], input=input, catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def fail(result: Result, code: int, *needles: str) -> Result:
    """An expected error: the exit code, `error:` on stderr, the message parts, no traceback."""
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert re.search(r"(^|\n)error: ", result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Drawn photos: two of Bori (remembered, new), one of Mom, one of the bike."""
    from covip.sdk.demo import DEMO_CONCEPTS, draw_concept

    folder = tmp_path_factory.mktemp("photos")
    by_name = {c.name: c for c in DEMO_CONCEPTS}
    out = {"bori": (by_name["Bori"], 0), "bori_new": (by_name["Bori"], 7), "mom": (by_name["Mom"], 0),
           "bike": (by_name["blue bike"], 0)}
    paths = {}
    for key, (concept, variant) in out.items():
        paths[key] = folder / f"{key}.png"
        draw_concept(concept, variant).save(paths[key])
    return paths


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Path], tiny_vlm_dir: Path) -> Path:
    """`covip init --model tiny` home with user ana who remembered Bori and Mom."""
    h = tmp_path_factory.mktemp("chat") / "home"
    result = ok(run(h, "init", "--embedder", "tiny", "--model", "tiny"))
    assert "back end: tiny" in result.stdout and "meaningless" in result.stderr
    assert json.loads((h / "config.json").read_text())["model"] == "tiny"
    ok(run(h, "user", "add", "ana"))
    ok(run(h, "remember", str(photos["bori"]), "--user", "ana", "-c", "Bori", "--place", "Han river",
           "--dialogue", "User: This is Bori, my white jindo, at the Han river."))
    ok(run(h, "remember", str(photos["mom"]), "--user", "ana", "-c", "Mom",
           "--dialogue", "User: Mom in her red coat at Busan station."))
    return h


def photo_id(home: Path, photo: Path) -> int:
    hits = json.loads(ok(run(home, "recall", str(photo), "--user", "ana", "-k", "1", "--json")).stdout)["hits"]
    return hits[0]["photo"]["id"]


# ------------------------------------------------------------------------------------------- demo
def test_demo_json_offline_on_tiny(tmp_path: Path, tiny_vlm_dir: Path) -> None:
    h = tmp_path / "demo-home"
    result = ok(run(None, "demo", "--json", "--home", str(h), "-k", "1", *FAST))
    assert "meaningless" in result.stderr  # run_demo's notice goes to stderr with --json
    doc = json.loads(result.stdout)
    assert doc["meaningless"] is True and doc["home"] == str(h.resolve()) and doc["model_spec"] == "tiny"
    runs = doc["runs"]
    assert {r["mode"] for r in runs} == {"CAG (cold)", "CAG (warm)", "direct"}
    for concept in ("Bori", "Mom"):
        mine = {r["mode"]: r for r in runs if r["concept"] == concept}
        assert mine["CAG (cold)"]["caption_cached"] is False and mine["CAG (cold)"]["caption"]
        assert mine["CAG (warm)"]["caption_cached"] is True
        assert mine["CAG (warm)"]["caption"] == mine["CAG (cold)"]["caption"]
        assert mine["direct"]["cag"] is False and mine["direct"]["caption"] is None
    for r in runs:
        assert r["memories"], r
        for m in r["memories"]:
            assert {"photo_id", "path", "score", "concepts", "dialogue", "episode_ids"} <= set(m)
            assert m["concepts"] and m["dialogue"] and Path(m["path"]).is_file()
        assert r["timings"]["total_s"] > 0 and r["tokens"]["answer_completion"] >= 1
    # the kept home works with the other commands: config.json names both tiny models
    assert json.loads((h / "config.json").read_text()) == {"embedder": {"model": "tiny", "pretrained": None},
                                                          "model": "tiny"}
    again = json.loads(ok(run(h, "ask", str(h / "demo-photos" / "new-Bori.png"), "Who?", "--user", "demo",
                              "--json", "-k", "1", *FAST)).stdout)
    assert again["caption_cached"] is True  # the demo's cold run cached it
    cold = next(r for r in runs if r["concept"] == "Bori")
    assert again["memories"][0]["photo_id"] == cold["memories"][0]["photo_id"]


# ------------------------------------------------------------------------------------------- init --model
def test_init_model_is_checked_and_stored(tmp_path: Path) -> None:
    h = tmp_path / "h"
    fail(run(h, "init", "--embedder", "tiny", "--model", str(tmp_path / "nowhere")), 2, "does not exist")
    fail(run(h, "init", "--embedder", "tiny", "--model", "./x/model.gguf"), 2, "does not exist")
    assert not (h / "config.json").exists()  # nothing written on a bad spec
    result = ok(run(h, "init", "--embedder", "tiny", "--model", "Qwen/Qwen3-VL-2B-Instruct"))
    assert "back end: transformers" in result.stdout and "hub id" in result.stderr
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    fail(run(h, "init", "--force", "--model", str(hf_dir)), 2, "config.json")
    (hf_dir / "config.json").write_text("{}")
    ok(run(h, "init", "--force", "--model", str(hf_dir)))
    settings = json.loads((h / "config.json").read_text())
    assert settings["model"] == str(hf_dir.resolve())
    assert settings["embedder"] == {"model": "tiny", "pretrained": None}  # kept without --embedder
    gguf = tmp_path / "export"
    gguf.mkdir()
    (gguf / "mmproj-model-f16.gguf").write_bytes(b"GGUF")
    fail(run(h, "init", "--force", "--model", str(gguf)), 2, "mmproj")
    (gguf.joinpath("mmproj-model-f16.gguf")).unlink()
    (gguf / "model-q4_k_m.gguf").write_bytes(b"GGUF")
    fail(run(h, "init", "--force", "--model", str(gguf)), 2, "mmproj")
    (gguf / "mmproj-model-f16.gguf").write_bytes(b"GGUF")
    assert "back end: llama.cpp" in ok(run(h, "init", "--force", "--model", str(gguf))).stdout
    result = ok(run(h, "init", "--force"))
    assert "(kept)" in result.stdout  # the model survives a re-init without --model
    assert json.loads((h / "config.json").read_text())["model"] == str(gguf.resolve())


def test_ask_without_a_model_says_how_to_choose_one(tmp_path: Path, photos: dict[str, Path]) -> None:
    h = tmp_path / "h"
    result = ok(run(h, "init", "--embedder", "tiny"))
    assert "no model chosen" in result.stderr
    ok(run(h, "user", "add", "ana"))
    fail(run(h, "ask", str(photos["bori"]), "Who?", "--user", "ana"), 1, "--model", "covip init")


# ------------------------------------------------------------------------------------------- ask / caption
def test_ask_json_uses_the_right_memory_and_caches_the_caption(home: Path, photos: dict[str, Path]) -> None:
    bori = photo_id(home, photos["bori"])
    first = json.loads(ok(run(home, "ask", str(photos["bori"]), "Who is this?", "--user", "ana", "--json",
                              *FAST)).stdout)
    assert first["cag"] is True and first["caption"] and first["answer"]
    assert first["meaningless"] is True and first["question"] == "Who is this?"
    top = first["memories"][0]
    assert top["photo_id"] == bori and top["concepts"] == ["Bori"] and top["score"] > 0.99
    assert top["place"] == "Han river" and "white jindo" in top["dialogue"] and Path(top["path"]).is_file()
    assert {m["concepts"][0] for m in first["memories"]} == {"Bori", "Mom"}
    assert set(first["timings"]) >= {"caption_s", "answer_s", "total_s"} and first["tokens"]["answer_prompt"] > 0
    second = json.loads(ok(run(home, "ask", str(photos["bori"]), "And where?", "--user", "ana", "--json",
                               *FAST)).stdout)
    assert second["caption_cached"] is True and second["caption"] == first["caption"]
    assert [m["photo_id"] for m in second["memories"]] == [m["photo_id"] for m in first["memories"]]


def test_ask_text_and_stream(home: Path, photos: dict[str, Path]) -> None:
    result = ok(run(home, "ask", str(photos["bori_new"]), "Who is this?", "--user", "ana", "-k", "1", *FAST))
    out = result.stdout
    assert "caption (generated)" in out and "memories used (1):" in out and "time: " in out
    assert "photo " in out and "score " in out and '"User: ' in out
    assert "random weights" in result.stderr
    streamed = ok(run(home, "ask", str(photos["bori_new"]), "@-", "--user", "ana", "-k", "1", "--stream",
                      *FAST, input="Where was this?\n"))
    assert "caption (from the cache)" in streamed.stdout
    fail(run(home, "ask", str(photos["bori"]), "Who?", "--user", "ana", "--stream", "--json"), 2, "--json")
    fail(run(home, "ask", str(photos["bori"]), "  ", "--user", "ana"), 2, "empty")


def test_no_cag_has_no_caption(home: Path, photos: dict[str, Path]) -> None:
    doc = json.loads(ok(run(home, "ask", str(photos["mom"]), "Who is this?", "--user", "ana", "--no-cag",
                            "--json", *FAST)).stdout)
    assert doc["cag"] is False and doc["caption"] is None and doc["caption_cached"] is False
    assert doc["memories"][0]["concepts"] == ["Mom"] and "caption_s" not in doc["timings"]
    text = ok(run(home, "ask", str(photos["mom"]), "Who?", "--user", "ana", "--no-cag", *FAST)).stdout
    assert "caption: none" in text


def test_caption_json_then_cached(home: Path, photos: dict[str, Path]) -> None:
    args = ("caption", str(photos["bike"]), "--user", "ana", "--caption-only", "-k", "1", *FAST)
    first = json.loads(ok(run(home, *args, "--json")).stdout)
    assert first["caption"] and first["cached"] is False and first["tokens"]["completion"] >= 1
    assert len(first["memories"]) == 1 and first["memories"][0]["concepts"][0] in ("Bori", "Mom")
    again = ok(run(home, *args))
    assert again.stdout.startswith(first["caption"]) and "from the cache" in again.stdout
    assert "memories used (1):" in again.stdout


def test_floor_abstains_and_says_why(home: Path, photos: dict[str, Path]) -> None:
    doc = json.loads(ok(run(home, "ask", str(photos["bike"]), "What is this?", "--user", "ana", "--floor", "1",
                            "--json", *FAST)).stdout)
    assert doc["abstained"] is True and doc["memories"] == [] and "floor" in doc["abstain_reason"]


# ------------------------------------------------------------------------------------------- chat
def test_chat_piped(home: Path, photos: dict[str, Path]) -> None:
    script = "\n".join([
        f"/photo {photos['bike']}",
        "What is this?",
        "/concept blue bike",
        "/remember My new blue bike, bought in March.",
        "/caption",
        "/help",
        "/quit",
        "this line is never read",
    ]) + "\n"
    result = ok(run(home, "chat", "--user", "ana", *FAST, input=script))
    out = result.stdout
    assert "attached" in out and "not remembered yet" in out
    assert "assistant: " in out and "memories used:" in out
    assert "remembered photo" in out and "about blue bike" in out and "/remember NOTE" in out
    assert "caption: " in out
    history = json.loads(ok(run(home, "history", "--user", "ana", "--concept", "blue bike", "--json")).stdout)
    assert [i["episode"]["dialogue"][0]["text"] for i in history["items"]] == ["My new blue bike, bought in March."]
    # the remembered bike is now the best memory for its own photo; /forget removes it again
    script = f"{photos['bike']}\nWhat is this?\n/forget\n"
    result = ok(run(home, "chat", "--user", "ana", *FAST, input=script))
    assert "already remembered" in result.stdout and "blue bike 1.00" in result.stdout
    assert "forgot photo" in result.stdout
    assert "no dialogues" in ok(run(home, "history", "--user", "ana", "--concept", "blue bike")).stdout


def test_chat_follow_ups_keep_the_conversation(home: Path, photos: dict[str, Path]) -> None:
    """Follow-ups see the earlier turns about the photo and reuse their KV cache; /new and another photo
    start over."""
    script = "\n".join([f"/photo {photos['bori']}", "Who is this?", "Where was that?", "/new", "And now?",
                        f"/photo {photos['mom']}", "Who is this?"]) + "\n"
    lines = [x for x in ok(run(home, "chat", "--user", "ana", *FAST, input=script)).stdout.splitlines()
             if "memories used:" in x]
    assert len(lines) == 4
    assert "earlier turn" not in lines[0] and "1 earlier turn(s)" in lines[1]
    assert "earlier turn" not in lines[2] and "earlier turn" not in lines[3]  # after /new, after a new photo
    reused = [int(x.split(" prompt tokens reused")[0].rsplit(" ", 1)[1]) for x in lines]
    assert reused[1] > 0


def test_chat_errors_do_not_end_it_but_set_the_exit_code(home: Path, photos: dict[str, Path]) -> None:
    script = f"Who is this?\n/photo {photos['bori']}.missing\n/bogus\n/photo {photos['mom']}\nWho?\n"
    result = fail(run(home, "chat", "--user", "ana", *FAST, input=script), 2, "no photo attached",
                  "does not exist", "unknown command /bogus")
    assert "assistant: " in result.stdout  # the chat went on after the errors


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input(home: Path, photos: dict[str, Path], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.png")
    fail(run(home, "ask", missing, "Who?", "--user", "ana"), 2, "does not exist")
    fail(run(home, "caption", missing, "--user", "ana"), 2, "does not exist")
    fail(run(home, "chat", "--user", "ana", "--photo", missing, input="/quit\n"), 2, "does not exist")
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    fail(run(home, "ask", str(not_image), "Who?", "--user", "ana"), 2)
    fail(run(home, "ask", str(photos["bori"]), "Who?", "--user", "zoe"), 3, "zoe")
    fail(run(home, "caption", str(photos["bori"]), "--user", "zoe"), 3)
    fail(run(home, "chat", "--user", "zoe", input="/quit\n"), 3)
    fail(run(home, "ask", str(photos["bori"]), "Who?", "--user", "ana", "--model", "./no/such/dir"), 2,
         "does not exist")
    fail(run(tmp_path / "nothing", "ask", str(photos["bori"]), "Who?", "--user", "ana"), 3, "covip init")
    assert run(home, "ask", str(photos["bori"]), "Who?", "--user", "ana", "--floor", "2").exit_code == 2


def test_every_command_teaches() -> None:
    for name in ("caption", "ask", "chat", "demo", "init"):
        out = ok(run(None, name, "--help")).stdout
        assert "Example" in out and f"covip {name}" in out.split("Example", 1)[1], name
    top = ok(run(None, "--help")).stdout
    assert all(name in top for name in ("caption", "ask", "chat", "demo"))
    assert "--model" in ok(run(None, "ask", "--help")).stdout


# ------------------------------------------------------------------------------------------- console script
def test_console_script_demo(tmp_path: Path, tiny_vlm_dir: Path) -> None:
    exe = shutil.which("covip", path=str(Path(sys.executable).parent)) or shutil.which("covip")
    if exe is None:
        pytest.skip("the covip console script is not installed in this environment")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COVIP_HOME": str(tmp_path / "never-touched")}
    proc = subprocess.run([exe, "demo", "-k", "1", *FAST], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert "meaningless" in proc.stdout + proc.stderr
    assert "CAG (warm)" in proc.stdout and "caption cached" in proc.stdout and "memories used" in proc.stdout
    assert "[CAG (cold)] answer: " in proc.stdout  # answers stream as they are decoded
    assert "loading model tiny" in proc.stderr and "model ready in" in proc.stderr  # no silent start
    assert not (tmp_path / "never-touched").exists()  # the demo never touches $COVIP_HOME
    temp_home = re.search(r"demo home: (\S+) \(temporary", proc.stderr)
    assert temp_home and not Path(temp_home.group(1)).exists()  # its temporary home is deleted
