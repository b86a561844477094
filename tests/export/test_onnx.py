"""ONNX export end to end on the tiny Qwen3-VL (Qwen2.5-VL in a slow test): LoRA adapter -> merge -> vision /
embedding / KV-cache decoder graphs -> int8 + int4 -> manifest -> parity with the HF model -> OnnxEngine (no
torch) answers a CAG question, reusing the caption pass's KV cache.

The Qwen3-VL export is made once per module through the ``covip export onnx`` command, from a LoRA adapter
made directly with peft (non-zero B, so the merge changes the weights), with a fixed 96x96 image input
(grid 1x6x6, 9 image tokens).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from covip.export.manifest import MANIFEST_NAME  # noqa: E402
from covip.sdk.engines.base import GenerationConfig  # noqa: E402
from covip.sdk.errors import EngineError, ExportError, InputError  # noqa: E402
from covip.sdk.export_manifest import read_manifest  # noqa: E402
from tests.conftest import draw_photo  # noqa: E402

LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
GEN = GenerationConfig(max_new_tokens=12)


def _cli() -> tuple[object, list[str]]:
    """(click group, argv prefix) for `covip export onnx`: the real covip CLI when its export group exists."""
    import click

    from covip.export.onnx_cli import register_onnx

    try:
        from covip.export.cli import register
        from covip.sdk.cli.main import cli

        if "export" not in cli.commands:
            register(cli)
        group = cli.commands["export"]
        if "onnx" not in group.commands:
            register_onnx(group)
        return cli, ["export", "onnx"]
    except ImportError:
        group = click.Group("export")
        register_onnx(group)
        return group, ["onnx"]


def make_adapter(kind: str, out: Path) -> tuple[Path, Path]:
    """(tiny base dir, LoRA adapter dir) with random, clearly non-zero LoRA weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from covip.sdk.models import build_tiny_vlm

    base = build_tiny_vlm(kind)
    model = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS,
                                                  init_lora_weights=False))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(str(out))
    return base, out


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """(base, adapter, merged HF dir, export dir, CLI JSON result) of the tiny Qwen3-VL + LoRA."""
    from covip.export.merge import merge_lora

    root = tmp_path_factory.mktemp("onnx-qwen3")
    base, adapter = make_adapter("qwen3-vl", root / "adapter")
    out = root / "export"
    group, argv = _cli()
    res = CliRunner().invoke(group, [*argv, str(adapter), "--out", str(out), "--int8", "--int4",
                                     "--image-size", "96", "--verify-tokens", "12", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    merged = merge_lora(adapter, root / "merged").path  # the same merge, for the transformers engine
    return base, adapter, merged, out, json.loads(res.stdout)


@pytest.fixture(scope="module")
def engine(qwen3):
    from covip.sdk.engines.onnx import OnnxEngine, OnnxEngineConfig

    with OnnxEngine(OnnxEngineConfig(export_dir=qwen3[3], provider="cpu")) as eng:
        yield eng


@pytest.fixture(scope="module")
def hf_engine(qwen3):
    from covip.sdk.engines.transformers import TransformersEngine, TransformersEngineConfig

    # HF's resizing opened up so that a 96x96 photo stays 96x96: the same pixels as the ONNX engine
    with TransformersEngine(TransformersEngineConfig(model=str(qwen3[2]), device="cpu", dtype="float32",
                                                     min_pixels=32 * 32, max_pixels=1024 * 1024)) as eng:
        yield eng


def caption_messages(a, b):
    return [{"role": "user", "content": [
        {"type": "text", "text": "===== Dialogue 1 ====="}, {"type": "image", "image": a},
        {"type": "text", "text": "User: this is my mug.\n===== Dialogue 2 ====="}, {"type": "image", "image": b},
        {"type": "text", "text": "Describe the last image."}]}]


# ----------------------------------------------------------------------------- export + parity


def test_export_writes_graphs_manifest_and_passes_parity(qwen3) -> None:
    base, adapter, _, out, result = qwen3
    m = read_manifest(out)  # every file's sha256 checked
    assert m.kind == "onnx" and m.meaningless is True
    assert {(f.path, f.kind, f.quant) for f in m.files} == {
        ("vision.onnx", "onnx-vision", "fp32"), ("embed.onnx", "onnx-embed", "fp32"),
        ("decoder.onnx", "onnx-decoder", "fp32"), ("vision-int8.onnx", "onnx-vision", "int8"),
        ("embed-int8.onnx", "onnx-embed", "int8"), ("decoder-int8.onnx", "onnx-decoder", "int8"),
        ("decoder-int4.onnx", "onnx-decoder", "int4")}
    assert m.source["adapter"] == str(adapter) and m.source["merged"] is True
    assert "<|im_start|>" in (m.chat_template or "")
    onnx = m.onnx
    assert onnx["image"]["width"] == onnx["image"]["height"] == 96
    assert onnx["image"]["grid_thw"] == [1, 6, 6] and onnx["image"]["tokens_per_image"] == 9
    assert onnx["text"]["num_layers"] == 2 and onnx["text"]["num_kv_heads"] == 2 and onnx["text"]["head_dim"] == 16
    assert onnx["text"]["deepstack_layers"] == 1 and onnx["text"]["mrope_section"] == [2, 3, 3]
    assert onnx["tokens"]["image_token_id"] == 49154 and onnx["tokens"]["eos_token_ids"]
    assert (out / onnx["tokenizer"]["path"]).is_file() and (out / "covip_tiny.json").is_file()
    assert "deepstack_embeds" in onnx["graphs"]["decoder"]["inputs"]
    assert not list(out.parent.glob(".export.tmp-*"))
    assert result["image_size"] == 96 and result["skipped"] == {}

    report = result["verify"]
    assert report["parity_ok"], report
    files = {f["quant"]: f for f in report["files"]}
    fp32 = files["fp32"]
    assert fp32["greedy_equal"] and fp32["top1_agreement"] == 1.0 and fp32["passed"]
    assert {c["case"] for c in fp32["cases"]} == {"text", "image"}
    assert all(c["prompt_match"] and c["positions"] == 12 for c in fp32["cases"])
    assert fp32["max_abs_diff"] < 1e-3
    image_case = next(c for c in fp32["cases"] if c["case"] == "image")
    assert "pixel_values max diff vs HF 0" in image_case["note"]  # numpy preprocessing == HF processor
    assert files["int8"]["top1_agreement"] >= 0.6 and 0 < files["int8"]["size_ratio"] < 0.5
    assert "embed-int8.onnx" in files["int8"]["companion"] and "vision-int8.onnx" in files["int8"]["companion"]
    assert 0 < files["int4"]["size_ratio"] < files["int8"]["size_ratio"]
    assert {c["case"] for c in files["int4"]["cases"]} == {"text", "image"}
    assert m.onnx["verification"]["parity_ok"] is True  # the summary is kept in the manifest


def test_export_fails_loudly_and_writes_nothing_when_parity_fails(tmp_path, qwen3, monkeypatch) -> None:
    import covip.export.onnx_graphs as graphs
    import covip.export.verify as verify_mod
    from covip.export.onnx import export_onnx

    base, adapter, _, done, _ = qwen3
    # the decoder of this adapter was exported by the fixture already: reuse it (saves a dynamo export)
    monkeypatch.setattr(graphs, "export_decoder",
                        lambda model, info, out, work: [Path(shutil.copyfile(done / "decoder.onnx", out))])
    real = verify_mod.hf_reference
    # compare the export of the adapter with the base model: the fp32 graphs cannot match it
    monkeypatch.setattr(verify_mod, "hf_reference", lambda d, **kw: real(base, **kw))
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="(?s)parity check failed.*greedy tokens DIFFER"):
        export_onnx(adapter, out, image_size=96, verify_tokens=6, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".export.tmp-*"))


def test_verify_export_runs_the_onnx_verifier_against_the_adapter_and_the_base(qwen3) -> None:
    from covip.export.verify import verifiers, verify_export

    base, adapter, _, out, _ = qwen3
    assert "onnx" in verifiers()
    ok = verify_export(out, adapter, kinds=["onnx"], quants=["fp32", "int8"], max_new_tokens=6, progress=False)
    assert ok.parity_ok and [f.quant for f in ok.files] == ["fp32", "int8"]
    # the base model without the LoRA answers differently: the merge took effect, and a mismatch is reported
    bad = verify_export(out, base, kinds=["onnx"], quants=["fp32"], max_new_tokens=6, progress=False)
    assert not bad.parity_ok and "greedy tokens DIFFER" in bad.summary()


def test_a_bad_image_size_is_refused(tmp_path) -> None:
    group, argv = _cli()
    res = CliRunner().invoke(group, [*argv, "tiny", "--out", str(tmp_path / "x"), "--image-size", "100"])
    assert res.exit_code != 0
    assert "multiple of patch x merge = 32" in (res.output + str(res.exception)) and "96 or 128" in (
        res.output + str(res.exception))
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- the engine


def test_engine_answers_like_the_transformers_engine(engine, hf_engine) -> None:
    assert engine.meaningless and engine.multimodal and engine.quant == "fp32" and engine.provider == "cpu"
    prompts = [[{"role": "user", "content": "Describe my mug."}],
               caption_messages(draw_photo(11), draw_photo(12)),
               [{"role": "user", "content": [{"type": "image", "image": draw_photo(5, 64)},  # resized to 96
                                             {"type": "text", "text": "Describe."}]}]]
    for messages in prompts[:2]:
        assert engine.prompt_token_ids(messages) == hf_engine.prompt_token_ids(messages)
        engine.reset()
        hf_engine.reset()
        ours, theirs = engine.generate(messages, GEN), hf_engine.generate(messages, GEN)
        assert ours.text == theirs.text and ours.completion_tokens == theirs.completion_tokens == 12
        assert ours.total_prompt_tokens == theirs.total_prompt_tokens
        assert ours.finish_reason == "length" and ours.prefill_s > 0 and ours.decode_s > 0
    # a photo of another size is stretched to 96x96: still 9 tokens
    ids = engine.prompt_token_ids(prompts[2])
    assert ids.count(engine._image_token_id) == 9
    assert engine.count_tokens("Describe my mug.") == hf_engine.count_tokens("Describe my mug.") > 0


def test_cag_answer_pass_prefills_only_the_new_tokens(engine, monkeypatch) -> None:
    a, b = draw_photo(21), draw_photo(22)
    engine.reset()
    caption = engine.generate(caption_messages(a, b), GEN)
    assert caption.cached_tokens == 0
    answer_msgs = caption_messages(a, b) + [{"role": "assistant", "content": caption.text},
                                            {"role": "user", "content": "Where did I last see the mug?"}]
    encoded = []
    real = engine._image_features
    monkeypatch.setattr(engine, "_image_features", lambda key, img: encoded.append(key) or real(key, img))
    answer = engine.generate(answer_msgs, GEN)
    assert encoded == []  # the images are in the reused prefix: not encoded again
    assert answer.cached_tokens >= caption.total_prompt_tokens
    if answer.cached_tokens == caption.total_prompt_tokens + caption.completion_tokens - 1:
        new_turn = engine.count_tokens("<|im_end|>\n<|im_start|>user\nWhere did I last see the mug?<|im_end|>\n"
                                       "<|im_start|>assistant\n")
        assert answer.prompt_tokens == new_turn + 1  # the caption's last token was never fed back
    engine.reset()
    fresh = engine.generate(answer_msgs, GEN)
    assert fresh.cached_tokens == 0 and fresh.prompt_tokens == answer.total_prompt_tokens
    assert fresh.text == answer.text

    # a different second photo: the prefix up to it is kept, that image and what follows are re-read
    other = engine.generate(caption_messages(a, draw_photo(23)), GEN)
    assert 9 < other.cached_tokens < caption.total_prompt_tokens - 9 and other.prompt_tokens > 9


def test_snapshot_restore_sampling_stops_and_streaming(engine) -> None:
    a, b = draw_photo(31), draw_photo(32)
    engine.reset()
    caption = engine.generate(caption_messages(a, b), GEN)
    state = engine.snapshot()
    assert state.n_tokens == caption.total_prompt_tokens + caption.completion_tokens - 1 and state.nbytes > 0
    engine.generate([{"role": "user", "content": "something else"}], GenerationConfig(max_new_tokens=3))
    engine.restore(state)
    follow = caption_messages(a, b) + [{"role": "assistant", "content": caption.text},
                                       {"role": "user", "content": "And then?"}]
    restored = engine.generate(follow, GEN)
    assert restored.cached_tokens >= caption.total_prompt_tokens
    engine.reset()
    assert engine.generate(follow, GEN).text == restored.text

    sample = GenerationConfig(max_new_tokens=10, temperature=0.9, top_k=40, top_p=0.9, seed=7)
    s1 = engine.generate(caption_messages(a, b), sample)
    s2 = engine.generate(caption_messages(a, b), sample)
    assert s1.text == s2.text and s1.completion_tokens == 10
    others = {engine.generate(caption_messages(a, b), GenerationConfig(
        max_new_tokens=10, temperature=1.5, seed=s)).text for s in range(4)}
    assert len(others) > 1

    engine.reset()
    stop = caption.text[4:7]
    stopped = engine.generate(caption_messages(a, b), GenerationConfig(max_new_tokens=12, stop=(stop,)))
    assert stopped.finish_reason == "stop" and stop not in stopped.text and caption.text.startswith(stopped.text)
    pieces = list(engine.stream(caption_messages(a, b), GEN))
    assert "".join(pieces) == caption.text and engine.last.completion_tokens == 12

    with pytest.raises(InputError):
        engine.generate([{"role": "robot", "content": "x"}])
    with pytest.raises(EngineError, match="another engine"):
        from covip.sdk.engines.onnx import OnnxEngine

        with OnnxEngine(engine.export_dir, verify="none") as other:
            other.restore(state)


def test_quantized_graphs_load_and_generate(qwen3) -> None:
    from covip.sdk.engines.onnx import OnnxEngine, OnnxEngineConfig

    out = qwen3[3]
    for quant, decoder, vision in (("int8", "decoder-int8.onnx", "vision-int8.onnx"),
                                   ("int4", "decoder-int4.onnx", "vision-int8.onnx")):
        with OnnxEngine(OnnxEngineConfig(export_dir=out, quant=quant, threads=1)) as eng:
            assert eng.files["decoder"] == decoder and eng.files["vision"] == vision
            assert eng.model_id.endswith(f"-onnx-{quant}")
            gen = eng.generate(caption_messages(draw_photo(1), draw_photo(2)), GenerationConfig(max_new_tokens=4))
            assert gen.completion_tokens == 4


def test_assistant_answers_a_cag_question_directly_and_via_make_engine(qwen3, engine, home, tiny_embedder) -> None:
    from covip.sdk import Memory
    from covip.sdk.assistant import Assistant, AssistantConfig
    from covip.sdk.cag import CagConfig
    from covip.sdk.context import ContextConfig
    from covip.sdk.engines import make_engine
    from covip.sdk.engines.onnx import OnnxEngine

    cag = CagConfig(caption=GenerationConfig(max_new_tokens=12), answer=GenerationConfig(max_new_tokens=8))
    made = make_engine(str(qwen3[3]))
    assert isinstance(made, OnnxEngine) and made.quant == "fp32"
    answers = []
    try:
        for n, eng in enumerate((engine, made)):  # each with a fresh memory: no caption from a cache
            memory = Memory.open(home / str(n), embedder=tiny_embedder)
            cfg = AssistantConfig(home=home / str(n), cag=cag,
                                  context=ContextConfig(k=2, similarity_floor=-1.0, image_tokens=16))
            try:
                memory.add_user("ana")
                memory.remember("ana", draw_photo(1, 64), "User: Bori at the Han river.", ["Bori"], place="Han river")
                memory.remember("ana", draw_photo(2, 64), "User: Mom at her birthday dinner.", ["Mom"])
                eng.reset()
                with Assistant(cfg, memory=memory, engine=eng) as assistant:
                    reply = assistant.ask("ana", draw_photo(1, 64), "Who is this?")
                    assert reply.cag and reply.caption and reply.answer and reply.memories
                    t = reply.tokens
                    # the caption pass's whole prompt (images included) is reused by the answer pass, and
                    # its caption too where it re-tokenizes as generated
                    caption_ran = t["caption_prompt"] + t["caption_cached"] + t["caption_completion"] - 1
                    assert t["caption_prompt"] + t["caption_cached"] <= t["answer_cached"] <= caption_ran
                    assert t["answer_prompt"] <= eng.count_tokens("Who is this?") + t["caption_completion"] + 12
                    assert assistant.meaningless
                    answers.append(reply.answer)
            finally:
                memory.close()
    finally:
        made.close()
    assert answers[0] == answers[1]


# ----------------------------------------------------------------------------- bad exports, no torch


def test_damaged_exports_give_clear_errors(tmp_path, qwen3) -> None:
    from covip.sdk.engines import make_engine
    from covip.sdk.engines.onnx import OnnxEngine, OnnxEngineConfig

    src = qwen3[3]
    trunc = tmp_path / "truncated"
    shutil.copytree(src, trunc)
    decoder = trunc / "decoder.onnx"
    with open(decoder, "r+b") as fh:
        fh.truncate(decoder.stat().st_size // 2)
    with pytest.raises(EngineError, match=r"decoder.onnx.*bytes.*truncated"):
        OnnxEngine(trunc)
    with pytest.raises(ExportError, match="truncated"):
        make_engine(str(trunc))
    with pytest.raises(EngineError, match=r"onnxruntime cannot load decoder.onnx.*truncated or corrupt"):
        OnnxEngine(OnnxEngineConfig(export_dir=trunc, verify="none"))

    # same size, other bytes: the hash names the file
    flipped = tmp_path / "flipped"
    shutil.copytree(src, flipped)
    data = bytearray((flipped / "embed.onnx").read_bytes())
    data[-100] ^= 0xFF
    (flipped / "embed.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r"embed.onnx.*sha256.*corrupted or replaced"):
        OnnxEngine(flipped)
    OnnxEngine(OnnxEngineConfig(export_dir=flipped, verify="size", quant="int8")).close()  # int8 files are fine

    # a manifest hash that does not match
    bad_hash = tmp_path / "bad-hash"
    shutil.copytree(src, bad_hash)
    manifest = json.loads((bad_hash / MANIFEST_NAME).read_text())
    next(f for f in manifest["files"] if f["path"] == "vision.onnx")["sha256"] = "0" * 64
    (bad_hash / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match=r"vision.onnx.*sha256.*corrupted or replaced"):
        OnnxEngine(OnnxEngineConfig(export_dir=bad_hash, verify="sha256"))
    with pytest.raises(ExportError, match=r"vision.onnx.*sha256"):
        make_engine(str(bad_hash), verify="sha256")
    OnnxEngine(bad_hash).close()  # by default unchanged files (size + modification time) are not hashed again

    # a tokenizer that was replaced, a quant that is not there, a directory that is not an export
    tok = tmp_path / "tok"
    shutil.copytree(src, tok)
    with open(tok / "tokenizer.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(EngineError, match="tokenizer.json.*truncated or replaced"):
        OnnxEngine(tok)
    slim = tmp_path / "slim"
    shutil.copytree(src, slim)
    m = json.loads((slim / MANIFEST_NAME).read_text())
    m["files"] = [f for f in m["files"] if f["quant"] == "fp32"]
    (slim / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(EngineError, match="no int8 decoder; available: fp32.*--int8"):
        OnnxEngine(OnnxEngineConfig(export_dir=slim, quant="int8"))
    with pytest.raises(EngineError, match="is not a covip export directory"):
        OnnxEngine(tmp_path)
    with pytest.raises(EngineError, match="does not exist"):
        OnnxEngine(tmp_path / "nope")
    with pytest.raises(InputError):
        OnnxEngineConfig(export_dir=src, provider="tpu")
    with pytest.raises(EngineError, match="onnxruntime-gpu"):
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            pytest.skip("this onnxruntime has CUDA")
        OnnxEngine(OnnxEngineConfig(export_dir=src, provider="cuda", verify="none"))


def test_the_engine_never_imports_torch_and_names_the_missing_extra(qwen3) -> None:
    blocker = textwrap.dedent("""
        import sys
        class Block:
            def __init__(self, names): self.names = names
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.names:
                    raise ImportError(f"blocked import of {name}", name=name)
                return None
    """)
    run_ok = blocker + textwrap.dedent(f"""
        sys.meta_path.insert(0, Block({{"torch", "transformers", "torchvision"}}))
        from PIL import Image
        from covip.sdk.engines.base import GenerationConfig
        from covip.sdk.engines.onnx import OnnxEngine
        with OnnxEngine({str(qwen3[3])!r}) as e:
            img = Image.new("RGB", (50, 70), "red")
            g = e.generate([{{"role": "user", "content": [{{"type": "image", "image": img}},
                                                        {{"type": "text", "text": "hi"}}]}}],
                           GenerationConfig(max_new_tokens=3))
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]
        print("OK", g.completion_tokens, bad)
    """)
    res = subprocess.run([sys.executable, "-c", run_ok], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "OK 3 []" in res.stdout
    run_missing = blocker + textwrap.dedent(f"""
        sys.meta_path.insert(0, Block({{"onnxruntime"}}))
        from covip.sdk.errors import MissingExtraError
        from covip.sdk.engines.onnx import OnnxEngine
        try:
            OnnxEngine({str(qwen3[3])!r})
        except MissingExtraError as exc:
            print("MISSING", exc)
    """)
    res = subprocess.run([sys.executable, "-c", run_missing], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "MISSING" in res.stdout and "pip install 'covip[onnx]'" in res.stdout


def test_preprocessing_and_positions_equal_transformers(qwen3) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from covip.export.verify_onnx import check_preprocessing
    from covip.sdk.engines._hf_util import _image_spans
    from covip.sdk.engines._onnx_util import ImageSpec, preprocess_image, rope_positions

    base, _, _, out, _ = qwen3
    spec = ImageSpec.from_dict(read_manifest(out, verify="none").onnx["image"])
    assert check_preprocessing(base, spec, draw_photo(3)) == 0.0
    # another size: resized by the engine first, then both see the same pixels
    resized = draw_photo(4, 64).resize((96, 96))
    assert check_preprocessing(base, spec, resized) == 0.0
    assert np.array_equal(preprocess_image(draw_photo(4, 64), spec), preprocess_image(resized, spec))

    processor = AutoProcessor.from_pretrained(str(base))
    processor.image_processor.size = {"shortest_edge": 96 * 96, "longest_edge": 96 * 96}
    model = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32)
    parts = [{"type": "text", "text": "one"}, {"type": "image"}, {"type": "text", "text": "two"}, {"type": "image"},
             {"type": "text", "text": "Describe the last image."}]
    text = processor.apply_chat_template([{"role": "user", "content": parts}], tokenize=False,
                                         add_generation_prompt=True)
    inputs = processor(text=[text], images=[draw_photo(1), draw_photo(2)], return_tensors="pt")
    theirs, delta = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                               image_grid_thw=inputs["image_grid_thw"])
    ids = inputs["input_ids"][0].tolist()
    ours, our_delta = rope_positions(ids, _image_spans(ids, model.config.image_token_id), spec.grid, spec.merge_size)
    assert np.array_equal(ours, theirs[:, 0].numpy()) and our_delta == int(delta.reshape(-1)[0])
    assert our_delta < 0  # the 3x3 images advance positions by 3 for 9 tokens


# ----------------------------------------------------------------------------- Qwen2.5-VL


@pytest.mark.slow
def test_qwen25_export_parity_and_engine(tmp_path) -> None:
    from covip.export.onnx import export_onnx
    from covip.sdk.engines.onnx import OnnxEngine
    from covip.sdk.engines.transformers import TransformersEngine, TransformersEngineConfig
    from covip.sdk.models import build_tiny_vlm

    result = export_onnx("tiny-qwen2.5-vl", tmp_path / "export", int8=True, progress=False)
    # default image size: the largest square <= 448 px the tiny processor keeps (max_pixels 12544 -> 112)
    assert result.manifest.onnx["image"]["width"] == 112 and result.manifest.onnx["text"]["deepstack_layers"] == 0
    report = result.verify
    assert report.parity_ok, report.summary()
    fp32 = next(f for f in report.files if f.quant == "fp32")
    assert fp32.greedy_equal and fp32.max_abs_diff < 1e-3
    assert next(f for f in report.files if f.quant == "int8").top1_agreement >= 0.6
    messages = caption_messages(draw_photo(1, 112), draw_photo(2, 112))
    with OnnxEngine(result.out_dir) as eng, TransformersEngine(TransformersEngineConfig(
            model=str(build_tiny_vlm("qwen2.5-vl")), device="cpu", dtype="float32")) as hf:
        assert eng.generate(messages, GEN).text == hf.generate(messages, GEN).text
