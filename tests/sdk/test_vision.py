"""Tests for covip.sdk.vision: the tiny real open_clip model, config, errors and lazy imports."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covip.sdk.errors import EmbedderError, InputError, MissingExtraError
from covip.sdk.imaging import load_photo
from covip.sdk.vision import Embedder, EmbedderConfig, OpenClipEmbedder, make_embedder
from covip.sdk.vision import openclip as openclip_module
from covip.sdk.vision.base import TINY_MODEL
from covip.sdk.vision.openclip import TINY_CONFIG_PATH

pytest.importorskip("open_clip", reason="needs the torch extra: pip install 'covip[torch]'")
torch = pytest.importorskip("torch")

TINY_ID = "open_clip/covip-tiny/random-seed0"


def _images(n: int, seed: int = 0, size: tuple[int, int] = (80, 60)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny() -> OpenClipEmbedder:
    embedder = OpenClipEmbedder(EmbedderConfig(model="tiny", device="cpu"))
    yield embedder
    embedder.close()


def _fresh(**overrides) -> OpenClipEmbedder:
    """Build a tiny embedder from scratch, not from the per-process cache of random models."""
    openclip_module._random_models.clear()
    return OpenClipEmbedder(EmbedderConfig(model="tiny", device="cpu", **overrides))


# ----------------------------------------------------------------------------- embeddings


def test_tiny_shape_dtype_and_unit_norm(tiny: OpenClipEmbedder) -> None:
    assert isinstance(tiny, Embedder)
    assert tiny.model_id == TINY_ID and tiny.dim == 64 and tiny.meaningless is True
    vecs = tiny.embed_images(_images(5))
    assert vecs.shape == (5, 64) and vecs.dtype == np.float32 and vecs.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1])  # different images, different vectors


def test_empty_input(tiny: OpenClipEmbedder) -> None:
    out = tiny.embed_images([])
    assert out.shape == (0, 64) and out.dtype == np.float32


def test_batch_size_does_not_change_vectors(tiny: OpenClipEmbedder) -> None:
    imgs = _images(7, seed=3)
    reference = tiny.embed_images(imgs, batch_size=7)
    for bs in (1, 2, 3, 32):
        np.testing.assert_allclose(tiny.embed_images(imgs, batch_size=bs), reference, rtol=0, atol=1e-6)
    single = np.concatenate([tiny.embed_images([img]) for img in imgs])
    np.testing.assert_allclose(single, reference, rtol=0, atol=1e-6)


def test_deterministic_across_builds_and_seed_sensitive() -> None:
    imgs = _images(3, seed=1)
    first = _fresh()
    second = _fresh()
    assert first._model is not second._model  # really two builds
    np.testing.assert_array_equal(first.embed_images(imgs), second.embed_images(imgs))
    other = _fresh(seed=1)
    assert other.model_id == "open_clip/covip-tiny/random-seed1"
    assert not np.allclose(other.embed_images(imgs), first.embed_images(imgs), atol=1e-3)


def test_building_does_not_disturb_callers_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    _fresh(seed=5)
    assert torch.equal(torch.rand(4), expected)


def test_cache_reuses_tiny_model() -> None:
    a = OpenClipEmbedder(EmbedderConfig(model="tiny", device="cpu"))
    b = make_embedder("tiny", device="cpu")
    assert a._model is b._model
    a.close()  # closing one must not break the other
    assert b.embed_images(_images(1)).shape == (1, 64)


def test_photo_and_pil_inputs_agree(tmp_path: Path, tiny: OpenClipEmbedder) -> None:
    img = _images(1, seed=9)[0]
    path = tmp_path / "x.png"
    img.save(path)
    photo = load_photo(path)
    np.testing.assert_array_equal(tiny.embed_images([photo]), tiny.embed_images([img]))


def test_alpha_is_composited_over_white(tiny: OpenClipEmbedder) -> None:
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    np.testing.assert_allclose(tiny.embed_images([rgba]), tiny.embed_images([white]), atol=1e-6)


def test_tiny_logs_meaningless_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="covip.sdk.vision.openclip")
    embedder = make_embedder("tiny", device="cpu")
    assert embedder.meaningless is True
    warnings = [
        r for r in caplog.records if r.name == "covip.sdk.vision.openclip" and r.levelno == logging.WARNING
    ]
    assert warnings and "meaningless" in warnings[0].getMessage()


def test_bad_arguments_to_embed_images(tiny: OpenClipEmbedder) -> None:
    img = _images(1)[0]
    with pytest.raises(InputError, match="sequence"):
        tiny.embed_images(img)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="item 1 is a str"):
        tiny.embed_images([img, "photo.jpg"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="batch_size"):
        tiny.embed_images([img], batch_size=0)


def test_close_and_context_manager() -> None:
    with make_embedder("tiny", device="cpu") as embedder:
        assert embedder.embed_images(_images(1)).shape == (1, 64)
    with pytest.raises(EmbedderError, match="closed"):
        embedder.embed_images(_images(1))
    embedder.close()  # idempotent


# ----------------------------------------------------------------------------- config and specs


def test_config_fields_all_have_help_and_validate() -> None:
    helps = EmbedderConfig.field_help()
    assert set(helps) >= {"model", "pretrained", "device", "batch_size", "seed"}
    assert all(text.strip() for text in helps.values())
    cfg = EmbedderConfig()
    assert (cfg.model, cfg.pretrained, cfg.device, cfg.batch_size, cfg.seed) == (
        TINY_MODEL,
        None,
        "auto",
        32,
        0,
    )
    with pytest.raises(InputError, match="batch_size"):
        EmbedderConfig(batch_size=0)
    with pytest.raises(InputError, match="device"):
        EmbedderConfig(device="tpu")
    with pytest.raises(InputError, match="device"):
        EmbedderConfig(device="cuda:x")
    assert EmbedderConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(InputError, match="unknown EmbedderConfig field"):
        cfg.with_overrides(colour="red")
    assert cfg.with_overrides(seed=3).seed == 3
    assert cfg.with_overrides({"seed": 4}).seed == 4 and cfg.with_overrides(["seed=5"]).seed == 5


def test_spec_parsing() -> None:
    from covip.sdk.vision import parse_embedder_spec

    assert parse_embedder_spec("tiny") == EmbedderConfig(model="tiny")
    assert parse_embedder_spec("ViT-B-32") == EmbedderConfig(model="ViT-B-32")
    assert parse_embedder_spec("ViT-B-32/laion2b_s34b_b79k") == EmbedderConfig(
        model="ViT-B-32", pretrained="laion2b_s34b_b79k"
    )
    assert parse_embedder_spec("ViT-B-32//w/model.bin").pretrained == "/w/model.bin"
    with pytest.raises(InputError):
        parse_embedder_spec("")
    with pytest.raises(InputError):
        make_embedder(3.5)  # type: ignore[arg-type]


def test_tiny_config_file_is_a_real_clip_architecture(tiny: OpenClipEmbedder) -> None:
    import json

    cfg = json.loads(TINY_CONFIG_PATH.read_text())
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    assert cfg["embed_dim"] == 64 and vision["image_size"] == 64 and vision["patch_size"] == 16
    assert vision["width"] // vision["head_width"] == 2 and text["heads"] == 2
    assert text["context_length"] == 16 and text["vocab_size"] == 49408
    model = tiny._model
    assert type(model).__name__ == "CLIP" and hasattr(model, "encode_text")
    assert model.visual.transformer.resblocks[0].attn.num_heads == 2


# ----------------------------------------------------------------------------- weights and errors


def test_local_weights_file_loads(tmp_path: Path, tiny: OpenClipEmbedder) -> None:
    path = tmp_path / "tiny_weights.pt"
    torch.save(tiny._model.state_dict(), path)
    loaded = make_embedder("tiny", pretrained=str(path), device="cpu", seed=7)  # seed ignored: weights win
    assert loaded.model_id.startswith("open_clip/covip-tiny/file-")
    imgs = _images(2, seed=4)
    np.testing.assert_allclose(loaded.embed_images(imgs), tiny.embed_images(imgs), atol=1e-6)


def test_missing_local_weights_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    for spec in ("tiny", "ViT-B-32"):
        start = time.monotonic()
        with pytest.raises(EmbedderError) as info:
            make_embedder(spec, pretrained=str(missing), device="cpu")
        assert str(missing) in str(info.value) and "does not exist" in str(info.value)
        assert time.monotonic() - start < 5


def test_corrupt_local_weights_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(EmbedderError, match="could not be loaded") as info:
        make_embedder("tiny", pretrained=str(bad), device="cpu")
    assert str(bad) in str(info.value)


def test_pretrained_tag_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(EmbedderError) as info:
        make_embedder("ViT-B-32/laion2b_s34b_b79k", cache_dir=str(tmp_path), device="cpu")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "offline" in message and "could not be loaded" in message
    assert "--pretrained /path/open_clip_pytorch_model.bin" in message and "local file" in message
    assert elapsed < 5, f"took {elapsed:.1f}s: must not wait on the network"


def test_default_tag_is_chosen_for_bare_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmbedderError, match="laion2b_s34b_b79k"):
        make_embedder("ViT-B-32", cache_dir=str(tmp_path), device="cpu")


def test_unknown_model_and_tag() -> None:
    with pytest.raises(EmbedderError, match="no model named 'ViT-Q-99'"):
        make_embedder("ViT-Q-99", device="cpu")
    with pytest.raises(EmbedderError, match="known open_clip tag") as info:
        make_embedder("ViT-B-32/no_such_tag", device="cpu")
    assert "laion2b_s34b_b79k" in str(info.value)


def test_unavailable_device() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(EmbedderError, match="no CUDA GPU"):
        make_embedder("tiny", device="cuda")


def test_missing_open_clip_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # what Python does for a blocked import
    with pytest.raises(MissingExtraError, match=r"pip install 'covip\[torch\]'"):
        make_embedder("tiny")


def test_vision_import_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import covip.sdk.vision, covip.sdk.imaging\n"
        "from covip.sdk.vision import EmbedderConfig, make_embedder, OpenClipEmbedder, Embedder\n"
        "heavy = [m for m in ('torch', 'open_clip', 'torchvision', 'timm', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
