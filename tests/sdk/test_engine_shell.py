"""One behaviour suite for every engine (transformers, llama.cpp GGUF + mmproj, ONNX Runtime) on the same tiny
Qwen3-VL: stop strings, seeded sampling, KV reuse, snapshot/restore, the close protocol, concurrent calls.

Each engine has its own tests for what only it does; these pin what an app may rely on whichever engine it
opens (the Engine protocol in covip.sdk.engines.base).
"""

from __future__ import annotations

import threading
import time

import pytest

from covip.sdk.engines.base import GenerationConfig
from covip.sdk.errors import EngineError
from tests.conftest import draw_photo

GREEDY = GenerationConfig(max_new_tokens=12, temperature=0.0)
SAMPLED = GenerationConfig(max_new_tokens=12, temperature=0.9, top_p=0.9, top_k=40, seed=7)


def _chat(question: str = "Who is in this photo?", seed: int = 1) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": draw_photo(seed, 96)},
                                         {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, tiny_vlm_dir):
    from covip.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("shell-onnx") / "export"
    export_onnx(str(tiny_vlm_dir), out, image_size=96, verify=False, progress=False)
    return out


def _open(kind: str, request):
    if kind == "transformers":
        from covip.sdk.engines.transformers import TransformersEngine, TransformersEngineConfig

        return TransformersEngine(TransformersEngineConfig(model=str(request.getfixturevalue("tiny_vlm_dir"))))
    if kind == "llamacpp":
        from covip.sdk.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig

        model, mmproj = request.getfixturevalue("tiny_gguf")
        return LlamaCppEngine(LlamaCppEngineConfig(model_path=model, mmproj_path=mmproj, n_ctx=2048))
    from covip.sdk.engines.onnx import OnnxEngine, OnnxEngineConfig

    return OnnxEngine(OnnxEngineConfig(export_dir=request.getfixturevalue("onnx_export"), provider="cpu"))


KINDS = ["transformers", "llamacpp", "onnx"]


@pytest.fixture(scope="module", params=KINDS)
def engine(request):
    eng = _open(request.param, request)
    yield eng
    eng.close()


@pytest.fixture(params=KINDS)
def fresh(request):
    """A new engine per test (the test closes it)."""
    eng = _open(request.param, request)
    yield eng
    eng.close()


def test_stop_strings_end_the_answer_before_them(engine) -> None:
    full = engine.generate(_chat(), GREEDY)
    words = full.text.split()
    if len(words) < 3:
        pytest.skip("the random model said too little to cut")
    stop = words[2]
    cut = engine.generate(_chat(), GenerationConfig(max_new_tokens=12, temperature=0.0, stop=[stop]))
    assert stop not in cut.text and full.text.startswith(cut.text.rstrip()) and cut.finish_reason == "stop"


def test_the_text_is_the_same_streamed_or_not(engine) -> None:
    """generate() without on_token detokenizes once at the end (no stop strings): the same text and counts as
    the pieces of on_token and stream()."""
    for cfg in (GREEDY, SAMPLED, GenerationConfig(max_new_tokens=12, temperature=0.0, stop=["\x00never"])):
        plain = engine.generate(_chat(), cfg)
        pieces: list[str] = []
        called = engine.generate(_chat(), cfg, on_token=pieces.append)
        streamed = "".join(engine.stream(_chat(), cfg))
        assert plain.text == called.text == "".join(pieces) == streamed == engine.last.text
        assert plain.completion_tokens == called.completion_tokens == engine.last.completion_tokens
        assert plain.finish_reason == called.finish_reason == engine.last.finish_reason


@pytest.mark.parametrize("kind", ["transformers", "onnx"])  # the engines on covip's token loop (llama.cpp: its own)
def test_a_failing_step_leaves_the_text_so_far(kind, request, monkeypatch) -> None:
    fresh = _open(kind, request)
    request.addfinalizer(fresh.close)
    steps = []
    real = fresh._step

    def failing(token):
        steps.append(token)
        if len(steps) == 4:
            raise RuntimeError("the device went away")
        return real(token)

    texts = []
    for on_token in (None, lambda piece: None):
        steps.clear()
        fresh.reset()
        monkeypatch.setattr(fresh, "_step", failing)
        with pytest.raises(RuntimeError, match="went away"):
            fresh.generate(_chat(), GREEDY, on_token=on_token)
        monkeypatch.undo()
        assert fresh.last.completion_tokens == 4 and fresh.last.finish_reason == "cancelled"
        texts.append(fresh.last.text)
    fresh.reset()
    full = fresh.generate(_chat(), GREEDY).text
    assert texts[0] == texts[1] and full.startswith(texts[0].rstrip("\ufffd"))


def test_seeded_sampling_repeats_and_greedy_is_deterministic(engine) -> None:
    a, b = engine.generate(_chat(), SAMPLED), engine.generate(_chat(), SAMPLED)
    assert a.text == b.text and a.completion_tokens == b.completion_tokens
    g1, g2 = engine.generate(_chat(), GREEDY), engine.generate(_chat(), GREEDY)
    assert g1.text == g2.text


def test_a_follow_up_reuses_the_kv_cache(engine) -> None:
    engine.reset()
    first = engine.generate(_chat(), GREEDY)
    follow = [*_chat(), {"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    second = engine.generate(follow, GREEDY)
    assert first.cached_tokens == 0
    # the whole first call (prompt and its answer but the last sampled token) is reused, images included
    assert second.cached_tokens >= first.total_prompt_tokens
    assert second.prompt_tokens < second.total_prompt_tokens - first.total_prompt_tokens + first.completion_tokens + 8


def test_snapshot_restore_brings_the_state_back(engine) -> None:
    engine.reset()
    base = engine.generate(_chat(seed=2), GREEDY)
    state = engine.snapshot()
    engine.generate(_chat("Something else entirely?", seed=3), GREEDY)  # the cache now holds another photo
    engine.restore(state)
    follow = [*_chat(seed=2), {"role": "assistant", "content": base.text}, {"role": "user", "content": "Where?"}]
    again = engine.generate(follow, GREEDY)
    assert again.cached_tokens >= base.total_prompt_tokens
    engine.reset()
    cold = engine.generate(follow, GREEDY)
    assert cold.cached_tokens == 0 and cold.text == again.text


def test_close_from_a_callback_stops_the_call_and_never_hangs(fresh) -> None:
    done = threading.Event()
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fresh.generate(_chat(), GenerationConfig(max_new_tokens=40, temperature=0.0),
                           on_token=lambda piece: fresh.close())
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(120), "close() from on_token hung"
    assert isinstance(outcome[0], EngineError) and "closed" in str(outcome[0])
    with pytest.raises(EngineError, match="closed"):
        fresh.generate(_chat(), GREEDY)
    fresh.close()  # idempotent


def test_close_from_another_thread_waits_for_the_running_call(fresh) -> None:
    started = threading.Event()
    result: list = []

    def run() -> None:
        try:
            result.append(fresh.generate(_chat(), GenerationConfig(max_new_tokens=24, temperature=0.0),
                                         on_token=lambda piece: (started.set(), time.sleep(0.01))))
        except BaseException as exc:  # noqa: BLE001
            result.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(120)
    fresh.close()  # blocks until the call has finished, then frees the model
    worker.join(120)
    assert not worker.is_alive() and len(result) == 1
    assert not isinstance(result[0], BaseException), result[0]  # the running call completed normally
    with pytest.raises(EngineError, match="closed"):
        fresh.generate(_chat(), GREEDY)


def test_concurrent_calls_are_serialized_and_each_gets_its_answer(engine) -> None:
    expected = {q: engine.generate(_chat(q), GREEDY).text for q in ("One?", "Two?", "Three?")}
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def ask(q: str) -> None:
        try:
            got[q] = engine.generate(_chat(q), GREEDY).text
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(q,)) for q in expected for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and got == expected


def test_a_stream_holds_the_engine_and_the_same_thread_is_told(engine) -> None:
    stream = engine.stream(_chat(), GREEDY)
    next(stream)
    with pytest.raises(EngineError, match="stream"):
        engine.generate(_chat(), GREEDY)
    stream.close()
    assert engine.generate(_chat(), GREEDY).completion_tokens > 0
