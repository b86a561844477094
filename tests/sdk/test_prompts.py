"""Golden tests of the prompt layout: the exact text the model is trained and run on."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from covip.sdk import prompts
from covip.sdk.errors import InputError

GOLDEN = Path(__file__).parent / "golden"
DIALOGUES = [
    "User: This is Bori at the Han river, she chased pigeons.\nAssistant: Bori looks so happy by the water!",
    "User: Mom's birthday dinner in Mapo, she tried jjamppong for the first time.",
    "User: My blue bike, bought in March for the river path.\nAssistant: A great ride for spring.",
    "User: Grandpa's old camera from 1978, he used it in Busan.",
]


def context(n: int) -> list[prompts.ContextEntry]:
    return [prompts.ContextEntry(dialogue=d, image=f"img{i + 1}") for i, d in enumerate(DIALOGUES[:n])]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_caption_layout_matches_golden(n: int) -> None:
    messages = prompts.caption_messages(context(n), "query")
    assert prompts.render_text(messages) == (GOLDEN / f"caption_{n}.txt").read_text()
    parts = messages[0]["content"]
    # per item: header text, image, dialogue + blank line; then query header, query image, instruction
    assert len(parts) == 3 * n + 3
    for i in range(n):
        assert parts[3 * i] == {"type": "text", "text": f"===== Dialogue {i + 1} =====\n"}
        assert parts[3 * i + 1] == {"type": "image", "image": f"img{i + 1}"}
        assert parts[3 * i + 2]["text"].endswith("\n\n")
    assert parts[-3]["text"] == "===== New Image =====\n" and parts[-2]["image"] == "query"
    assert parts[-1]["text"] == prompts.CAPTION_INSTRUCTION


def test_answer_pass_extends_the_caption_pass() -> None:
    caption = prompts.caption_messages(context(2), "query")
    answer = prompts.answer_messages(context(2), "query", "Bori is napping on the sofa.", "Where did I last see her?")
    assert answer[: len(caption)] == caption  # the caption pass is a prefix: KV reuse is possible
    assert answer[-2:] == [{"role": "assistant", "content": "Bori is napping on the sofa."},
                           {"role": "user", "content": "Where did I last see her?"}]
    assert prompts.render_text(answer) == (GOLDEN / "answer_2.txt").read_text()


def test_recognition_layout_matches_golden() -> None:
    messages = prompts.recognition_messages(["a", "b", "c"], "q")
    assert prompts.render_text(messages) == (GOLDEN / "recognition_3.txt").read_text()
    parts = messages[0]["content"]
    assert [p["text"] for p in parts[:6:2]] == [f"===== Concept {i} =====\n" for i in range(3)]
    assert parts[-1] == {"type": "image", "image": "q"} and "\\boxed{[0, 2]}" in parts[-2]["text"]


def test_training_draws_the_query_header_and_inference_fixes_it() -> None:
    rng = random.Random(0)
    seen = {prompts.caption_messages(context(1), "q", rng=rng)[0]["content"][-3]["text"] for _ in range(60)}
    assert seen == {f"===== {h} =====\n" for h in prompts.QUERY_HEADERS}
    with pytest.raises(InputError):
        prompts.caption_messages(context(1), "q", header="Some Image")
    # the authors' odds: Query Image 1/2, Target Image 1/4, New Image 1/4
    rng = random.Random(1)
    draws = [prompts.caption_messages(context(1), "q", rng=rng)[0]["content"][-3]["text"] for _ in range(4000)]
    shares = {h: draws.count(f"===== {h} =====\n") / len(draws) for h in prompts.QUERY_HEADERS}
    assert shares["Query Image"] == pytest.approx(0.5, abs=0.03)
    assert shares["Target Image"] == pytest.approx(0.25, abs=0.03) and shares["New Image"] == pytest.approx(0.25, abs=0.03)


def test_caption_only_mode_puts_captions_where_images_were() -> None:
    entry = prompts.ContextEntry(dialogue="User: hi", caption="A white dog on grass.")
    parts = prompts.caption_messages([entry], "q")[0]["content"]
    assert parts[1] == {"type": "text", "text": "[Photo: A white dog on grass.]\n"}
    assert sum(p["type"] == "image" for p in parts) == 1


def test_direct_and_verification_layouts() -> None:
    direct = prompts.direct_messages(context(1), "q", "Who is this?")[0]["content"]
    assert direct[-1] == {"type": "text", "text": "Who is this?"} and direct[-3]["text"] == "===== New Image =====\n"
    verify = prompts.verification_messages("a", "b", "Bori", "Is Bori in this image?")[0]["content"]
    assert [p["type"] for p in verify] == ["image", "image", "text"] and "Bori" in verify[2]["text"]
    with pytest.raises(InputError):
        prompts.answer_messages(context(1), "q", "cap", "  ")


def test_only_the_prompts_module_formats_the_layout() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = [str(p.relative_to(root)) for pkg in ("sdk", "training", "export", "benchmarks", "examples")
                 for p in (root / pkg).rglob("*.py")
                 if p.name != "prompts.py" and ("===== Dialogue" in p.read_text() or "===== Concept" in p.read_text())]
    assert offenders == []
