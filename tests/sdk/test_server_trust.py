"""`covip serve` against an attacker: a chat request naming the memory's own database (a real `covip serve`
process, with a second covip process writing beside it), folders the server may read, other web sites'
pages, error messages that must not leak, and resource bounds (question length, k, concurrent decodes)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("open_clip")
pytest.importorskip("transformers")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from covip.sdk.errors import InputError  # noqa: E402
from covip.sdk.server import BackgroundServer, ServeConfig, create_app  # noqa: E402
from tests.sdk.serve_util import assistant_in, chat_body, data_url, png  # noqa: E402


@pytest.fixture(scope="module")
def assistant(tmp_path_factory: pytest.TempPathFactory, tiny_engine, tiny_embedder):
    with assistant_in(tmp_path_factory.mktemp("trust") / "home", tiny_engine, tiny_embedder) as bot:
        yield bot


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the home that the server may read (--allow-dir)."""
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def server(assistant, shared):
    with BackgroundServer(assistant, ServeConfig(port=0, allowed_dirs=(shared,))) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def ana(client) -> int:
    r = client.post("/v1/users/ana/memories", files={"photo": ("bori.png", png("Bori", 0), "image/png")},
                    data={"dialogue": "User: Bori at the Han river.", "concepts": ["Bori"]})
    assert r.status_code == 201, r.text
    return r.json()["photo"]["id"]


def error(r: httpx.Response, status: int, *needles: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]["message"]
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------------------------------------- item 1
def _covip_exe() -> str:
    script = Path(sys.executable).parent / "covip"
    if not script.exists():
        pytest.skip("the covip console script is not installed in this environment")
    return str(script)


@pytest.fixture
def covip_serve(tmp_path: Path, tiny_vlm_dir) -> Iterator[tuple[str, Path, object]]:
    """A real `covip serve` process on a fresh home (tiny model and embedder): (url, home, run-covip)."""
    exe, home = _covip_exe(), tmp_path / "home"
    env = {**os.environ, "COVIP_HOME": str(home), "HF_HUB_OFFLINE": "1"}

    def covip(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([exe, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"covip {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    covip("init", "--embedder", "tiny", "--model", "tiny")
    covip("user", "add", "ana")
    server = subprocess.Popen([exe, "serve", "--port", "0"], env=env, cwd=tmp_path, stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stderr], daemon=True).start()
    url, seen = None, []
    try:
        while url is None:
            line = lines.get(timeout=300)
            seen.append(line)
            if "web page " in line:
                url = line.split("web page ", 1)[1].split()[0].rstrip("/")
        yield url, home, covip
    except queue.Empty:
        pytest.fail("covip serve did not start:\n" + "".join(seen))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_chat_naming_the_database_loses_nothing(covip_serve, tmp_path: Path) -> None:
    """The issue's sequence: a chat request names memory.db; another covip process writes and closes; the
    server's WAL must survive, and a remember through HTTP and one through the CLI must both be kept."""
    url, home, covip = covip_serve
    with httpx.Client(base_url=url, timeout=300) as c:
        for target in (str(home / "memory.db"), (home / "memory.db").as_uri(), str(home / "memory.db-wal"),
                       str(home / "memory.db-shm")):
            r = c.post("/v1/chat/completions", json=chat_body("ana", target))
            assert r.status_code == 400, r.text
        covip("user", "add", "carol")  # another process opens and closes the database
        assert (home / "memory.db-wal").exists(), "the running server's WAL was deleted under it"
        r = c.post("/v1/users/ana/memories", files={"photo": ("bori.png", png("Bori", 0), "image/png")},
                   data={"dialogue": "User: Bori at the Han river.", "concepts": ["Bori"]})
        assert r.status_code == 201, r.text
        (tmp_path / "mom.png").write_bytes(png("Mom", 0))
        covip("remember", str(tmp_path / "mom.png"), "--user", "ana", "-c", "Mom", "-d", "User: Mom at Busan.")
        photos = c.get("/v1/users/ana/photos").json()["data"]
        users = {u["name"] for u in c.get("/v1/users").json()["data"]}
    assert len({p["id"] for p in photos}) == 2 and len(photos) == 2
    assert users == {"ana", "carol"}
    assert len(json.loads(covip("history", "--user", "ana", "--json").stdout)["items"]) == 2
    report = json.loads(covip("verify", "--json").stdout)
    assert report["ok"] is True and not report["errors"], report


def test_photos_by_path_only_from_the_photo_store_and_allowed_dirs(client, ana, assistant, shared) -> None:
    home = assistant.memory.home
    inbox = home / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / "bori.png").write_bytes(png("Bori", 3))
    message = error(client.post("/v1/chat/completions", json=chat_body("ana", str(inbox / "bori.png"))), 400,
                    "may not read", "--allow-dir")
    assert str(shared) not in message  # the readable folders are not listed to the caller
    (shared / "bori.png").write_bytes(png("Bori", 3))
    assert client.post("/v1/chat/completions", json=chat_body("ana", str(shared / "bori.png"))).status_code == 200
    stored = next(p for p in (home / "photos").rglob("*") if p.is_file())
    assert client.post("/v1/chat/completions", json=chat_body("ana", stored.as_uri())).status_code == 200
    os.link(home / "memory.db", shared / "db.png")  # a hardlink inside an allowed folder
    (shared / "db-link.png").symlink_to(home / "memory.db-wal")
    for name in ("db.png", "db-link.png"):
        error(client.post("/v1/chat/completions", json=chat_body("ana", str(shared / name))), 400)


def test_allow_dir_holding_the_home_is_refused_at_start(assistant, tmp_path: Path) -> None:
    home = assistant.memory.home
    for folder in (home, home.parent, home / "index"):
        with pytest.raises(InputError, match="memory home"):
            create_app(assistant, ServeConfig(allowed_dirs=(folder,)))
    create_app(assistant, ServeConfig(allowed_dirs=(home / "photos", tmp_path)))  # these are fine

    from click.testing import CliRunner

    from covip.sdk.cli import cli

    other = tmp_path / "h"
    other.mkdir()
    result = CliRunner().invoke(cli, ["--home", str(other), "serve", "--port", "0", "--allow-dir", str(tmp_path)])
    assert result.exit_code == 2 and "contains the memory home" in result.stderr, result.output


def test_reading_a_photo_whose_record_names_the_database_is_refused(client, ana, assistant) -> None:
    """However a photo row came to name a home file (a hostile bundle, an edited database), serving its
    bytes never opens it."""
    mem = assistant.memory
    row = mem.store.one("SELECT stored_path, source_path FROM photos WHERE id = ?", [ana])
    with mem.store.write() as db:
        db.execute("UPDATE photos SET stored_path = NULL, source_path = ? WHERE id = ?",
                   [str(mem.home / "memory.db"), ana])
    try:
        r = client.get(f"/v1/users/ana/photos/{ana}")
        assert r.status_code in (400, 404) and b"SQLite format" not in r.content, r.text
    finally:
        with mem.store.write() as db:
            db.execute("UPDATE photos SET stored_path = ?, source_path = ? WHERE id = ?",
                       [row["stored_path"], row["source_path"], ana])


# ---------------------------------------------------------------------------------------------- item 8
def test_cross_site_requests_are_refused_and_responses_not_embeddable(client, ana) -> None:
    photo = f"/v1/users/ana/photos/{ana}"
    for path in ("/v1/verify?deep=true", photo, "/v1/users", "/v1/users/ana/concepts", "/v1/users/nobody/photos",
                 "/v1/models"):
        for site in ("cross-site", "same-site"):  # an <img> or a link on another site's page: no Origin sent
            r = client.get(path, headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors",
                                          "Sec-Fetch-Dest": "image"})
            error(r, 403, "another web site")
            assert r.headers["cross-origin-resource-policy"] == "same-origin"
    for site in ("same-origin", "none", None):  # this server's own page, a typed URL, a non-browser client
        r = client.get(photo, headers={"Sec-Fetch-Site": site} if site else {})
        assert r.status_code == 200 and r.content == png("Bori", 0)
        assert r.headers["cross-origin-resource-policy"] == "same-origin"
    page = client.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert page.status_code == 200 and page.headers["cross-origin-resource-policy"] == "same-origin"
    for r in (client.get("/v1/nothing"), client.get("/v1/models", headers={"Host": "attacker.example"})):
        assert r.status_code in (403, 404) and r.headers["cross-origin-resource-policy"] == "same-origin"


def test_error_messages_do_not_echo_contents_or_server_paths(client, ana, assistant, shared) -> None:
    secret = b"root:x:0:0:password=hunter2\n" * 4
    message = error(client.post("/v1/chat/completions", json=chat_body("ana", data_url(secret))), 400,
                    "not an image")
    assert "root:" not in message and "hunter2" not in message
    (shared / "notes.png").write_bytes(secret)
    sent = str(shared / "notes.png")
    message = error(client.post("/v1/chat/completions", json=chat_body("ana", sent)), 400, sent)
    assert "hunter2" not in message
    message = error(client.post("/v1/chat/completions", json=chat_body("ana", "/etc/passwd")), 400, "may not read")
    assert str(assistant.memory.home) not in message and str(shared) not in message and "root:" not in message
    message = error(client.post("/v1/chat/completions", json=chat_body("ana", str(shared / "missing.png"))), 400,
                    "does not exist")
    assert str(Path.cwd()) not in message
    upload = client.post("/v1/users/ana/memories", files={"photo": ("x.png", secret, "image/png")},
                         data={"dialogue": "hi", "concepts": ["Bori"]})
    assert "hunter2" not in error(upload, 400, "not an image")


# ---------------------------------------------------------------------------------------------- item 6
def test_question_longer_than_the_context_is_a_400_with_the_numbers(client, ana, assistant) -> None:
    photo = data_url(png("Bori", 0))
    long = "word " * 4500  # 4,501 tokens: over the tiny model's 4,096-token window
    message = error(client.post("/v1/chat/completions", json=chat_body("ana", photo, question=long)), 400,
                    "tokens", "4,096", "context")
    assert "shorten the question" in message
    stream = client.post("/v1/chat/completions", json=chat_body("ana", photo, question=long, stream=True))
    assert '"status": 400' in stream.text and "4,096" in stream.text
    assert client.post("/v1/chat/completions", json=chat_body("ana", photo, question="Who?")).status_code == 200


def test_question_over_the_server_limit_is_refused_before_any_work(assistant, ana) -> None:
    config = ServeConfig(port=0, max_question_chars=1000)
    with BackgroundServer(assistant, config) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/v1/chat/completions", json=chat_body("ana", "data:image/png;base64,@@@", question="x" * 1001))
        error(r, 400, "1,001 characters", "1,000")  # refused before the (broken) photo is even looked at


def test_search_k_has_the_memory_s_one_limit(client, ana) -> None:
    from covip.sdk.memory.validate import MAX_K

    files = {"photo": ("q.png", png("Bori", 0), "image/png")}
    error(client.post("/v1/users/ana/search", files=files, data={"k": str(10**9)}), 400, "k", str(MAX_K))
    r = client.post("/v1/users/ana/search", files=files, data={"k": str(MAX_K)})
    assert r.status_code == 200 and len(r.json()["data"]) >= 1


def test_concurrent_photo_decodes_are_bounded(assistant, ana, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --max-decodes 1, concurrent chat requests decode their photos one at a time."""
    import covip.sdk.server.work as work

    real, lock = work.load_photo, threading.Lock()
    state = {"now": 0, "most": 0, "calls": 0}
    crowd = threading.Event()

    def counting_load(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["most"] = max(state["most"], state["now"])
            if state["now"] >= 3:
                crowd.set()
        try:
            if state["calls"] == 1:
                crowd.wait(2.0)  # the first decode gives the other requests the chance to decode alongside
            return real(*args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(work, "load_photo", counting_load)
    with BackgroundServer(assistant, ServeConfig(port=0, max_decodes=1)) as srv:
        def ask(n: int) -> int:
            with httpx.Client(base_url=srv.url, timeout=120) as c:
                return c.post("/v1/chat/completions", json=chat_body("ana", data_url(png("Bori", n)))).status_code

        threads = [threading.Thread(target=lambda n=n: results.append(ask(n))) for n in range(3)]
        results: list[int] = []
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert results == [200, 200, 200] and state["calls"] == 3
    assert state["most"] == 1


def test_large_requests_are_served_a_few_at_a_time() -> None:
    """Bodies over 1 MiB (photos, bundles) wait for one of --max-decodes slots before they are read, so a
    burst of large photos costs the memory of the slots, not of every client; small requests never wait."""
    import asyncio

    from covip.sdk.server.app import Guard

    async def scenario() -> tuple[int, list[int], int]:
        inside, most, release = 0, 0, asyncio.Event()

        async def app(scope, receive, send) -> None:  # stands in for the routes
            nonlocal inside, most
            large = scope["path"] == "/v1/large"
            if large:
                inside += 1
                most = max(most, inside)
                while (await receive()).get("more_body"):
                    pass
                await release.wait()
                inside -= 1
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        guard = Guard(app, ServeConfig(max_decodes=1))
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            bodies = [asyncio.create_task(c.post("/v1/large", content=b"x" * (2 << 20))) for _ in range(3)]
            small = (await c.get("/v1/small")).status_code  # not held up by the large ones
            for _ in range(50):
                await asyncio.sleep(0)  # let every large request get as far as it can
            waiting = inside
            release.set()
            statuses = [r.status_code for r in await asyncio.gather(*bodies)]
        return small, statuses, max(most, waiting)

    small, statuses, most = asyncio.run(scenario())
    assert small == 200 and statuses == [200, 200, 200]
    assert most == 1
