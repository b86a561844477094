"""Caption-Augmented Generation on the tiny Qwen3-VL: caption cache, invalidation, KV reuse, provenance."""

from __future__ import annotations

import pytest

from covip.sdk import Memory
from covip.sdk.assistant import Assistant, AssistantConfig
from covip.sdk.cag import CagConfig
from covip.sdk.context import ContextConfig
from covip.sdk.engines.base import GenerationConfig
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
    assert len(engine.calls) == 3  # only the answer pass ran
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
