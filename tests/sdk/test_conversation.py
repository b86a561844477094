"""Conversations about one photo: earlier turns and the app's system text reach the model, follow-ups reuse the
engine's KV cache of the previous turn (they prefill only their new tokens), the oldest turns make room when the
context window is full, and the OpenAI endpoint and `covip chat` keep the conversation."""

from __future__ import annotations

import pytest

from covip.sdk import Memory, prompts
from covip.sdk.assistant import Assistant, AssistantConfig
from covip.sdk.cag import CagConfig
from covip.sdk.context import ContextConfig
from covip.sdk.engines.base import GenerationConfig
from covip.sdk.errors import InputError
from tests.conftest import draw_photo

GREEDY = CagConfig(caption=GenerationConfig(max_new_tokens=12), answer=GenerationConfig(max_new_tokens=8))


@pytest.fixture
def bot(home, tiny_embedder, tiny_engine):
    memory = Memory.open(home, embedder=tiny_embedder)
    cfg = AssistantConfig(home=home, context=ContextConfig(k=2, similarity_floor=-1.0, image_tokens=16), cag=GREEDY)
    with Assistant(cfg, memory=memory, engine=tiny_engine) as assistant:
        memory.add_user("ana")
        memory.remember("ana", draw_photo(1, 64), "User: Bori at the Han river.", ["Bori"], place="Han river")
        memory.remember("ana", draw_photo(2, 64), "User: Mom at her birthday dinner.", ["Mom"])
        yield assistant
    memory.close()


def test_layout_keeps_turns_in_order_with_the_system_text_first() -> None:
    entry = prompts.ContextEntry(dialogue="User: Bori at the river.", image="IMG0")
    msgs = prompts.answer_messages([entry], "QUERY", "Bori on the grass.", "And then?",
                                   history=[("Who is this?", "Bori.")], system="Answer in French.")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[0]["content"] == "Answer in French." and msgs[3]["content"] == "Who is this?"
    assert msgs[4]["content"] == "Bori." and msgs[-1]["content"] == "And then?"
    # each follow-up's prompt starts with the previous turn's whole prompt
    first = prompts.answer_messages([entry], "QUERY", "Bori on the grass.", "Who is this?")
    assert msgs[1:4] == first[:3] or msgs[1:3] == first[:2]
    direct = prompts.direct_messages([entry], "QUERY", "And then?", history=[("Who is this?", "Bori.")])
    assert [m["role"] for m in direct] == ["user", "assistant", "user"]
    assert direct[0]["content"][-1]["text"] == "Who is this?"  # the photo comes with the first question


def test_follow_up_prefills_only_its_new_tokens(bot) -> None:
    photo = draw_photo(1, 64)
    first = bot.ask("ana", photo, "Who is this?")
    seen = first.tokens["answer_prompt"] + first.tokens["answer_cached"]
    follow = bot.ask("ana", photo, "Where was that?", history=[("Who is this?", first.answer)])
    assert follow.history_turns == 1 and follow.history_dropped == 0
    new = bot.engine.count_tokens(first.answer) + bot.engine.count_tokens("Where was that?")
    # everything the first turn prefilled is reused; only the answer, the question and the role markers are new
    assert follow.tokens["answer_cached"] >= seen - 1
    assert 0 < follow.tokens["answer_prompt"] <= new + 16
    again = bot.ask("ana", photo, "Where was that?")  # without the history: a fresh question, no earlier turn
    assert again.history_turns == 0 and again.tokens["answer_prompt"] > 0


def test_follow_up_after_other_work_still_answers(bot) -> None:
    """Another question in between evicts the conversation from the engine: the caption snapshot is restored."""
    photo = draw_photo(1, 64)
    first = bot.ask("ana", photo, "Who is this?")
    bot.ask("ana", draw_photo(2, 64), "Who is this?")
    follow = bot.ask("ana", photo, "Where was that?", history=[("Who is this?", first.answer)])
    assert follow.history_turns == 1 and follow.answer is not None


def test_oldest_turns_make_room_and_bad_history_is_refused(bot) -> None:
    photo = draw_photo(1, 64)
    from covip.sdk.cag import context_length

    window = context_length(bot.engine)
    long = "Bori ran along the river. " * 60
    turns = [(f"question {i}: {long}", f"answer {i}: {long}") for i in range(window // 200 + 8)]
    reply = bot.ask("ana", photo, "And now?", history=turns)
    assert reply.history_dropped > 0 and reply.history_turns + reply.history_dropped == len(turns)
    if reply.history_turns:  # the newest are the ones kept
        assert reply.history_turns < len(turns)
    for bad in ("Who?", [("only one",)], [(1, "a")], [("", "a")], 42):
        with pytest.raises(InputError, match="history"):
            bot.ask("ana", photo, "And now?", history=bad)
    with pytest.raises(InputError, match="system"):
        bot.ask("ana", photo, "And now?", system=["not", "text"])
    with pytest.raises(InputError, match="context length"):
        bot.ask("ana", photo, "And now?", system="Be brief. " * (window * 2))
    with pytest.raises(InputError, match="system text is"):
        bot.ask("ana", photo, "And now?", system="x" * (64 * window + 1))


def test_system_text_reaches_the_model(bot) -> None:
    photo = draw_photo(1, 64)
    plain = bot.ask("ana", photo, "Who is this?")
    told = bot.ask("ana", photo, "Who is this?", system="You are a helpful assistant.")
    seen = lambda a: a.tokens["answer_prompt"] + a.tokens["answer_cached"]  # noqa: E731
    assert seen(told) >= seen(plain) + bot.engine.count_tokens("You are a helpful assistant.")
