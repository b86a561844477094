"""Golden tests of the prompt layout: the exact text the model is trained and run on."""

from __future__ import annotations

import json
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


# -- prompt packs -------------------------------------------------------------------------------------------
def test_covip_pack_is_pinned() -> None:
    """Any change to covip's own wording changes this hash: bump PROMPT_VERSION (caches key on it) and the
    golden files together, then update the hash here. Adding a new piece of text (every existing layout renders
    as before, as with ``recognition_followup``) changes the hash only: caches stay valid."""
    assert prompts.DEFAULT_PACK.hash == "9b7c01e238a6154de0845e7ea0d9a2bfbe15421e32f1d9bf19eba1bf96553e4d"
    assert prompts.DEFAULT_PACK.tag() == prompts.PROMPT_VERSION == "covip-prompts-1"
    assert prompts.load_pack(None) is prompts.DEFAULT_PACK


def _every_layout(pack: prompts.PromptPack) -> str:
    """Every chat the layouts build, rendered, in one text."""
    ctx = [*context(2), prompts.ContextEntry(dialogue="User: the old camera.", caption="a black camera")]
    chats = [
        prompts.caption_messages(ctx, "q", pack=pack),
        prompts.caption_messages(ctx, "q", rng=random.Random(3), pack=pack),
        prompts.answer_messages(ctx, "q", "CAPTION", pack.questions["lsd"], pack=pack),
        prompts.direct_messages(ctx, "q", pack.questions["lar"], pack=pack),
        prompts.paper_answer_messages(ctx, "q", "CAPTION", pack.paper_questions["itr"], system="caption", pack=pack),
        prompts.paper_answer_messages(ctx, "q", "CAPTION", pack.paper_questions["lsd"], system="personalization",
                                      pack=pack),
        prompts.paper_direct_messages(ctx, "q", pack.paper_questions["lar"], pack=pack),
        prompts.paper_direct_messages(ctx, "q", pack.questions["itr"], pack=pack),
        prompts.recognition_messages(["a", "b"], "q", pack=pack),
        prompts.recognition_followup_messages("q2", image_number=3, pack=pack),
        prompts.verification_messages("a", "q", "Bori", "Is Bori here?", pack=pack),
        prompts.describe_messages("a", pack=pack),
        prompts.judge_messages("CAPTION", "Q?", {"A": "x", "B": "y", "C": "z", "D": "none"}, pack=pack),
        prompts.judge_messages("CAPTION", "Q?", {"A": "x", "B": "y", "C": "z", "D": "none"}, style="paper", pack=pack),
        prompts.lar_judge_messages("Q?", "REF", "ANS", pack=pack),
        prompts.lar_judge_messages("Q?", "REF", "ANS", style="paper", pack=pack),
    ]
    return "\n".join(prompts.render_text(c) for c in chats)


def test_a_pack_replaces_every_piece_of_text(tmp_path: Path) -> None:
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(prompts.PromptPack)}
    text = {name: f"<<{name}>>" for name, f in fields.items() if f.type == "str" and name != "name"}
    keep = {"dialogue_header": "<<dialogue_header {i}>>\n", "concept_header": "<<concept_header {i}>>\n",
            "query_header": "<<query_header {header}>>\n", "caption_photo": "<<caption_photo {caption}>>\n",
            "verification_template": "<<verification_template {name} {question}>>",
            "judge_user": "<<judge_user {caption} {question} {options}>>",
            "judge_paper_user": "<<judge_paper_user {caption} {question} {options}>>",
            "lar_judge_user": "<<lar_judge_user {question} {reference} {answer}>>",
            "lar_judge_paper_user": "<<lar_judge_paper_user {question} {reference} {answer}>>",
            "vision_id": "<<vision_id {k}>> "}
    text.update(keep)
    body = ["name = \"test-pack\"", "dialogue_numbering = 0", "vision_id_numbering = 0",
            "query_headers = [\"<<QH1>>\", \"<<QH2>>\"]", "query_header_weights = [1, 1]",
            "inference_query_header = \"<<QH3>>\""]
    body += [f"{k} = {json.dumps(v)}" for k, v in text.items() if k != "inference_query_header"]
    body += ["[questions]", *(f'{t} = "<<question {t}>>"' for t in ("lsd", "lar", "itr")),
             "[paper_questions]", *(f'{t} = "<<paper question {t}>>"' for t in ("lsd", "lar", "itr"))]
    path = tmp_path / "pack.toml"
    path.write_text("\n".join(body) + "\n")
    pack = prompts.load_pack(path)
    assert pack.name == "test-pack" and pack.tag() == f"{prompts.PROMPT_VERSION}+test-pack:{pack.hash[:16]}"
    rendered = _every_layout(pack)
    default = _every_layout(prompts.DEFAULT_PACK)
    # no piece of covip's wording is left ...
    for piece in ("=====", "Dialogue", "Concept", "New Image", "Describe", "boxed", "memory", "question",
                  "Reference answer", "[Photo:"):
        assert piece in default and piece not in rendered.replace("<<question", "").replace("<<paper question", "")
    # ... and every piece of the pack shows up: numbering from 0, vision ids across the chat
    for name in text:
        if name not in ("inference_query_header",):
            assert f"<<{name}" in rendered, name
    assert "<<dialogue_header 0>>" in rendered and "<<concept_header 0>>" in rendered
    assert "<<vision_id 0>> <image>" in rendered and "<<vision_id 2>> <image>" in rendered  # 2 photos + query
    assert "<<query_header <<QH3>>>>" in rendered and "<<QH1>>" in rendered + "".join(
        prompts.render_text(prompts.caption_messages(context(1), "q", rng=random.Random(i), pack=pack))
        for i in range(20))
    assert all(f"<<question {t}>>" in rendered and f"<<paper question {t}>>" in rendered
               for t in ("lsd", "lar", "itr"))


@pytest.mark.parametrize(("content", "suffix", "match"), [
    ('{"caption_instructions": "x"}', ".json", "unknown prompt pack field"),
    ('{"dialogue_numbering": "one"}', ".json", "dialogue_numbering must be an integer"),
    ('{"dialogue_header": "no number here"}', ".json", "must contain {i}"),
    ('{"caption_instruction": 7}', ".json", "must be text"),
    ('{"query_headers": ["A"], "query_header_weights": [1, 2]}', ".json", "one non-negative integer weight"),
    ('{"questions": {"vqa": "What?"}}', ".json", "unknown"),
    ("caption_instruction = ", ".toml", "not a valid TOML"),
    ("[1, 2]", ".json", "a table of fields"),
])
def test_bad_packs_name_the_problem(tmp_path: Path, content: str, suffix: str, match: str) -> None:
    path = tmp_path / f"pack{suffix}"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        prompts.load_pack(path)


def test_pack_files_are_bounded_and_must_exist(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        prompts.load_pack(tmp_path / "nope.toml")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"caption_instruction": "x" * (2 << 20)}))
    with pytest.raises(InputError, match="1 MiB"):
        prompts.load_pack(big)
    with pytest.raises(InputError, match="PromptPack"):
        prompts.caption_messages(context(1), "q", pack="covip")  # type: ignore[arg-type]
