"""``covip models`` and ``covip pull``, offline: a Hugging Face cache laid out by hand under tmp_path, the way
huggingface_hub lays it out (and checked by its own ``scan_cache_dir``), plus covip's cache and a home."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from covip.sdk.cli import cli
from covip.sdk.errors import CovipError, InputError, NotFoundError
from covip.sdk.models import hub as hubmod
from covip.sdk.models.cache import human_size, list_models
from covip.sdk.models.hub import check_patterns, check_repo_id, check_revision

hf = pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {"config.json": b'{"model_type": "qwen3_vl"}\n', "model-Q4_K_M.gguf": b"GGUF" + b"\0" * 4000,
         "mmproj-f16.gguf": b"GGUF" + b"\1" * 1500}


def fake_hub_repo(cache: Path, repo_id: str, files: dict[str, bytes] = FILES, commit: str = COMMIT,
                  ref: str = "main") -> Path:
    """``<cache>/models--owner--name`` with blobs/, refs/<ref> and snapshots/<commit>/ links, as the Hub cache."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    snap = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose caches and home are all under tmp_path, with the Hub switched off."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "COVIP_"))}
    out.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "hf-home"),
               COVIP_CACHE=str(tmp_path / "covip-cache"), COVIP_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1",
               HF_ENDPOINT="http://127.0.0.1:9")  # should anything try the network, it fails at once
    return out


def covip(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh process (huggingface_hub reads HF_* at import)."""
    code = "import sys; from covip.sdk.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)


def test_fake_cache_is_what_huggingface_hub_expects(tmp_path: Path) -> None:
    fake_hub_repo(tmp_path / "hub", "owner/name")
    info = hf.scan_cache_dir(tmp_path / "hub")
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == "owner/name" and repo.size_on_disk == sum(len(d) for d in FILES.values())
    assert {r.commit_hash for r in repo.revisions} == {COMMIT}


def test_pull_finds_the_cached_snapshot_offline_and_models_lists_it(env: dict[str, str], tmp_path: Path) -> None:
    snap = fake_hub_repo(tmp_path / "hub", "owner/name")
    res = covip(env, "pull", "owner/name")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(snap)  # stdout: the local folder only, for $(covip pull ...)
    assert "already in the cache" in res.stderr and "3 files" in res.stderr and "nothing downloaded" in res.stderr
    assert "--model" in res.stderr

    res = covip(env, "pull", "owner/name", "--include", "*Q4_K_M.gguf", "--include", "mmproj*", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["already_cached"] is True and doc["path"] == str(snap) and doc["commit"] == COMMIT
    assert doc["has_gguf"] is True and doc["include"] == ["*Q4_K_M.gguf", "mmproj*"]

    res = covip(env, "models", "--json")
    assert res.returncode == 0, res.stderr
    rows = [m for m in json.loads(res.stdout)["models"] if m["kind"] == "hub"]
    size = sum(len(d) for d in FILES.values())
    assert rows == [{"kind": "hub", "name": "owner/name", "bytes": size, "size": human_size(size), "path": str(snap),
                     "note": "", "files": ["mmproj-f16.gguf", "model-Q4_K_M.gguf"]}]
    text = covip(env, "models")
    assert text.returncode == 0, text.stderr
    line = next(x for x in text.stdout.splitlines() if "owner/name" in x)
    assert line.split()[:4] == ["hub", "owner/name", *human_size(size).split()] and str(snap) in line


def test_pull_of_a_missing_id_offline_fails_clearly(env: dict[str, str], tmp_path: Path) -> None:
    fake_hub_repo(tmp_path / "hub", "owner/name")
    res = covip(env, "pull", "owner/other")
    assert res.returncode == 3, (res.returncode, res.stderr)  # NotFoundError: exit code 3
    assert res.stdout == ""
    err = res.stderr
    assert err.startswith("error: owner/other") and "not in the Hugging Face cache" in err
    assert "HF_HUB_OFFLINE" in err and "covip pull owner/other" in err and "Traceback" not in err
    # cached, but not the files asked for: not "already cached", and offline that is an error too
    res = covip(env, "pull", "owner/name", "--include", "*Q8_0.gguf")
    assert res.returncode == 3 and "no cached file matches '*Q8_0.gguf'" in res.stderr, res.stderr
    res = covip(env, "pull", "owner/name", "--refresh")
    assert res.returncode == 2 and "--refresh" in res.stderr and "HF_HUB_OFFLINE" in res.stderr


def test_pull_without_network_names_the_fix(env: dict[str, str]) -> None:
    env = {**env, "HF_HUB_OFFLINE": "0"}  # online, but the endpoint refuses every connection
    res = covip(env, "pull", "owner/name")
    assert res.returncode == 1, res.stderr
    assert "cannot reach the Hugging Face Hub" in res.stderr and "HTTPS_PROXY" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (Path(env["HF_HUB_CACHE"]) / "models--owner--name" / "snapshots").exists()


BAD_IDS = ["../etc", "owner/../../etc", "/abs/path", "~/models/x", "C:\\models\\x", "owner", "a/b/c", "owner/",
           "/name", "owner/na..me", "owner/na--me", "owner/-name", "owner/name.", "own er/name", "owner/name\n",
           "hf:owner/name", "owner/" + "n" * 300, "x" * 100_000, "owner/naïve", ""]


@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda s: repr(s[:20]))
def test_bad_ids_are_refused_before_anything_else(bad: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    called = []
    monkeypatch.setattr(hf, "snapshot_download", lambda *a, **k: called.append(a) or str(tmp_path))
    res = CliRunner().invoke(cli, ["pull", bad])
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and len(res.output) < 600  # a huge id is not echoed back whole
    assert not called and not (tmp_path / "hub").exists()


@pytest.mark.parametrize("args", [["--revision", "../../etc"], ["--revision", "main/../x"], ["--revision", ""],
                                  ["--revision", "r" * 500], ["--include", "/etc/passwd"],
                                  ["--include", "../secret"], ["--include", ""], ["--include", "a\nb"]])
def test_bad_revisions_and_patterns_are_refused(args: list[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hf, "snapshot_download", lambda *a, **k: pytest.fail("reached the Hub"))
    res = CliRunner().invoke(cli, ["pull", "owner/name", *args])
    assert res.exit_code == 2 and "error:" in res.output, res.output


def test_validators_accept_real_ids() -> None:
    for ok in ("Qwen/Qwen3-VL-2B-Instruct", "ggml-org/Qwen3-VL-2B-Instruct-GGUF", "a/b", "o_1/n.a-m_e2"):
        assert check_repo_id(ok) == ok
    assert check_revision(None) is None and check_revision("refs/pr/3") == "refs/pr/3"
    assert check_revision(COMMIT) == COMMIT
    assert check_patterns(("*Q4_K_M.gguf", "mmproj*", "sub/*.json")) == ["*Q4_K_M.gguf", "mmproj*", "sub/*.json"]
    with pytest.raises(InputError, match="at most 96"):
        check_repo_id("o/" + "n" * 95)
    with pytest.raises(InputError, match="at most 50"):
        check_patterns([f"*{i}" for i in range(51)])


class _Response:
    """Just enough of an HTTP response for huggingface_hub's error classes."""

    def __init__(self, status: int) -> None:
        self.status_code, self.headers, self.text, self.url = status, {}, "", "https://huggingface.co/api/x"
        self.request = None

    def json(self) -> dict:
        return {}


@pytest.mark.parametrize(("name", "status", "error", "words"), [
    ("GatedRepoError", 403, CovipError, "gated"),
    ("RepositoryNotFoundError", 404, NotFoundError, "no model owner/name"),
    ("RevisionNotFoundError", 404, NotFoundError, "has no revision"),
    ("HfHubHTTPError", 401, CovipError, "token"),
    ("HfHubHTTPError", 503, CovipError, "HTTP 503"),
])
def test_hub_errors_become_covip_errors(name: str, status: int, error: type, words: str, tmp_path: Path,
                                        monkeypatch) -> None:
    from huggingface_hub import errors as hf_errors

    exc = getattr(hf_errors, name)("the hub said no", response=_Response(status))

    def fail(*args, local_files_only: bool = False, **kwargs):
        if local_files_only:
            raise hf_errors.LocalEntryNotFoundError("not cached")
        raise exc

    monkeypatch.setattr(hf, "snapshot_download", fail)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(error, match=words) as info:
        hubmod.pull("owner/name", revision="v1", cache_dir=tmp_path)
    assert type(info.value) is error and info.value.__cause__ is exc


def test_an_online_pull_reports_what_it_downloaded(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "hub"
    seen = {}

    def download(repo_id, *, local_files_only=False, **kwargs):
        if local_files_only:
            from huggingface_hub import errors as hf_errors

            raise hf_errors.LocalEntryNotFoundError("not cached")
        seen.update(kwargs)
        return str(fake_hub_repo(cache, repo_id, {"model-Q4_K_M.gguf": b"GGUF1234"}))

    monkeypatch.setattr(hf, "snapshot_download", download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    result = hubmod.pull("owner/name", include=["*Q4_K_M.gguf"], cache_dir=cache)
    assert not result.already_cached and result.files == 1 and result.bytes == 8 and result.has_gguf
    assert seen["allow_patterns"] == ["*Q4_K_M.gguf"] and seen["cache_dir"] == str(cache)
    with pytest.raises(NotFoundError, match="matches --include 'mmproj\\*'"):  # a pattern the repo has no file for
        hubmod.pull("owner/name", include=["mmproj*"], refresh=True, cache_dir=cache)


def test_models_with_nothing_cached_says_how_to_get_one(env: dict[str, str]) -> None:
    res = covip(env, "models")
    assert res.returncode == 0, res.stderr
    assert "no models cached" in res.stdout and "covip pull" in res.stdout and "covip demo" in res.stdout


def test_models_lists_covip_cache_and_the_homes_export(tmp_path: Path, monkeypatch) -> None:
    from covip.sdk.config import write_settings

    cache = tmp_path / "covip-cache"
    tiny = cache / "models" / "tiny-qwen3-vl-abc"
    tiny.mkdir(parents=True)
    (tiny / "model.safetensors").write_bytes(b"w" * 2500)
    emb = cache / "embedders" / "covip-mini-clip-123"
    emb.mkdir(parents=True)
    (emb / "open_clip_model.safetensors").write_bytes(b"e" * 100)
    gguf = cache / "gguf" / "tiny-llama"
    gguf.mkdir(parents=True)
    (gguf / "tiny-f32.gguf").write_bytes(b"g" * 10)
    (cache / "models" / ".tiny-qwen3-vl-abc.tmp-x").mkdir()  # a crashed build
    export = tmp_path / "exports" / "mine"
    export.mkdir(parents=True)
    (export / "covip_export.json").write_text("{}")
    (export / "model-q8_0.gguf").write_bytes(b"q" * 700)
    home = tmp_path / "home"
    write_settings(home, {"model": str(export), "quant": "q8_0"})
    monkeypatch.setenv("COVIP_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    res = CliRunner().invoke(cli, ["--home", str(home), "models", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    got = {(m["kind"], m["name"]): m for m in doc["models"]}
    assert got["model", "tiny-qwen3-vl-abc"]["bytes"] == 2500
    assert got["embedder", "covip-mini-clip-123"]["bytes"] == 100
    assert got["gguf", "tiny-llama"]["files"] == ["tiny-f32.gguf"]
    assert got["partial", "models/.tiny-qwen3-vl-abc.tmp-x"]["note"].startswith("unfinished")
    mine = got["export", "mine"]
    assert mine["bytes"] == 702 and "the home's model (quant q8_0)" in mine["note"]
    assert doc["home_model"] == str(export) and doc["total_bytes"] == 2500 + 100 + 10 + 702
    text = CliRunner().invoke(cli, ["--home", str(home), "models"])
    assert text.exit_code == 0 and "2.5 kB" in text.stdout and f"uses model {export}" in text.stdout


def test_models_marks_a_homes_hub_model_that_is_not_downloaded(tmp_path: Path) -> None:
    from covip.sdk.config import write_settings

    home = tmp_path / "home"
    write_settings(home, {"model": "Qwen/Qwen3-VL-2B-Instruct"})
    listing = list_models(home, covip_cache=tmp_path / "none", hub_cache=tmp_path / "hub")
    (row,) = listing.models
    assert row.kind == "hub" and row.bytes is None and "covip pull Qwen/Qwen3-VL-2B-Instruct" in row.note
    fake_hub_repo(tmp_path / "hub", "Qwen/Qwen3-VL-2B-Instruct")
    (row,) = list_models(home, covip_cache=tmp_path / "none", hub_cache=tmp_path / "hub").models
    assert row.bytes == sum(len(d) for d in FILES.values()) and "the home's model" in row.note


def test_a_broken_home_config_does_not_hide_the_caches(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text("{not json")
    fake_hub_repo(tmp_path / "hub", "owner/name")
    listing = list_models(home, covip_cache=tmp_path / "none", hub_cache=tmp_path / "hub")
    assert [m.name for m in listing.models] == ["owner/name"]
    assert listing.notes and "could not be read" in listing.notes[0]


def test_human_size() -> None:
    assert [human_size(n) for n in (None, 0, 999, 1000, 1_500_000, 2_000_000_000)] == [
        "-", "0 B", "999 B", "1.0 kB", "1.5 MB", "2.0 GB"]
