"""Caption-Augmented Generation on the tiny Qwen3-VL: caption cache, invalidation, KV reuse, provenance."""

from __future__ import annotations

from dataclasses import replace

import pytest

from covip.sdk import Memory
from covip.sdk.assistant import Assistant, AssistantConfig
from covip.sdk.cag import CagConfig, CaptionAugmentedGenerator, KvSnapshots
from covip.sdk.context import ContextConfig
from covip.sdk.engines.base import EngineState, GenerationConfig
from covip.sdk.errors import EngineError, InputError
from tests.conftest import draw_photo


class CountingEngine:
    """Wraps the real engine to count calls (the test is about CAG's own caching logic around it)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.calls: list[list[dict]] = []
        self.model_id, self.meaningless = engine.model_id, engine.meaningless

    def generate(self, messages, config=None, *, on_token=None):
        self.calls.append(messages)
        return self.engine.generate(messages, config, on_token=on_token)

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def snapshot(self):
        return self.engine.snapshot()

    def restore(self, state) -> None:
        self.calls.append("restore")
        self.engine.restore(state)


@pytest.fixture(scope="module")
def tiny_engine(tiny_vlm_dir):
    from covip.sdk.engines.transformers import TransformersEngine, TransformersEngineConfig

    engine = TransformersEngine(TransformersEngineConfig(model=str(tiny_vlm_dir)))
    yield engine
    engine.close()


GREEDY = CagConfig(caption=GenerationConfig(max_new_tokens=12), answer=GenerationConfig(max_new_tokens=8))


@pytest.fixture
def bot(home, tiny_embedder, tiny_engine, photo_factory):
    memory = Memory.open(home, embedder=tiny_embedder)
    engine = CountingEngine(tiny_engine)
    cfg = AssistantConfig(home=home, context=ContextConfig(k=2, similarity_floor=-1.0, image_tokens=16), cag=GREEDY)
    with Assistant(cfg, memory=memory, engine=engine) as assistant:
        memory.add_user("ana")
        memory.remember("ana", draw_photo(1, 64), "User: Bori at the Han river.", ["Bori"], place="Han river")
        memory.remember("ana", draw_photo(2, 64), "User: Mom at her birthday dinner.", ["Mom"])
        yield assistant, engine
    memory.close()


def test_second_ask_is_a_cache_hit_without_a_caption_call(bot) -> None:
    assistant, engine = bot
    photo = draw_photo(1, 64)
    first = assistant.ask("ana", photo, "Who is this?")
    assert not first.caption_cached and first.caption and first.memories
    assert first.caption == first.caption.strip()  # shown stripped
    assert len(engine.calls) == 2  # caption pass + answer pass
    second = assistant.ask("ana", photo, "Who is this?")
    assert second.caption_cached and second.caption == first.caption
    assert len(engine.calls) == 4  # only the answer pass ran, after restoring the caption pass's KV snapshot
    assert engine.calls[2] == "restore" and second.answer == first.answer
    assert second.memories[0].photo.id == first.memories[0].photo.id
    assert "caption_s" in second.timings and second.tokens["answer_prompt"] > 0


def test_forgetting_a_used_memory_invalidates_the_caption(bot) -> None:
    assistant, engine = bot
    photo = draw_photo(1, 64)
    first = assistant.caption("ana", photo)
    assert not first.cached and assistant.caption("ana", photo).cached
    used = first.memories[-1].photo
    assistant.memory.forget_photo("ana", used.id)
    again = assistant.caption("ana", photo)
    assert not again.cached
    assert used.id not in again.context.photo_ids


def test_editing_a_used_memory_invalidates_the_caption(bot) -> None:
    assistant, _ = bot
    photo = draw_photo(1, 64)
    first = assistant.caption("ana", photo)
    assistant.memory.rename_concept("ana", first.memories[0].concepts[0], "Renamed")
    assert not assistant.caption("ana", photo).cached


def test_answer_pass_prefills_only_the_new_tokens(home, tiny_embedder, tiny_engine) -> None:
    memory = Memory.open(home, embedder=tiny_embedder)
    memory.add_user("ana")
    memory.remember("ana", draw_photo(3, 64), "User: my blue bike.", ["bike"])
    cfg = AssistantConfig(home=home, context=ContextConfig(k=1, similarity_floor=-1.0), cag=GREEDY)
    with Assistant(cfg, memory=memory, engine=tiny_engine) as assistant:
        reply = assistant.ask("ana", draw_photo(3, 64), "What is this?")
        t = reply.tokens
        # everything the caption pass ran through the model is reused (images included): the prompt and
        # every generated token but the last sampled one, which was never fed back
        assert t["answer_cached"] == t["caption_prompt"] + t["caption_cached"] + t["caption_completion"] - 1
        # only that last token, the end of the caption turn and the question are prefilled
        question_tokens = tiny_engine.count_tokens("What is this?")
        assert question_tokens < t["answer_prompt"] <= question_tokens + 12
        direct = assistant.ask("ana", draw_photo(3, 64), "What is this?", cag=False)
        assert direct.caption is None and not direct.cag
    memory.close()


def test_paper_layout_puts_the_instruction_in_a_system_turn_and_reads_the_images_again(
        home, tiny_embedder, tiny_engine) -> None:
    from covip.sdk import prompts

    memory = Memory.open(home, embedder=tiny_embedder)
    memory.add_user("ana")
    memory.remember("ana", draw_photo(3, 64), "User: my blue bike.", ["bike"])
    engine = CountingEngine(tiny_engine)
    ctx = ContextConfig(k=1, similarity_floor=-1.0)
    cag = CaptionAugmentedGenerator(memory, engine, context=ctx, config=replace(GREEDY, layout="paper"))
    cold = cag.ask("ana", draw_photo(3, 64), "What is this?")
    caption_pass, answer_pass = engine.calls
    assert [m["role"] for m in answer_pass] == ["system", "user", "assistant", "user"]
    assert answer_pass[0]["content"] == prompts.CAPTION_INSTRUCTION
    assert not any(p.get("text") == prompts.CAPTION_INSTRUCTION for p in answer_pass[1]["content"])
    assert answer_pass[2]["content"].strip() == cold.caption and caption_pass[-1]["role"] == "user"
    assert len(cag.kv_snapshots) == 0 and "kv_snapshot_s" not in cold.timings  # nothing it could continue
    # only the chat's first tokens match the caption pass: the images are prefilled again
    assert cold.tokens["answer_cached"] < cold.tokens["caption_prompt"] // 2
    warm = cag.ask("ana", draw_photo(3, 64), "What is this?")  # caption from the cache, no restore
    assert warm.caption_cached and "kv_restored" not in warm.tokens and engine.calls.count("restore") == 0
    with pytest.raises(InputError, match="layout"):
        CagConfig(layout="sideways")
    memory.close()


def test_a_prompt_pack_words_the_prompts_and_keys_its_own_captions(home, tiny_embedder, tiny_engine, tmp_path) -> None:
    import json

    memory = Memory.open(home, embedder=tiny_embedder)
    memory.add_user("ana")
    memory.remember("ana", draw_photo(3, 64), "User: my blue bike.", ["bike"])
    ctx = ContextConfig(k=1, similarity_floor=-1.0)
    engine = CountingEngine(tiny_engine)
    CaptionAugmentedGenerator(memory, engine, context=ctx, config=GREEDY).ask("ana", draw_photo(3, 64), "What?")
    pack = tmp_path / "mine.json"
    pack.write_text(json.dumps({"caption_instruction": "Tell me about this photo, using what you remember.",
                                "dialogue_header": "--- memory {i} ---\n"}))
    engine.calls.clear()
    mine = CaptionAugmentedGenerator(memory, engine, context=ctx, config=replace(GREEDY, prompt_pack=str(pack)))
    reply = mine.ask("ana", draw_photo(3, 64), "What?")
    assert not reply.caption_cached  # the default pack's caption is not this pack's
    texts = [p.get("text", "") for p in engine.calls[0][0]["content"]]
    assert "Tell me about this photo, using what you remember." in texts and "--- memory 1 ---\n" in texts
    assert mine.ask("ana", draw_photo(3, 64), "What?").caption_cached  # and its own caption is reused
    with pytest.raises(InputError, match="unknown prompt pack field"):
        pack.write_text(json.dumps({"caption": "x"}))
        CaptionAugmentedGenerator(memory, engine, context=ctx, config=replace(GREEDY, prompt_pack=str(pack)))
    memory.close()


def test_abstains_without_similar_memories(home, tiny_embedder, tiny_engine) -> None:
    memory = Memory.open(home, embedder=tiny_embedder)
    memory.add_user("ana")
    cfg = AssistantConfig(home=home, context=ContextConfig(similarity_floor=0.5), cag=GREEDY)
    with Assistant(cfg, memory=memory, engine=tiny_engine) as assistant:
        reply = assistant.ask("ana", draw_photo(9, 64), "Who is this?")
        assert reply.context.abstained and reply.memories == () and reply.answer is not None
        assert reply.to_dict()["abstain_reason"]
    memory.close()


def test_streaming_yields_pieces_then_the_answer(bot) -> None:
    assistant, _ = bot
    out = list(assistant.ask_stream("ana", draw_photo(2, 64), "Who is this?"))
    *pieces, final = out
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces).strip() == final.answer


# ----------------------------------------------------------------------------- KV snapshots


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def any_engine(request):
    """The tiny Qwen3-VL on both engines (llama.cpp: converted to GGUF + mmproj once per session)."""
    if request.param == "transformers":
        yield request.getfixturevalue("tiny_engine")
        return
    from covip.sdk.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig

    model, mmproj = request.getfixturevalue("tiny_gguf")
    with LlamaCppEngine(LlamaCppEngineConfig(model_path=model, mmproj_path=mmproj, n_ctx=4096)) as engine:
        yield engine


def test_warm_ask_restores_the_caption_pass_snapshot(home, tiny_embedder, any_engine) -> None:
    memory = Memory.open(home, embedder=tiny_embedder)
    memory.add_user("ana")
    memory.remember("ana", draw_photo(3, 96), "User: my blue bike.", ["bike"])
    memory.remember("ana", draw_photo(4, 96), "User: Mom at the lake.", ["Mom"])
    ctx = ContextConfig(k=2, similarity_floor=-1.0, image_tokens=16)
    question = "What is this?"
    cag = CaptionAugmentedGenerator(memory, any_engine, context=ctx, config=GREEDY)
    cold = cag.ask("ana", draw_photo(3, 96), question)
    assert not cold.caption_cached and len(cag.kv_snapshots) == 1 and "kv_snapshot_s" in cold.timings
    cag.ask("ana", draw_photo(5, 96), question)  # another photo: the engine's KV now holds its passes
    assert len(cag.kv_snapshots) == 2

    warm = cag.ask("ana", draw_photo(3, 96), question)
    t, c = warm.tokens, cold.tokens
    assert warm.caption_cached and "caption_prompt" not in t
    caption_pass_kv = c["caption_prompt"] + c["caption_cached"] + c["caption_completion"] - 1
    assert t["kv_restored"] == caption_pass_kv and "kv_restore_s" in warm.timings
    # the restored caption pass is reused exactly as the cold answer pass reused it, images included
    assert t["answer_cached"] == c["answer_cached"] >= c["caption_prompt"] + c["caption_cached"]
    assert t["answer_prompt"] == c["answer_prompt"]
    question_tokens = any_engine.count_tokens(question)
    # prefilled: the question and turn markers, plus any caption tokens that re-tokenize differently
    assert question_tokens < t["answer_prompt"] <= question_tokens + 12 + c["caption_completion"]
    if t["answer_cached"] == caption_pass_kv:  # the caption tokenized back as generated: nothing else
        assert t["answer_prompt"] <= question_tokens + 12

    # the path without snapshots (engine KV reset, caption from the cache) answers the same, prefilling all
    plain = CaptionAugmentedGenerator(memory, any_engine, context=ctx, config=replace(GREEDY, kv_snapshot_mb=0))
    any_engine.reset()
    ref = plain.ask("ana", draw_photo(3, 96), question)
    assert ref.caption_cached and ref.tokens["answer_cached"] == 0 and "kv_restored" not in ref.tokens
    assert ref.tokens["answer_prompt"] == t["answer_prompt"] + t["answer_cached"]
    assert warm.answer == ref.answer == cold.answer
    assert len(plain.kv_snapshots) == 0
    memory.close()


def test_snapshots_follow_the_caption_cache(bot, monkeypatch) -> None:
    assistant, engine = bot
    photo = draw_photo(1, 64)
    store = assistant.cag.kv_snapshots
    first = assistant.caption("ana", photo)  # caption() alone snapshots its pass too
    assert not first.cached and len(store) == 1 and 0 < store.nbytes <= store.max_bytes
    # editing a used memory empties the caption cache under the same key: the miss drops the snapshot
    assistant.memory.rename_concept("ana", first.memories[0].concepts[0], "Renamed")

    def refuse():
        raise EngineError("no snapshot this time")

    monkeypatch.setattr(engine, "snapshot", refuse)
    again = assistant.caption("ana", photo)
    assert not again.cached and again.context.photo_ids == first.context.photo_ids
    assert len(store) == 0 and store.nbytes == 0
    monkeypatch.undo()

    # a snapshot stored with another caption than the cached one is dropped, never restored
    other = draw_photo(2, 64)
    assert not assistant.caption("ana", other).cached and len(store) == 1
    [(key, (caption, state))] = list(store._entries.items())
    store.put(key, caption + " (older)", state)
    restores = engine.calls.count("restore")
    assert assistant.ask("ana", other, "Who?").caption_cached
    assert engine.calls.count("restore") == restores and len(store) == 0


def test_kv_snapshots_lru_and_budget() -> None:
    def state(n: int) -> EngineState:
        return EngineState(model_id="m", n_tokens=n, nbytes=n, owner=None, data=None)

    store = KvSnapshots(100)
    assert store.put(("u", "m", "v", "a", ()), "A", state(40)) and store.put(("u", "m", "v", "b", ()), "B", state(40))
    assert store.get(("u", "m", "v", "a", ()), "A") is not None  # a is now the most recently used
    assert store.put(("u", "m", "v", "c", ()), "C", state(40))  # evicts b
    assert ("u", "m", "v", "b", ()) not in store and len(store) == 2 and store.nbytes == 80
    assert not store.put(("u", "m", "v", "d", ()), "D", state(101))  # larger than the whole budget
    assert store.get(("u", "m", "v", "a", ()), "other caption") is None and len(store) == 1
    store.clear()
    assert len(store) == 0 and store.nbytes == 0
    assert not KvSnapshots(0).put(("u", "m", "v", "a", ()), "A", state(1))
    with pytest.raises(InputError):
        CagConfig(kv_snapshot_mb=-1)


def test_assistant_open_leaves_the_callers_config_alone(home, tiny_embedder, tiny_engine) -> None:
    memory = Memory.open(home, embedder=tiny_embedder)
    base = AssistantConfig(context=ContextConfig(k=2))
    with Assistant.open(base, home=str(home)) as bot:
        assert bot.config.home == home and bot.config is not base
    assert base.home is None and base.context.k == 2  # the override went into a copy
    with pytest.raises(InputError, match="unknown AssistantConfig field"):
        Assistant.open(base, homme=str(home))
    memory.close()


def test_a_random_weight_model_is_capped_by_default_in_the_api(home, tiny_embedder, tiny_engine) -> None:
    memory = Memory.open(home, embedder=tiny_embedder)
    base = AssistantConfig(home=home)
    with Assistant(base, memory=memory, engine=tiny_engine) as bot:  # the CLI and the server get the same
        assert bot.cag.config.caption.max_new_tokens == bot.cag.config.answer.max_new_tokens == 32
    assert base.cag.answer.max_new_tokens == 256  # the caller's config is not touched
    uncapped = AssistantConfig(home=home, meaningless_max_tokens=None)
    with Assistant(uncapped, memory=memory, engine=tiny_engine) as bot:
        assert bot.cag.config.answer.max_new_tokens == 256
    memory.close()
