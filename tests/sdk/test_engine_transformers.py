"""TransformersEngine on the tiny Qwen3-VL / Qwen2.5-VL (real architectures, random weights) on CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from covip.sdk.engines import Engine, GenerationConfig, TransformersEngine, TransformersEngineConfig  # noqa: E402
from covip.sdk.errors import CovipError, EngineError, InputError  # noqa: E402
from covip.sdk.models import TINY_MARKER, TINY_MODELS, build_tiny_vlm  # noqa: E402
from tests.conftest import draw_photo  # noqa: E402

GREEDY = GenerationConfig(max_new_tokens=12)
TOKENS_PER_96PX_IMAGE = 9  # 96x96 -> 6x6 patches of 16 px -> 3x3 after the 2x2 merge


@pytest.fixture(scope="module")
def engine(tiny_vlm_dir):
    with TransformersEngine(TransformersEngineConfig(model=str(tiny_vlm_dir), device="cpu")) as eng:
        yield eng


@pytest.fixture(scope="module")
def fresh(tiny_vlm_dir):
    """A second engine whose cache is reset before each use: the no-reuse reference."""
    with TransformersEngine(model=str(tiny_vlm_dir), device="cpu") as eng:
        yield eng


def answer_fresh(eng: TransformersEngine, messages, config=GREEDY):
    eng.reset()
    gen = eng.generate(messages, config)
    eng.reset()
    return gen


def user(*parts):
    content = []
    for p in parts:
        content.append({"type": "text", "text": p} if isinstance(p, str) else {"type": "image", "image": p})
    return {"role": "user", "content": content}


def caption_messages(n_images: int = 2):
    parts = []
    for i in range(n_images):
        parts += [f"===== Dialogue {i + 1} =====", draw_photo(i), f"User: this is my thing number {i}."]
    return [user(*parts, "Describe the last photo in my context.")]


# ----------------------------------------------------------------------------- basics


def test_tiny_dir_and_identity(engine, tiny_vlm_dir) -> None:
    marker = json.loads((tiny_vlm_dir / TINY_MARKER).read_text())
    assert marker["random_weights"] is True and marker["name"] == "tiny-qwen3-vl"
    assert build_tiny_vlm("tiny") == tiny_vlm_dir  # built once, reused
    assert "tiny-qwen3-vl" in TINY_MODELS
    assert isinstance(engine, Engine)
    assert engine.meaningless is True and "tiny" in engine.model_id
    assert engine.device == "cpu" and str(engine.dtype) == "torch.float32"


@pytest.mark.parametrize("n_images", [1, 2, 3])
def test_generates_with_images_and_text(engine, n_images) -> None:
    messages = caption_messages(n_images)
    gen = engine.generate(messages, GREEDY)
    assert isinstance(gen.text, str) and gen.text
    assert 1 <= gen.completion_tokens <= GREEDY.max_new_tokens
    ids = engine.prompt_token_ids(messages)
    assert gen.prompt_tokens + gen.cached_tokens == len(ids)
    assert ids.count(engine.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == n_images * TOKENS_PER_96PX_IMAGE
    assert gen.prefill_s > 0 and gen.decode_s >= 0
    assert engine._fast_images is True  # per-image preprocessing cache matched the processor's own output


def test_text_only_and_paths(engine, photo_factory) -> None:
    gen = engine.generate([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
                          GREEDY)
    assert gen.completion_tokens >= 1
    by_path = answer_fresh(engine, [user(photo_factory(3), "What is this?")])
    by_pil = answer_fresh(engine, [user(draw_photo(3), "What is this?")])
    assert by_path.text == by_pil.text  # same pixels, same answer whatever the image was given as


def test_greedy_is_deterministic(engine, fresh) -> None:
    messages = caption_messages(2)
    a = answer_fresh(engine, messages)
    b = answer_fresh(engine, messages)
    c = answer_fresh(fresh, messages)
    assert a.text == b.text == c.text


def test_sampling_with_seed_is_reproducible(engine) -> None:
    messages = caption_messages(1)
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    a = answer_fresh(engine, messages, cfg)
    b = answer_fresh(engine, messages, cfg)
    other = answer_fresh(engine, messages, GenerationConfig(max_new_tokens=16, temperature=1.0, seed=8))
    greedy = answer_fresh(engine, messages, GenerationConfig(max_new_tokens=16))
    assert a.text == b.text
    assert other.text != a.text and a.text != greedy.text
    top1 = answer_fresh(engine, messages, GenerationConfig(max_new_tokens=16, temperature=1.0, top_k=1, seed=3))
    assert top1.text == greedy.text  # top_k=1 sampling is greedy


def test_max_new_tokens_and_stop_strings(engine) -> None:
    messages = caption_messages(1)
    full = answer_fresh(engine, messages, GenerationConfig(max_new_tokens=20))
    assert full.finish_reason == "length" and full.completion_tokens == 20
    words = full.text.split()
    stop = words[len(words) // 2]
    expected = full.text[: full.text.find(stop)]
    pieces: list[str] = []
    engine.reset()
    gen = engine.generate(messages, GenerationConfig(max_new_tokens=20, stop=("\x00never", stop)),
                          on_token=pieces.append)
    assert gen.finish_reason == "stop"
    assert gen.text == expected and stop not in gen.text
    assert "".join(pieces) == gen.text
    assert gen.completion_tokens < 20


def test_stream_pieces_join_to_the_text(engine) -> None:
    messages = caption_messages(2)
    engine.reset()
    import torch

    pieces = []
    for piece in engine.stream(messages, GenerationConfig(max_new_tokens=15)):
        assert not torch.is_inference_mode_enabled()  # the consumer's code runs in its own torch mode
        pieces.append(piece)
    assert len(pieces) > 1
    assert "".join(pieces) == engine.last.text
    assert engine.last.completion_tokens == 15 and engine.last.finish_reason == "length"
    assert engine.last.text == answer_fresh(engine, messages, GenerationConfig(max_new_tokens=15)).text


def test_a_failing_callback_or_an_abandoned_stream_releases_the_engine(engine) -> None:
    messages = caption_messages(1)

    def boom(piece: str) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        engine.generate(messages, GREEDY, on_token=boom)
    stream = engine.stream(messages, GenerationConfig(max_new_tokens=30))
    first = next(stream)
    with pytest.raises(EngineError, match="stream"):
        engine.generate(messages, GREEDY)  # same thread, stream still open
    stream.close()
    assert engine.last.finish_reason == "cancelled" and engine.last.text.startswith(first)
    assert engine.generate(messages, GREEDY).completion_tokens == GREEDY.max_new_tokens


def test_count_tokens(engine) -> None:
    tok = engine.tokenizer
    text = "Where did I last see my blue mug? <|im_end|>"
    assert engine.count_tokens(text) == len(tok.encode(text, add_special_tokens=False))
    assert engine.count_tokens("") == 0
    assert engine.count_tokens("<|image_pad|>") == 1
    with pytest.raises(InputError):
        engine.count_tokens(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- prefix KV reuse


def test_cag_answer_pass_reuses_the_caption_pass(engine, fresh, monkeypatch) -> None:
    engine.reset()
    call1 = caption_messages(2)
    cap = engine.generate(call1, GREEDY)
    assert cap.cached_tokens == 0 and cap.prompt_tokens == len(engine.prompt_token_ids(call1))
    held = engine.cached_token_ids  # prompt + every generated token but the last (never run through the model)
    assert len(held) == cap.total_prompt_tokens + cap.completion_tokens - 1

    call2 = call1 + [{"role": "assistant", "content": cap.text},
                     {"role": "user", "content": "Where did I last see the one in the new image?"}]
    ids2 = engine.prompt_token_ids(call2)
    common = 0
    while common < len(held) and held[common] == ids2[common]:
        common += 1

    encoded = []
    real = engine.model.model.get_image_features
    monkeypatch.setattr(engine.model.model, "get_image_features",
                        lambda pv, *a, **k: encoded.append(pv.shape) or real(pv, *a, **k))
    ans = engine.generate(call2, GREEDY)
    assert encoded == []  # the photos were not encoded again
    assert ans.cached_tokens == common >= cap.total_prompt_tokens  # the whole caption prompt at least
    assert ans.prompt_tokens == len(ids2) - common  # only the new tokens were prefilled
    if ids2[: len(held)] == held:  # the caption tokenizes back to the ids it was generated as
        assert ans.cached_tokens == cap.total_prompt_tokens + cap.completion_tokens - 1
    reference = answer_fresh(fresh, call2)
    assert reference.cached_tokens == 0 and reference.prompt_tokens == len(ids2)
    assert ans.text == reference.text  # reuse changes nothing but the work done


def test_exact_prefix_accounting(engine, fresh) -> None:
    """Call 2 continues call 1 with a fixed assistant turn: cached = call 1's tokens, prefilled = the rest."""
    engine.reset()
    call1 = caption_messages(1)
    first = engine.generate(call1, GenerationConfig(max_new_tokens=1))
    assert first.completion_tokens == 1
    call2 = call1 + [{"role": "assistant", "content": "A blue mug on a desk."},
                     {"role": "user", "content": "What colour is it?"}]
    ids1, ids2 = engine.prompt_token_ids(call1), engine.prompt_token_ids(call2)
    assert ids2[: len(ids1)] == ids1
    second = engine.generate(call2, GREEDY)
    assert second.cached_tokens == first.total_prompt_tokens + first.completion_tokens - 1 == len(ids1)
    assert second.prompt_tokens == len(ids2) - len(ids1)
    assert second.text == answer_fresh(fresh, call2).text
    third = engine.generate(call2, GREEDY)  # the same prompt again: all but its last token reused
    assert third.cached_tokens == len(ids2) - 1 and third.prompt_tokens == 1
    assert third.text == second.text


def test_new_image_after_the_cached_prefix(engine, fresh) -> None:
    engine.reset()
    a = [user(draw_photo(0), "Dialogue one")]
    b = [user(draw_photo(0), "Dialogue one", draw_photo(1), "And now?")]
    engine.generate(a, GREEDY)
    gen = engine.generate(b, GREEDY)
    assert 0 < gen.cached_tokens < len(engine.prompt_token_ids(b))
    assert gen.text == answer_fresh(fresh, b).text


def test_a_different_photo_is_not_reused(engine, fresh) -> None:
    engine.reset()
    first = [user(draw_photo(0), "What is this?")]
    other = [user(draw_photo(5), "What is this?")]  # same size: identical token ids, different pixels
    assert engine.prompt_token_ids(first) == engine.prompt_token_ids(other)
    engine.generate(first, GREEDY)
    gen = engine.generate(other, GREEDY)
    start = engine.prompt_token_ids(other).index(engine.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert gen.cached_tokens == start  # up to <|vision_start|>, never into the image
    assert gen.text == answer_fresh(fresh, other).text


def test_unrelated_prompt_resets(engine) -> None:
    engine.generate(caption_messages(1), GREEDY)
    gen = engine.generate([{"role": "system", "content": "x"}, {"role": "user", "content": "Hi"}], GREEDY)
    assert gen.cached_tokens == 1  # only <|im_start|> is shared


# ----------------------------------------------------------------------------- KV snapshots


def test_snapshot_restore_continues_like_a_fresh_engine(engine, fresh, monkeypatch) -> None:
    engine.reset()
    call1 = caption_messages(2)
    cap = engine.generate(call1, GREEDY)
    held = engine.cached_token_ids
    state = engine.snapshot()
    assert state.model_id == engine.model_id and state.n_tokens == len(held) and state.nbytes > 0
    engine.generate([user(draw_photo(7), "Something else entirely.")], GREEDY)  # the KV holds another chat
    assert engine.cached_token_ids != held
    engine.restore(state)
    assert engine.cached_token_ids == held

    call2 = call1 + [{"role": "assistant", "content": cap.text}, {"role": "user", "content": "Where was it?"}]
    ids2 = engine.prompt_token_ids(call2)
    common = 0
    while common < len(held) and held[common] == ids2[common]:
        common += 1
    encoded = []
    real = engine.model.model.get_image_features
    monkeypatch.setattr(engine.model.model, "get_image_features",
                        lambda pv, *a, **k: encoded.append(pv.shape) or real(pv, *a, **k))
    ans = engine.generate(call2, GREEDY)
    assert encoded == []  # the restored photos were not encoded again
    assert ans.cached_tokens == common >= cap.total_prompt_tokens
    assert ans.prompt_tokens == len(ids2) - common
    assert ans.text == answer_fresh(fresh, call2).text
    # the state is untouched by what ran after restore(): it restores again, to the same result
    engine.restore(state)
    again = engine.generate(call2, GREEDY)
    assert (again.text, again.cached_tokens) == (ans.text, ans.cached_tokens)


def test_empty_and_foreign_states(engine, fresh) -> None:
    engine.reset()
    empty = engine.snapshot()
    assert empty.n_tokens == 0
    engine.generate(caption_messages(1), GREEDY)
    engine.restore(empty)
    assert engine.cached_token_ids == []
    assert engine.generate(caption_messages(1), GREEDY).cached_tokens == 0
    state = engine.snapshot()
    with pytest.raises(EngineError, match="another engine"):
        fresh.restore(state)  # same model, another instance
    with pytest.raises(EngineError, match="EngineState"):
        engine.restore("not a state")  # type: ignore[arg-type]
    stream = engine.stream(caption_messages(1), GREEDY)
    next(stream)
    with pytest.raises(EngineError, match="stream"):
        engine.snapshot()
    with pytest.raises(EngineError, match="stream"):
        engine.restore(state)
    stream.close()


# ----------------------------------------------------------------------------- static cache, torch.compile


def _same_as_eager(eng: TransformersEngine, eager: TransformersEngine) -> None:
    """Greedy answers, prefix reuse and snapshot/restore of ``eng`` are those of the eager engine."""
    first = [user(draw_photo(1), "Who is in this photo?")]
    text = [user("Tell me a long story about a dog on the beach.")]
    for e in (eng, eager):
        e.reset()
    for messages in (first, text):
        a, b = eng.generate(messages, GREEDY), eager.generate(messages, GREEDY)
        assert (a.text, a.completion_tokens) == (b.text, b.completion_tokens)
        follow = messages + [{"role": "assistant", "content": a.text}, user("And then?")]
        state = eng.snapshot()
        a2, b2 = eng.generate(follow, GREEDY), eager.generate(follow, GREEDY)
        assert (a2.text, a2.cached_tokens) == (b2.text, b2.cached_tokens) and a2.cached_tokens > 0
        eng.restore(state)  # the state before the follow-up: the same follow-up again, from the same cache
        a3 = eng.generate(follow, GREEDY)
        assert (a3.text, a3.cached_tokens) == (a2.text, a2.cached_tokens)


def test_static_cache_answers_like_the_dynamic_cache(engine, tiny_vlm_dir) -> None:
    with TransformersEngine(model=str(tiny_vlm_dir), device="cpu", cache_implementation="static",
                            max_cache_len=32) as eng:
        _same_as_eager(eng, engine)
        assert type(eng._cache).__name__ == "StaticCache"
        assert eng._cache is eng._static_cache and eng._cache.layers[0].max_cache_len >= 64  # grown past 32
        long = eng.generate([user("Count to a hundred.")], GenerationConfig(max_new_tokens=80))
        assert long.text == answer_fresh(engine, [user("Count to a hundred.")], GenerationConfig(max_new_tokens=80)).text


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="torch.compile (inductor) needs a C++ compiler on CPU")
def test_compiled_decode_answers_like_eager(engine, tiny_vlm_dir) -> None:
    """compile=True (a static cache, the decode step compiled as transformers' generate compiles it) on CPU: the
    same greedy answers as the eager engine."""
    with TransformersEngine(model=str(tiny_vlm_dir), device="cpu", compile=True, max_cache_len=256) as eng:
        assert eng.config.static_cache and eng._decode_call is not eng.model
        _same_as_eager(eng, engine)
        sampled = GenerationConfig(max_new_tokens=8, temperature=0.8, top_k=20, seed=3)
        assert answer_fresh(eng, caption_messages(1), sampled).text == answer_fresh(engine, caption_messages(1),
                                                                                    sampled).text


def test_static_and_attention_options(tiny_vlm_dir) -> None:
    from covip.sdk.engines.transformers import _pick_attention

    torch = pytest.importorskip("torch")
    assert _pick_attention(torch, "auto", "cpu", torch.float32) == "sdpa"
    assert _pick_attention(torch, "auto", "cuda", torch.float32) == "sdpa"  # flash attention needs 16-bit
    assert _pick_attention(torch, "eager", "cpu", torch.float32) == "eager"
    with TransformersEngine(model=str(tiny_vlm_dir), device="cpu", attn_implementation="auto") as eng:
        assert eng.model.config._attn_implementation == "sdpa" and not eng.config.static_cache
    cfg = TransformersEngineConfig(compile=True)
    assert cfg.static_cache and cfg.cache_implementation is None and not TransformersEngineConfig().static_cache
    assert "static" in TransformersEngineConfig.field_help()["cache_implementation"]


# ----------------------------------------------------------------------------- other models, errors


def test_tiny_qwen25_vl_generates_and_reuses() -> None:
    with TransformersEngine(model="tiny-qwen2.5-vl", device="cpu") as eng:
        assert eng.meaningless and "qwen2.5-vl" in eng.model_id
        assert type(eng.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
        messages = [user(draw_photo(1), "Describe this photo.")]
        gen = eng.generate(messages, GREEDY)
        assert gen.text and gen.completion_tokens == GREEDY.max_new_tokens
        follow = messages + [{"role": "assistant", "content": gen.text}, {"role": "user", "content": "Why?"}]
        again = eng.generate(follow, GREEDY)
        assert again.cached_tokens >= gen.total_prompt_tokens
        assert again.text == answer_fresh(eng, follow).text
        assert eng._fast_images is True


@pytest.mark.parametrize("model", ["/nonexistent/covip-model", "./no-such-dir", "not a model id"])
def test_missing_model_dir_is_a_clear_error(model) -> None:
    with pytest.raises(EngineError, match="does not exist") as info:
        TransformersEngine(model=model, device="cpu")
    assert isinstance(info.value, CovipError)


def test_dir_without_config(tmp_path) -> None:
    with pytest.raises(EngineError, match="config.json"):
        TransformersEngine(model=str(tmp_path), device="cpu")


def test_config_validation() -> None:
    for bad in ({"device": "tpu"}, {"dtype": "int8"}, {"max_pixels": 0}, {"model": ""},
                {"min_pixels": 4096, "max_pixels": 1024}, {"cache_implementation": "paged"}, {"compile": "yes"},
                {"max_cache_len": 0}, {"max_cache_len": True}, {"attn_implementation": ""},
                {"compile": True, "cache_implementation": "dynamic"}):
        with pytest.raises(InputError):
            TransformersEngineConfig(**bad)
    with pytest.raises(InputError):
        TransformersEngineConfig().with_overrides(nope=1)
    assert "tiny" in TransformersEngineConfig.field_help()["model"]
    with pytest.raises(InputError):
        GenerationConfig(max_new_tokens=0)


def test_bad_messages_and_pixel_override(tiny_vlm_dir) -> None:
    with TransformersEngine(model=str(tiny_vlm_dir), device="cpu", max_pixels=64 * 64) as eng:
        ids = eng.prompt_token_ids([user(draw_photo(0, size=256), "x")])
        assert ids.count(eng.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == 4  # 64x64 -> 2x2 tokens
        with pytest.raises(InputError):
            eng.generate([{"role": "robot", "content": "x"}])
        with pytest.raises(InputError):
            eng.generate([user(b"not an image")])
    with pytest.raises(EngineError, match="closed"):
        eng.generate([user("x")])


def test_engines_import_without_torch() -> None:
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {'torch', 'torchvision', 'open_clip', 'transformers'}:
                    raise ImportError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        import covip.sdk.engines, covip.sdk.models
        from covip.sdk.errors import MissingExtraError
        try:
            covip.sdk.engines.TransformersEngine()
        except MissingExtraError as exc:
            print("OK", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "covip[torch]" in out.stdout


@pytest.mark.slow
def test_tiny_build_is_deterministic(tmp_path, tiny_vlm_dir) -> None:
    import hashlib

    again = build_tiny_vlm("qwen3-vl", out_dir=tmp_path / "again")
    digest = [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() for d in (tiny_vlm_dir, again)]
    assert digest[0] == digest[1]
