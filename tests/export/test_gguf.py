"""GGUF export end to end on the tiny Qwen3-VL and Qwen2.5-VL: LoRA merge -> convert -> quantize -> manifest
-> parity with the HF model -> the SDK opens the export by its manifest and answers a CAG question.

Each model is exported once per module (a LoRA adapter made directly with peft on the tiny model, with
non-zero B so the merge changes the weights): Qwen3-VL through the ``covip export gguf`` CLI, Qwen2.5-VL
through :func:`covip.export.gguf.export_gguf`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from covip.export.converter import ConverterUnavailable, converter_dir  # noqa: E402
from covip.export.manifest import MANIFEST_NAME, add_files, write_manifest  # noqa: E402
from covip.sdk.errors import EngineError, ExportError  # noqa: E402
from covip.sdk.export_manifest import read_manifest  # noqa: E402
from tests.conftest import draw_photo  # noqa: E402

LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
QUANTS = "f32,q8_0,q4_0,q4_k_m"
LORA_B_SCALE = 0.05  # changes every greedy token of the base, keeps logits in a realistic range


def _cli():
    from covip.export.cli import register
    from covip.sdk.cli.main import cli

    if "export" not in cli.commands:
        register(cli)
    return cli


@pytest.fixture(scope="module")
def converter():
    try:
        return converter_dir()
    except ConverterUnavailable as exc:
        pytest.skip(str(exc))


def make_adapter(kind: str, out: Path) -> tuple[Path, Path]:
    """(tiny base dir, LoRA adapter dir) with random, clearly non-zero LoRA weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from covip.sdk.models import build_tiny_vlm

    base = build_tiny_vlm(kind)
    model = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS,
                                                  init_lora_weights=False))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * LORA_B_SCALE)
    peft_model.save_pretrained(str(out))
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    return base, out


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory, converter):
    """Qwen3-VL exported through the CLI: (base, adapter, export dir, CLI JSON result)."""
    root = tmp_path_factory.mktemp("qwen3")
    base, adapter = make_adapter("qwen3-vl", root / "adapter")
    out = root / "export"
    home = root / "home"
    res = CliRunner().invoke(_cli(), ["--home", str(home), "export", "gguf", str(adapter), "--out", str(out),
                                      "--quant", QUANTS, "--init", "--init-quant", "q8_0", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["home"] == str(home)
    return base, adapter, out, doc


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory, converter):
    """Qwen2.5-VL exported through the Python API: (base, adapter, export dir, result)."""
    from covip.export.gguf import export_gguf

    root = tmp_path_factory.mktemp("qwen25")
    base, adapter = make_adapter("qwen2.5-vl", root / "adapter")
    result = export_gguf(adapter, root / "export", quants=QUANTS, progress=False)
    return base, adapter, root / "export", result.to_dict()


@pytest.fixture(params=["qwen3", "qwen25"])
def exported(request):
    return request.getfixturevalue(request.param)


def test_export_writes_manifest_quants_and_passes_parity(exported) -> None:
    base, adapter, out, result = exported
    m = read_manifest(out)  # sha256 of every file checked
    assert m.kind == "gguf" and m.meaningless is True
    assert {(f.kind, f.quant) for f in m.files} == {("gguf-text", "f32"), ("gguf-text", "q8_0"),
                                                    ("gguf-text", "q4_0"), ("gguf-mmproj", "f16")}
    assert m.source["adapter"] == str(adapter) and m.source["merged"] is True and m.source["base"] == str(base)
    assert m.llama_cpp_version and m.covip_version and m.prompt_version.startswith("covip-prompts")
    assert "<|im_start|>" in (m.chat_template or "")
    assert (out / "covip_tiny.json").is_file()
    assert not list(out.parent.glob(".export.tmp-*"))  # the build folder is gone
    # the processor's image-token limits (tiny presets: 1..16 merged tokens) travel with the export
    assert m.vision == {"image_min_tokens": 1, "image_max_tokens": 16}

    # q4_k_m cannot be made on a model whose rows are 64 wide: skipped, with the reason
    assert "256" in result["skipped"]["q4_k_m"] and "q4_0" in result["skipped"]["q4_k_m"]

    report = result["verify"]
    assert report["parity_ok"] and report["passed"], report
    files = {f["quant"]: f for f in report["files"]}
    f32 = files["f32"]
    assert f32["greedy_equal"] and f32["top1_agreement"] == 1.0
    assert {c["case"] for c in f32["cases"]} == {"text", "image"}
    assert all(c["prompt_match"] and c["positions"] >= 8 for c in f32["cases"])
    assert f32["max_abs_diff"] < 0.05
    assert files["q8_0"]["top1_agreement"] >= 0.75
    assert files["q4_0"]["top1_agreement"] >= 0.5
    assert 0 < files["q4_0"]["size_ratio"] < files["q8_0"]["size_ratio"] < 0.5


def test_verify_command_against_the_adapter_and_against_the_base(qwen3) -> None:
    base, adapter, out, _ = qwen3
    ok = CliRunner().invoke(_cli(), ["export", "verify", str(out), "--against", str(adapter), "--quant", "f32",
                                     "--tokens", "8", "--json"], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["parity_ok"] and [f["quant"] for f in data["files"]] == ["f32"]
    # the base model without the LoRA answers differently: the merge took effect, and a mismatch fails loudly
    bad = CliRunner().invoke(_cli(), ["export", "verify", str(out), "--against", str(base), "--quant", "f32",
                                      "--tokens", "8"], catch_exceptions=False)
    assert bad.exit_code == 1
    assert "greedy tokens DIFFER" in bad.stdout and "parity: FAILED" in bad.stdout


def test_export_fails_loudly_and_writes_nothing_when_parity_fails(tmp_path, qwen25, monkeypatch) -> None:
    import covip.export.verify as verify_mod
    from covip.export.gguf import export_gguf

    base, adapter, _, _ = qwen25
    real = verify_mod.verify_export
    # compare the export of the adapter with the base model: the f32 file cannot match it
    monkeypatch.setattr(verify_mod, "verify_export", lambda d, against, **kw: real(d, base, **kw))
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="(?s)parity check failed.*greedy tokens DIFFER"):
        export_gguf(adapter, out, quants="f16", outtype="f16", progress=False)
    assert not out.exists() and not list(tmp_path.glob(".export.tmp-*"))


def test_make_engine_opens_the_export_by_manifest_and_answers_cag(exported, home, tiny_embedder) -> None:
    from covip.sdk import Memory
    from covip.sdk.assistant import Assistant, AssistantConfig
    from covip.sdk.cag import CagConfig
    from covip.sdk.context import ContextConfig
    from covip.sdk.engines import describe_model_spec, make_engine
    from covip.sdk.engines.base import GenerationConfig
    from covip.sdk.engines.llamacpp import LlamaCppEngine

    _, _, out, _ = exported
    assert describe_model_spec(str(out)) == "llama.cpp"
    with make_engine(str(out), quant="q4_0", n_ctx=2048) as eng:
        assert eng.model_path.name == "model-q4_0.gguf"
    with pytest.raises(ExportError, match="no text GGUF of quant 'q4_k_m'.*f32, q8_0, q4_0"):
        make_engine(str(out), quant="q4_k_m")
    engine = make_engine(str(out), n_ctx=4096)  # default: the most faithful quant
    assert isinstance(engine, LlamaCppEngine) and engine.model_path.name == "model-f32.gguf"
    assert engine.multimodal and engine.meaningless

    memory = Memory.open(home, embedder=tiny_embedder)
    cag = CagConfig(caption=GenerationConfig(max_new_tokens=12), answer=GenerationConfig(max_new_tokens=8))
    cfg = AssistantConfig(home=home, context=ContextConfig(k=2, similarity_floor=-1.0, image_tokens=16), cag=cag)
    try:
        with Assistant(cfg, memory=memory, engine=engine) as assistant:
            memory.add_user("ana")
            memory.remember("ana", draw_photo(1, 64), "User: Bori at the Han river.", ["Bori"], place="Han river")
            memory.remember("ana", draw_photo(2, 64), "User: Mom at her birthday dinner.", ["Mom"])
            answer = assistant.ask("ana", draw_photo(1, 64), "Who is this?")
            assert answer.cag and answer.caption and answer.answer
            assert answer.memories and answer.tokens["answer_prompt"] > 0
            assert assistant.meaningless
            again = assistant.ask("ana", draw_photo(1, 64), "Who is this?")
            assert again.caption_cached and again.answer == answer.answer
    finally:
        engine.close()
        memory.close()


def test_damaged_exports_give_clear_errors(tmp_path, qwen3, qwen25) -> None:
    from covip.sdk.engines import make_engine

    src = qwen3[2]
    # a truncated text GGUF: the manifest's size check names it; without checks llama.cpp refuses it
    trunc = tmp_path / "truncated"
    shutil.copytree(src, trunc)
    gguf = trunc / "model-f32.gguf"
    with open(gguf, "r+b") as fh:
        fh.truncate(gguf.stat().st_size // 2)
    with pytest.raises(ExportError, match=r"model-f32.gguf.*bytes.*truncated"):
        read_manifest(trunc, verify="size")
    with pytest.raises(ExportError, match="truncated"):
        make_engine(str(trunc))
    with pytest.raises(EngineError, match="cannot load the model file"):
        make_engine(str(trunc), verify="none")

    # a manifest whose hash does not match the file
    bad_hash = tmp_path / "bad-hash"
    shutil.copytree(src, bad_hash)
    data = json.loads((bad_hash / MANIFEST_NAME).read_text())
    entry = next(f for f in data["files"] if f["quant"] == "q8_0")
    entry["sha256"] = "0" * 64
    (bad_hash / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ExportError, match=r"model-q8_0.gguf.*sha256.*corrupted or replaced"):
        read_manifest(bad_hash)
    read_manifest(bad_hash, verify="size")  # the fast mode checks sizes only
    with pytest.raises(ExportError, match="model-q8_0.gguf.*sha256"):
        make_engine(str(bad_hash), quant="q8_0", verify="sha256")
    # by default an open trusts a file with the size and modification time recorded at export (no hashing)
    make_engine(str(bad_hash), quant="q8_0").close()
    os.utime(bad_hash / entry["path"])  # touched since: hashed again, and the mismatch is found
    with pytest.raises(ExportError, match="model-q8_0.gguf.*sha256"):
        make_engine(str(bad_hash), quant="q8_0")
    # a manifest that is not JSON / not ours
    (bad_hash / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ExportError, match="cannot be read as JSON"):
        read_manifest(bad_hash)
    (bad_hash / MANIFEST_NAME).write_text(json.dumps({"format": "other", "version": 1, "files": []}))
    with pytest.raises(ExportError, match="format is 'other'"):
        read_manifest(bad_hash)

    # the mmproj of the other tiny model: the hash says it was replaced; re-hashed, the pair check says why
    wrong = tmp_path / "wrong-mmproj"
    shutil.copytree(src, wrong)
    shutil.copyfile(qwen25[2] / "mmproj-f16.gguf", wrong / "mmproj-f16.gguf")
    with pytest.raises(ExportError, match="mmproj-f16.gguf"):
        make_engine(str(wrong))
    m = read_manifest(wrong, verify="none")
    write_manifest(wrong, add_files(m, wrong, [("mmproj-f16.gguf", "gguf-mmproj", "f16")]))
    with pytest.raises(EngineError, match="qwen2.5vl_merger projector.*qwen3vl.*different models"):
        make_engine(str(wrong))


def test_converter_offline_message(tmp_path, monkeypatch) -> None:
    from covip.export.converter import _find_tarball, llama_cpp_version, sdist_cache_dir

    real_cache = sdist_cache_dir()
    tarball = _find_tarball(real_cache, llama_cpp_version()) or _find_tarball(real_cache.parent, llama_cpp_version())
    monkeypatch.setenv("COVIP_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    version = llama_cpp_version()
    with pytest.raises(ConverterUnavailable) as info:
        converter_dir()
    msg = str(info.value)
    assert f"pip download --no-deps --no-binary :all: llama-cpp-python=={version} -d DIR" in msg
    assert "--converter-dir" in msg and str(tmp_path / "empty-cache") in msg
    with pytest.raises(ConverterUnavailable, match="holds neither"):
        converter_dir(tmp_path)
    if tarball is None:
        pytest.skip("no cached llama-cpp-python sdist to try --converter-dir with")
    given = tmp_path / "downloaded"
    given.mkdir()
    (given / tarball.name).symlink_to(tarball)
    conv = converter_dir(given)  # what a user does offline with a downloaded sdist
    assert (conv / "convert_hf_to_gguf.py").is_file() and (conv / "gguf-py").is_dir()
    assert str(tmp_path / "empty-cache") in str(conv)


@pytest.mark.slow
def test_q4_k_m_on_a_model_with_256_wide_rows(tmp_path, converter) -> None:
    """A tiny Qwen3-VL widened to 256 (every weight row a multiple of 256): q4_k_m is made, not skipped."""
    import gguf as gguf_py
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from covip.export.gguf import export_gguf
    from covip.sdk.models import build_tiny_vlm

    tiny = build_tiny_vlm("qwen3-vl")
    cfg = AutoConfig.from_pretrained(str(tiny))
    tc = cfg.text_config
    tc.hidden_size, tc.intermediate_size, tc.num_attention_heads, tc.num_key_value_heads = 256, 512, 16, 16
    cfg.vision_config.out_hidden_size = 256
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32)
    wide = tmp_path / "wide"
    model.save_pretrained(str(wide))
    AutoProcessor.from_pretrained(str(tiny)).save_pretrained(str(wide))
    marker = json.loads((tiny / "covip_tiny.json").read_text())
    (wide / "covip_tiny.json").write_text(json.dumps(dict(marker, name="tiny-qwen3-vl-wide")))

    result = export_gguf(wide, tmp_path / "export", quants="f16,q8_0,q4_k_m", progress=False)
    assert result.skipped == {}
    files = {f.quant: f for f in result.manifest.files if f.kind == "gguf-text"}
    assert set(files) == {"f16", "q8_0", "q4_k_m"}
    types = {t.tensor_type.name for t in gguf_py.GGUFReader(str(tmp_path / "export" / "model-q4_k_m.gguf")).tensors}
    assert "Q4_K" in types
    assert files["q4_k_m"].bytes < files["q8_0"].bytes < files["f16"].bytes
    report = {f.quant: f for f in result.verify.files}
    assert result.verify.parity_ok and report["q4_k_m"].top1_agreement >= 0.5


def test_export_init_makes_the_export_the_homes_model(qwen3, tmp_path) -> None:
    """`covip export gguf RUN --out OUT --init`: one step from a training run to the model the home answers with."""
    from covip.sdk.config import read_settings

    _, adapter, out, doc = qwen3
    settings = read_settings(Path(doc["home"]))
    assert settings["model"] == str(out.resolve()) and settings["quant"] == "q8_0"
    bad = CliRunner().invoke(_cli(), ["--home", str(tmp_path / "h"), "export", "gguf", str(adapter), "--out",
                                      str(tmp_path / "x"), "--quant", "f32", "--init", "--init-quant", "q4_0"])
    assert bad.exit_code == 2 and "not among the exported quants" in bad.output  # refused before any work
    assert not (tmp_path / "x").exists() and not (tmp_path / "h").exists()


def test_init_quant_chooses_the_file_ask_and_the_api_open(qwen3, tmp_path) -> None:
    from covip.sdk import Assistant, AssistantConfig

    _, _, out, _ = qwen3
    cli, home = _cli(), tmp_path / "home"
    res = CliRunner().invoke(cli, ["--home", str(home), "init", "--embedder", "tiny", "--model", str(out),
                                   "--quant", "q8_0"])
    assert res.exit_code == 0 and "q8_0" in res.output, res.output
    with Assistant(AssistantConfig(home=home, embedder="tiny")) as bot:  # the home's choice, not the f32 file
        assert Path(bot.engine.model_path).name.endswith("q8_0.gguf")
    with Assistant(AssistantConfig(home=home, embedder="tiny", engine_options={"quant": "q4_0"})) as bot:
        assert Path(bot.engine.model_path).name.endswith("q4_0.gguf")  # an explicit choice wins
    bad = CliRunner().invoke(cli, ["--home", str(home), "init", "--force", "--model", str(out), "--quant", "q2_k"])
    assert bad.exit_code != 0 and "has no 'q2_k' model file" in bad.output and "q8_0" in bad.output
    other = CliRunner().invoke(cli, ["--home", str(tmp_path / "h2"), "init", "--embedder", "tiny", "--model", "tiny",
                                     "--quant", "q8_0"])
    assert other.exit_code != 0 and "is not one" in other.output


def _with_pixels(src: Path, dst: Path, pixels: int) -> Path:
    """A copy of a tiny checkpoint whose image processor keeps every photo at exactly ``pixels`` pixels."""
    shutil.copytree(src, dst)
    cfg_path = dst / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["image_processor"]["size"] = {"shortest_edge": pixels, "longest_edge": pixels}
    cfg_path.write_text(json.dumps(cfg))
    return dst


def test_small_photos_keep_the_trained_image_layout_on_llama_cpp(tmp_path, tiny_vlm_dir, converter) -> None:
    """A processor of 4 image tokens (the ``mini`` preset's 64-px photos): libmtmd's Qwen-VL default of at
    least 8 tokens would show the GGUF model a layout it never saw; the export records the processor's
    limits and the engine opened from it prefills exactly the tokens transformers does."""
    from covip.export.gguf import export_gguf, image_token_limits
    from covip.sdk.engines import make_engine
    from covip.sdk.engines.base import GenerationConfig
    from covip.sdk.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig
    from covip.sdk.engines.transformers import TransformersEngine, TransformersEngineConfig

    model = _with_pixels(tiny_vlm_dir, tmp_path / "small-photos", 64 * 64)
    assert image_token_limits(model) == {"image_min_tokens": 4, "image_max_tokens": 4}
    result = export_gguf(model, tmp_path / "export", quants="f32", progress=False)
    m = read_manifest(tmp_path / "export")
    assert m.vision == {"image_min_tokens": 4, "image_max_tokens": 4}
    report = result.to_dict()["verify"]
    image_case = [c for f in report["files"] for c in f["cases"] if c["case"] == "image"]
    assert report["parity_ok"] and image_case and all(c["prompt_match"] for c in image_case), report

    photo = draw_photo(3, 64)
    msgs = [{"role": "user", "content": [{"type": "image", "image": photo},
                                         {"type": "text", "text": "Who is this?"}]}]
    one = GenerationConfig(max_new_tokens=1)
    with TransformersEngine(TransformersEngineConfig(model=str(model))) as hf:
        hf_tokens = hf.generate(msgs, one).prompt_tokens
    with make_engine(str(tmp_path / "export"), n_ctx=512) as eng:
        assert (eng.config.image_min_tokens, eng.config.image_max_tokens) == (4, 4)
        assert eng.generate(msgs, one).prompt_tokens == hf_tokens
    # libmtmd's own limits (what the engine did before the export recorded them): at least 8 tokens, not 4
    text, mm = m.gguf_text(), m.gguf_mmproj()
    with LlamaCppEngine(LlamaCppEngineConfig(model_path=m.path_of(text), mmproj_path=m.path_of(mm), n_ctx=512)) as eng:
        assert eng.generate(msgs, one).prompt_tokens >= hf_tokens + 4


@pytest.mark.parametrize("bad, match", [
    ({"image_min_tokens": 10**9}, "image_min_tokens must be an integer from 1 to 65,536"),
    ({"image_max_tokens": 0}, "image_max_tokens must be an integer from 1"),
    ({"image_min_tokens": True}, "image_min_tokens must be an integer"),
    ({"image_min_tokens": 16, "image_max_tokens": 4}, r"image_min_tokens \(16\) must not exceed"),
])
def test_image_token_limits_reject_bad_values(bad, match) -> None:
    from covip.sdk.engines.llamacpp import LlamaCppEngineConfig
    from covip.sdk.errors import InputError

    with pytest.raises(InputError, match=match):
        LlamaCppEngineConfig(model_path="m.gguf", **bad)


@pytest.mark.parametrize("vision, match", [
    ({"image_min_tokens": -1}, "vision.image_min_tokens must be an integer from 1"),
    ({"image_min_tokens": "4"}, "vision.image_min_tokens must be an integer"),
    ({"image_min_tokens": 9, "image_max_tokens": 4}, "exceeds vision.image_max_tokens"),
    ({"n_threads": 64}, "'vision' must be an object with image_min_tokens"),
    ([4, 4], "'vision' must be an object"),
])
def test_a_tampered_manifest_vision_section_is_refused(tmp_path, qwen3, vision, match) -> None:
    _, _, out, _ = qwen3
    bad = tmp_path / "export"
    shutil.copytree(out, bad)
    doc = json.loads((bad / MANIFEST_NAME).read_text())
    doc["vision"] = vision
    (bad / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(ExportError, match=match):
        read_manifest(bad, verify="none")


def _processor_config(folder: Path, image_processor: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "processor_config.json").write_text(json.dumps({"image_processor": image_processor}))
    return folder


def test_recorded_image_token_limits_are_clamped_and_unreadable_ones_are_dropped(tmp_path) -> None:
    """What a checkpoint's processor says becomes limits every manifest reader accepts: both ends clamped to
    1..MAX_IMAGE_TOKENS before min <= max is settled; a garbled processor config records nothing."""
    from covip.export.gguf import image_token_limits
    from covip.export.merge import read_pixel_limits
    from covip.sdk.export_manifest import MAX_IMAGE_TOKENS, _vision_limits

    huge = _processor_config(tmp_path / "huge", {"patch_size": 16, "merge_size": 2,
                                                 "size": {"shortest_edge": 10**12, "longest_edge": 10**13}})
    limits = image_token_limits(huge)
    assert limits == {"image_min_tokens": MAX_IMAGE_TOKENS, "image_max_tokens": MAX_IMAGE_TOKENS}
    assert _vision_limits(limits, "test") == limits  # read_manifest accepts what the export writes
    inverted = _processor_config(tmp_path / "inverted", {"patch_size": 16, "min_pixels": 64 * 32 * 32,
                                                         "max_pixels": 4 * 32 * 32})
    assert image_token_limits(inverted) == {"image_min_tokens": 64, "image_max_tokens": 64}
    real = _processor_config(tmp_path / "real", {"patch_size": 16, "merge_size": 2,  # Qwen3-VL's own numbers
                                                 "size": {"shortest_edge": 65536, "longest_edge": 16777216}})
    assert image_token_limits(real) == {"image_min_tokens": 64, "image_max_tokens": 16384}
    older = _processor_config(tmp_path / "older", {"patch_size": 14, "merge_size": 2,  # Qwen2.5-VL's older layout
                                                   "size": {"min_pixels": 3136, "max_pixels": 12845056}})
    assert image_token_limits(older) == {"image_min_tokens": 4, "image_max_tokens": 16384}
    for garbled in ({"patch_size": "sixteen", "min_pixels": 4096}, {"patch_size": 16, "min_pixels": -5},
                    {"patch_size": 0, "min_pixels": 4096}, {"patch_size": 16, "merge_size": [2]}):
        folder = _processor_config(tmp_path / f"garbled-{len(list(tmp_path.iterdir()))}", garbled)
        assert read_pixel_limits(folder) is None and image_token_limits(folder) is None, garbled
    assert image_token_limits(tmp_path / "no-such-checkpoint") is None
