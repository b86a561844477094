"""Shared fixtures: tiny real models built once per session, photo factories, fresh memory homes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub


def draw_photo(seed: int, size: int = 96) -> Image.Image:
    """A distinct procedural 'photo': background colour plus a few random shapes, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        x1, y1 = x0 + int(rng.integers(4, max(5, size // 2))), y0 + int(rng.integers(4, max(5, size // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    noise = rng.integers(0, 24, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


@pytest.fixture
def photo_factory(tmp_path: Path) -> Callable[..., Path]:
    """Write a distinct PNG (or JPEG) for a seed and return its path."""

    def make(seed: int, *, fmt: str = "PNG", size: int = 96) -> Path:
        path = tmp_path / "photos-in" / f"p{seed}.{fmt.lower()}"
        path.parent.mkdir(exist_ok=True)
        draw_photo(seed, size).save(path, fmt)
        return path

    return make


def unit_vector(seed: int, dim: int = 32) -> np.ndarray:
    """A deterministic L2-normalized float32 vector."""
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="session")
def tiny_embedder():
    """The tiny open_clip embedder (real architecture, random weights), built once per session."""
    from covip.sdk.vision import make_embedder

    emb = make_embedder("tiny")
    yield emb
    emb.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def mem(home: Path, tiny_embedder):
    from covip.sdk import Memory

    with Memory.open(home, embedder=tiny_embedder) as m:
        yield m


def home_fingerprint(home: Path) -> dict:
    """Every table's rows plus every file's hash under ``photos/`` and ``index/``: equal means unchanged."""
    import sqlite3

    conn = sqlite3.connect(home / "memory.db")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        rows = {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}
    finally:
        conn.close()
    files = {}
    for sub in ("photos", "index"):
        for p in sorted((home / sub).rglob("*")):
            if p.is_file():
                files[str(p.relative_to(home))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return {"rows": rows, "files": files}


@pytest.fixture(scope="session")
def tiny_gguf() -> tuple[Path, Path]:
    """(text GGUF, mmproj GGUF) of the tiny Qwen3-VL, converted once with llama.cpp's own converter.

    The converter comes from the llama-cpp-python sdist, downloaded once into ~/.cache/covip; the test
    skips when that download is impossible (offline machine without the cached sdist).
    """
    from covip.sdk.models import build_tiny_vlm
    from tests.gguf_fixtures import ConverterUnavailable, convert_tiny_to_gguf

    try:
        return convert_tiny_to_gguf(build_tiny_vlm("qwen3-vl"))
    except ConverterUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_vlm_dir() -> Path:
    """The tiny Qwen3-VL (real architecture, random weights, SmolLM2 tokenizer) as a save_pretrained dir.

    Built once into ``$COVIP_CACHE`` (or the per-user cache) and reused by later sessions.
    """
    from covip.sdk.models import build_tiny_vlm

    return build_tiny_vlm("qwen3-vl")


@pytest.fixture(scope="session")
def tiny_engine(tiny_vlm_dir: Path):
    """The tiny VLM as a loaded engine, shared by the session (an Assistant given ``engine=`` never closes it)."""
    from covip.sdk.engines.factory import make_engine

    engine = make_engine("tiny")
    yield engine
    engine.close()


@pytest.fixture
def memory_keyring():
    """An in-process OS keyring: a real ``keyring`` backend over a dict, installed with keyring.set_keyring."""
    import keyring
    import keyring.backend
    import keyring.errors

    class MemoryKeyring(keyring.backend.KeyringBackend):
        priority = 1

        def __init__(self) -> None:
            super().__init__()
            self.store: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, username: str) -> str | None:
            return self.store.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self.store[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            if self.store.pop((service, username), None) is None:
                raise keyring.errors.PasswordDeleteError(username)

    before = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(before)
