"""`covip ask`/`caption` hand their work to a running `covip serve` of the same home (no model to load) and
print the same thing; a stale, foreign or non-loopback server file is never used, `--local` stays in-process,
and the server's errors keep their exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("transformers")

from covip.sdk.cli import cli  # noqa: E402
from covip.sdk.server import BackgroundServer, ServeConfig  # noqa: E402
from covip.sdk.serverfile import SERVER_FILE, home_id, read_server_file  # noqa: E402
from tests.sdk.serve_util import assistant_in, png  # noqa: E402


def run(home: Path, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False, env=env)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_engine, tiny_embedder):
    """A home with ana's memories, served on loopback with the server file written (as `covip serve` does).
    The home has no model chosen (`covip init --model`), so only the server can answer."""
    home = tmp_path_factory.mktemp("remote") / "home"
    with assistant_in(home, tiny_engine, tiny_embedder) as bot:
        bot.memory.add_user("ana")
        photos = tmp_path_factory.mktemp("photos")
        for name in ("Bori", "Mom"):
            (photos / f"{name}.png").write_bytes(png(name, 0))
            bot.memory.remember("ana", photos / f"{name}.png", f"User: This is {name}.", [name])
        (photos / "new.png").write_bytes(png("Bori", 3))
        with BackgroundServer(bot, ServeConfig(port=0), announce=True) as server:
            yield home, photos / "new.png", server
    assert not (home / SERVER_FILE).exists()  # removed when the server stops


def test_ask_and_caption_go_through_the_running_server(served) -> None:
    home, photo, server = served
    doc = read_server_file(home)
    assert doc is not None and doc["url"] == server.url and doc["home_id"] == home_id(home)
    assert "token" not in json.dumps(doc)
    r = run(home, "ask", str(photo), "Who is this?", "--user", "ana", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["answer"] is not None and out["memories"] and "photo_url" in out["memories"][0]
    assert all("path" not in m for m in out["memories"])  # the server sends no local paths
    text = run(home, "ask", str(photo), "Who is this?", "--user", "ana", "--no-stream")
    assert text.exit_code == 0 and "answered by covip serve" in text.stderr and "memories used (" in text.stdout
    cap = run(home, "caption", str(photo), "--user", "ana")
    assert cap.exit_code == 0 and "by covip serve" in cap.stdout and "from the cache" in cap.stdout


def test_remember_and_recall_use_the_servers_embedder(served, tmp_path: Path) -> None:
    """The server embeds; the memory is written and searched here, and matches what in-process recall finds."""
    home, photo, _ = served
    fresh = tmp_path / "mom2.png"
    fresh.write_bytes(png("Mom", 2))
    r = run(home, "remember", str(fresh), "--user", "ana", "-c", "Mom", "-d", "User: Mom again.")
    assert r.exit_code == 0, r.output
    served_hits = json.loads(run(home, "recall", str(fresh), "--user", "ana", "--json").stdout)
    assert served_hits["hits"][0]["score"] > 0.999  # the photo just remembered is its own best match
    assert served_hits["embedder"]["model_id"].startswith("open_clip/covip-tiny")
    from covip.sdk.cli.remote import find_server

    remote = find_server(home, fresh)
    vec = remote.embed(fresh)
    from covip.sdk import Memory

    with Memory.open(home) as mem:  # the same vector the server's own memory would compute
        assert mem.recall("ana", embedding=vec["embedding"], model_id=vec["model_id"], k=1)[0].photo.id == \
            served_hits["hits"][0]["photo"]["id"]


def test_local_and_model_options_stay_in_process(served) -> None:
    home, photo, _ = served
    for extra, env in ((["--local"], None), ([], {"COVIP_NO_SERVER": "1"})):
        r = run(home, "ask", str(photo), "Who is this?", "--user", "ana", *extra, env=env)
        assert r.exit_code != 0 and "no model is chosen" in r.stderr  # in-process: this home has no model
    r = run(home, "caption", str(photo), "--user", "ana", "-k", "1")  # a model option: in-process
    assert r.exit_code != 0 and "no model is chosen" in r.stderr


def test_server_errors_keep_their_exit_codes(served) -> None:
    from covip.sdk.cli.remote import find_server
    from covip.sdk.errors import InputError, NotFoundError

    home, photo, _ = served
    remote = find_server(home, photo)
    assert remote is not None
    with pytest.raises(NotFoundError, match="from covip serve"):
        remote.ask("nobody", photo, "Who?")
    bad = photo.with_name("bad.png")
    bad.write_bytes(b"not a photo")
    with pytest.raises(InputError, match="from covip serve"):
        remote.caption("ana", bad)


def test_stale_foreign_and_remote_server_files_are_ignored(tmp_path: Path, served) -> None:
    from covip.sdk.cli.remote import find_server

    home, photo, server = served
    other = tmp_path / "other"
    (other / "locks").mkdir(parents=True)
    f = other / SERVER_FILE
    cases = {
        "dead pid": {"pid": 2**22 + 12345, "url": server.url},
        "another home's server": {"pid": os.getpid(), "url": server.url},  # live, but serves `home`
        "not loopback": {"pid": os.getpid(), "url": "http://192.168.1.5:8765"},
        "garbage": "{not json",
        "huge": "x" * 10_000,
    }
    for name, doc in cases.items():
        f.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        assert find_server(other, photo) is None, name
    assert find_server(home, photo) is not None
