"""`covip serve`: the OpenAI-compatible API (with the real `openai` client), the memory endpoints, limits
(body size, pixels, time), the token rule, concurrent clients and a schemathesis fuzz run, all against a real
uvicorn server on a free loopback port, on the tiny random-weight models."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("open_clip")
pytest.importorskip("transformers")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from covip.sdk.server import BackgroundServer, ServeConfig  # noqa: E402
from tests.sdk.serve_util import assistant_in, chat_body, data_url, png  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assistant(tmp_path_factory: pytest.TempPathFactory, tiny_engine, tiny_embedder):
    with assistant_in(tmp_path_factory.mktemp("serve") / "home", tiny_engine, tiny_embedder) as bot:
        yield bot


@pytest.fixture(scope="module")
def server(assistant):
    with BackgroundServer(assistant, ServeConfig(port=0)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def ana(client) -> dict[int, int]:
    """User ana remembers Bori (twice) and Mom; returns {variant-ish key: photo id}."""
    ids = {}
    for key, (name, variant, dialogue) in {
        1: ("Bori", 0, "User: This is Bori, my white jindo, at the Han river."),
        2: ("Bori", 1, "User: Bori at the vet in Mapo."),
        3: ("Mom", 0, "User: Mom in her red coat at Busan station."),
    }.items():
        r = client.post("/v1/users/ana/memories", files={"photo": (f"{name}.png", png(name, variant), "image/png")},
                        data={"dialogue": dialogue, "concepts": [name], "place": "Seoul"})
        assert r.status_code == 201, r.text
        ids[key] = r.json()["photo"]["id"]
    return ids


def error(r: httpx.Response, status: int, *needles: str) -> dict:
    """An expected error: the status, OpenAI's error shape, the message parts."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()["error"]
    assert set(body) >= {"message", "type"} and body["message"], body
    for needle in needles:
        assert needle in body["message"], body["message"]
    return body


# ---------------------------------------------------------------------------------------------- OpenAI API
def test_unmodified_openai_client_chat_stream_and_models(server, ana):
    from openai import OpenAI

    oai = OpenAI(base_url=server.url + "/v1", api_key="not-needed-on-loopback", max_retries=0)
    assert [m.id for m in oai.models.list()] == [server.app.state.covip.model_name]
    content = [{"type": "text", "text": "Who is this, and where did I last see her?"},
               {"type": "image_url", "image_url": {"url": data_url(png("Bori", 7))}}]
    reply = oai.chat.completions.create(model="covip", user="ana", messages=[{"role": "user", "content": content}])
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    answer = reply.choices[0].message.content
    assert answer and reply.usage.completion_tokens >= 1
    covip = reply.model_extra["covip"]  # provenance: memories used, caption, cache hit, timings
    assert covip["user"] == "ana" and covip["caption"] and "total_s" in covip["timings"]
    assert covip["memories"] and {"photo_id", "score", "concepts", "dialogue", "photo_url"} <= set(covip["memories"][0])
    assert all("path" not in m for m in covip["memories"])  # no local paths leave the server
    # the same question streamed: the same (greedy) answer, and now the caption comes from the cache
    stream = oai.chat.completions.create(model="covip", user="ana", stream=True,
                                         stream_options={"include_usage": True},
                                         messages=[{"role": "user", "content": content}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == answer
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert final.model_extra["covip"]["cache_hit"] is True
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_raw_sse_format_and_follow_up_question(client, ana):
    body = chat_body("ana", data_url(png("Mom", 3)), stream=True)
    body["messages"] += [{"role": "assistant", "content": "That is your mother."},
                         {"role": "user", "content": "And where was she?"}]  # the photo comes from turn 1
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    docs = [json.loads(line[6:]) for line in lines[:-1]]
    assert docs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(d["object"] == "chat.completion.chunk" for d in docs)
    assert docs[-1]["choices"][0]["finish_reason"] in ("stop", "length") and "covip" in docs[-1]


def test_conversation_turns_and_system_messages_reach_the_model(client, ana):
    """A text-only follow-up is answered about the photo of an earlier turn, with that turn shown to the model;
    turns before the photo are about another photo and are left out; system/developer text is honoured."""
    first = client.post("/v1/chat/completions", json=chat_body("ana", data_url(png("Bori", 5)))).json()
    answer = first["choices"][0]["message"]["content"]
    other = chat_body("ana", data_url(png("Mom", 4)), "Who was that?")["messages"]
    messages = [{"role": "system", "content": "Answer in one short sentence."}, *other,
                {"role": "assistant", "content": "Mom."},
                *chat_body("ana", data_url(png("Bori", 5)))["messages"],
                {"role": "assistant", "content": answer}, {"role": "user", "content": "Where was that?"}]
    r = client.post("/v1/chat/completions", json={"user": "ana", "messages": messages})
    assert r.status_code == 200, r.text
    covip = r.json()["covip"]
    assert covip["history_turns"] == 1 and covip["history_dropped"] == 0  # only the turn about this photo
    usage = r.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0  # the previous turn's prompt was reused
    no_system = client.post("/v1/chat/completions", json={"user": "ana", "messages": messages[1:]}).json()
    assert usage["prompt_tokens"] > no_system["usage"]["prompt_tokens"]  # the system text was in the prompt
    huge = [*messages[:-1], {"role": "assistant", "content": "x" * 1_100_000}, messages[-1]]
    error(client.post("/v1/chat/completions", json={"user": "ana", "messages": huge}), 400, "shorten the conversation")


def test_max_tokens_may_shorten_never_lengthen(client, ana, assistant):
    photo = data_url(png("Bori", 7))
    short = client.post("/v1/chat/completions", json=chat_body("ana", photo, max_tokens=1)).json()
    assert short["usage"]["completion_tokens"] == 1 and short["choices"][0]["finish_reason"] == "length"
    long = client.post("/v1/chat/completions", json=chat_body("ana", photo, max_completion_tokens=10_000)).json()
    assert long["usage"]["completion_tokens"] <= 4  # the server's limit (fast_assistant: 4)
    assert assistant.cag.config.answer.max_new_tokens == 4  # the per-request change did not stick


def test_chat_bad_input_is_a_clear_4xx(client, ana, assistant, tmp_path):
    photo = data_url(png("Bori", 7))
    error(client.post("/v1/chat/completions", json=chat_body("nobody", photo)), 404, "nobody")
    error(client.post("/v1/chat/completions", json={**chat_body("ana", photo), "user": None}), 400, "user")
    error(client.post("/v1/chat/completions", json={"user": "ana", "messages": [{"role": "user", "content": "hi"}]}),
          400, "no photo")
    error(client.post("/v1/chat/completions", json=chat_body("ana", "data:image/png;base64,@@@")), 400, "base64")
    error(client.post("/v1/chat/completions", json=chat_body("ana", data_url(b"not an image"))), 400, "not an image")
    error(client.post("/v1/chat/completions", json=chat_body("ana", data_url(png("Bori", 0, size=200)))), 413,
          "pixels")
    error(client.post("/v1/chat/completions", json=chat_body("ana", "https://example.com/a.jpg")), 400, "data URL")
    body = error(client.post("/v1/chat/completions", json=chat_body("ana", "/etc/passwd")), 400, "may not read")
    assert "root:" not in body["message"]  # nothing of the file is shown
    error(client.post("/v1/chat/completions", json={**chat_body("ana", photo), "n": 2}), 400, "n")
    error(client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
          400)
    # a remembered photo in the memory's photo store may be named by path (other folders need --allow-dir;
    # the rest of the home never: see test_server_trust.py)
    stored = next(p for p in (assistant.memory.home / "photos").rglob("*") if p.is_file())
    r = client.post("/v1/chat/completions", json=chat_body("ana", stored.as_uri()))
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------- memory API
def test_memory_endpoints(client, ana):
    concepts = client.get("/v1/users/ana/concepts").json()["data"]
    assert {c["name"] for c in concepts} >= {"Bori", "Mom"}
    hits = client.post("/v1/users/ana/search", files={"photo": ("q.png", png("Bori", 0), "image/png")},
                       data={"k": "2"}).json()["data"]
    assert hits[0]["photo"]["id"] == ana[1] and hits[0]["score"] > 0.99 and hits[0]["concepts"] == ["Bori"]
    assert "Han river" in hits[0]["episodes"][0]["dialogue"]
    r = client.get(hits[0]["photo"]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == png("Bori", 0)
    # a photo's bytes only to its owner
    assert client.post("/v1/users", json={"name": "bob"}).status_code == 201
    error(client.post("/v1/users", json={"name": "bob"}), 409, "already exists")
    assert client.post("/v1/users", json={"name": "bob", "exist_ok": True}).status_code == 201
    error(client.get(f"/v1/users/bob/photos/{ana[1]}"), 404)
    # bad uploads
    error(client.post("/v1/users/ana/memories", files={"photo": ("x.png", b"", "image/png")}), 400, "empty")
    error(client.post("/v1/users/ana/memories", files={"photo": ("x.png", png()[:300], "image/png")}), 400,
          "truncated")
    error(client.post("/v1/users/ana/memories", files={"photo": ("big.png", png(size=200), "image/png")}), 413,
          "pixels")
    error(client.post("/v1/users/ana/memories", files={"photo": ("a.png", png("Mom", 5), "image/png")},
                      data={"taken_at": "yesterday"}), 400, "ISO")
    error(client.post("/v1/users/ana/memories", data={"dialogue": "no photo"}), 400, "photo")
    error(client.delete("/v1/users/ana/photos/999999"), 404)
    error(client.delete("/v1/users/ana/concepts/Nobody"), 404, "Nobody")


def test_forget_export_import(client):
    for n, name in enumerate(("Bori", "Mom")):
        r = client.post("/v1/users/cleo/memories", files={"photo": ("p.png", png(name, 4 + n), "image/png")},
                        data={"dialogue": f"User: cleo's {name}", "concepts": name})
        assert r.status_code == 201, r.text
    bundle = client.get("/v1/users/cleo/export")
    assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/zip"
    photos = client.get("/v1/users/cleo/photos").json()["data"]
    gone = client.delete(f"/v1/users/cleo/photos/{photos[0]['id']}").json()
    assert gone["forgot"]["photos"] == 1 and gone["forgot"]["episodes"] == 1
    assert client.delete("/v1/users/cleo/concepts/Mom").json()["forgot"]["concepts"] == 1
    assert client.get("/v1/users/cleo/photos").json()["data"] == []
    assert client.delete("/v1/users/cleo").json()["forgot"]["users"] == 1
    error(client.get("/v1/users/cleo/photos"), 404)
    files = {"bundle": ("cleo.covip.zip", bundle.content, "application/zip")}
    assert client.post("/v1/import", files=files).json()["imported"]["photos"] == 2
    error(client.post("/v1/import", files=files), 409, "already exists")
    assert client.post("/v1/import", files=files, data={"user": "cleo2"}).status_code == 201
    assert len(client.get("/v1/users/cleo/photos").json()["data"]) == 2
    error(client.post("/v1/import", files={"bundle": ("x.zip", b"PK-not-a-zip", "application/zip")}), 400, "zip")
    assert client.get("/v1/verify").json()["ok"]


# ---------------------------------------------------------------------------------------------- limits
def test_body_limit_refuses_before_reading(assistant):
    config = ServeConfig(port=0, max_body_mb=0.05)
    with BackgroundServer(assistant, config) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            big = png("Bori", 0) * 3  # ~86 KB > 51 KB
            error(c.post("/v1/users/ana/search", files={"photo": ("b.png", big, "image/png")}), 413, "max-body-mb")
            chunked = c.post("/v1/chat/completions", content=iter([b"x" * 40_000] * 3),
                             headers={"content-type": "application/json"})  # no Content-Length
            error(chunked, 413, "larger than")
        # a 1 GB Content-Length with no body at all: answered at once, nothing is read
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
            reply = sock.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 413")


def test_timeout_is_504_and_the_queue_recovers(assistant, client, ana):
    with BackgroundServer(assistant, ServeConfig(port=0, timeout_s=1.0)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        body = chat_body("ana", data_url(png("Bori", 7)))
        with assistant._lock:  # the model is busy with someone else's long answer
            t0 = time.monotonic()
            error(c.post("/v1/chat/completions", json=body), 504, "time limit", "--timeout-s")
            assert time.monotonic() - t0 < 5
            with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            assert events[-1]["error"]["type"] == "timeout_error"
        # the timed-out work was dropped, not left holding the model: the next request (any server) gets it
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text


def test_concurrent_clients_all_answered(server, ana):
    from openai import OpenAI

    n = 8
    results: dict[int, str] = {}
    failures: list[BaseException] = []

    def one(i: int) -> None:
        try:
            oai = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
            content = [{"type": "text", "text": f"Question {i}: who is this?"},
                       {"type": "image_url", "image_url": {"url": data_url(png(("Bori", "Mom")[i % 2], 20 + i))}}]
            if i % 2:
                stream = oai.chat.completions.create(model="covip", user="ana", stream=True,
                                                     messages=[{"role": "user", "content": content}])
                results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            else:
                reply = oai.chat.completions.create(model="covip", user="ana",
                                                    messages=[{"role": "user", "content": content}])
                results[i] = reply.choices[0].message.content
        except BaseException as exc:  # collected and shown below
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    print(f"{n} parallel clients answered in {time.monotonic() - t0:.2f} s")
    assert not failures, failures
    assert sorted(results) == list(range(n)) and all(text.strip() for text in results.values())


# ---------------------------------------------------------------------------------------------- access
def test_token_rule(assistant, ana):
    with pytest.raises(Exception, match="needs an API token"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", token="t0k3n").loopback is False
    with BackgroundServer(assistant, ServeConfig(port=0, token="s3cret")) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        body = error(c.get("/v1/models"), 401, "Authorization: Bearer")
        assert body["type"] == "authentication_error"
        error(c.get("/v1/users/ana/photos/1", headers={"Authorization": "Bearer wrong"}), 401, "wrong")
        error(c.post("/v1/chat/completions", json=chat_body("ana", data_url(png()))), 401)
        error(c.get("/openapi.json"), 401)
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200  # the page holds no data
        from openai import AuthenticationError, OpenAI

        with pytest.raises(AuthenticationError):
            OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        oai = OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        reply = oai.chat.completions.create(model="covip", user="ana", messages=chat_body("ana", data_url(png()))
                                            ["messages"])
        assert reply.choices[0].message.content


def test_foreign_host_and_origin_are_refused(client):
    error(client.get("/v1/models", headers={"Host": "attacker.example:8765"}), 403, "not this machine")
    error(client.post("/v1/users", json={"name": "x"}, headers={"Origin": "https://attacker.example"}), 403,
          "another origin")
    same = client.base_url.scheme + "://" + client.base_url.netloc.decode()
    assert client.get("/v1/models", headers={"Origin": same}).status_code == 200


def test_page_and_static_files_work_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    static = Path(__file__).resolve().parents[2] / "sdk" / "server" / "static"
    for f in static.iterdir():
        text = f.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, f.name
        assert client.get(f"/static/{f.name}").status_code == 200


def test_cli_serve_refusals_and_missing_extra(tmp_path):
    from click.testing import CliRunner

    from covip.sdk.cli import cli

    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "h"), "serve", "--host", "0.0.0.0"], env={
        "COVIP_API_TOKEN": ""})
    assert result.exit_code == 2 and "needs an API token" in result.stderr and "Traceback" not in result.stderr
    block = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {'fastapi', 'uvicorn', 'starlette'}:
                    raise ImportError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        import covip.sdk, covip.sdk.server            # importable without the extra
        from covip.sdk.cli import main
        sys.exit(main(["--home", sys.argv[1], "serve"]))
    """)
    out = subprocess.run([sys.executable, "-c", block, str(tmp_path / "h")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 6, out.stderr
    assert "pip install 'covip[serve]'" in out.stderr and "Traceback" not in out.stderr


# ---------------------------------------------------------------------------------------------- fuzz (last)
def test_schemathesis_fuzz_no_server_errors(server, client, ana, assistant):
    """Every operation of the OpenAPI document, 20 generated requests each (forget-user left out; valid and
    invalid data, random users and a real one): no 5xx, the server still up, the memory still verifies."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/chat/completions", "POST /v1/users/{user}/memories", "GET /v1/users/{user}/export-memory",
            "POST /v1/import-memory", "DELETE /v1/users/{user}/photos/{photo_id}",
            "PATCH /v1/users/{user}/episodes/{episode_id}", "POST /v1/users/{user}/photos/{photo_id}/move"} <= labels
    failures = []
    for op in operations:
        if op.label == "DELETE /v1/users/{user}":
            continue  # destructive for the fixtures; tested above

        # valid and invalid requests, for random users and for ana (who has photos, concepts, dialogues)
        strategies = [op.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
        if "{user}" in op.path:
            strategies.append(op.as_strategy(path_parameters={"user": "ana"}))

        @settings(max_examples=20, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=st.one_of(strategies))
        def run(case) -> None:
            case.call_and_validate(base_url=server.url, checks=[not_a_server_error])

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{op.label}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
    assert client.get("/v1/health").json()["status"] == "ok" and server.alive
    assert assistant.memory.verify().ok
