"""The CoViP rewards, rule by rule and edge by edge (the paper, "Rewards"), plus the trl adapter."""

from __future__ import annotations

import pytest

from covip.sdk.errors import InputError
from covip.training.judges import MCQA, Judge, JudgeItem, LexicalJudge
from covip.training.rewards import (
    CoViPReward,
    caption_reward,
    caption_reward_parts,
    caption_sample_reward,
    completion_text,
    degeneration_report,
    is_degenerate,
    is_over_length,
    judge_letter,
    parse_boxed,
    parse_index_set,
    parse_yes_no,
    recognition_reward,
    verification_reward,
)

# ----------------------------------------------------------------------------- boxed parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(r"so \boxed{[0, 2]}", "[0, 2]", id="plain"),
        pytest.param(r"\boxed{{0, 2}}", "{0, 2}", id="nested-braces"),
        pytest.param(r"\boxed{\text{A}} done", r"\text{A}", id="nested-command"),
        pytest.param(r"\boxed{1} then \boxed{2}", "1", id="second-box-ignored"),
        pytest.param(r"\boxed{[0, 1] and \boxed{2}", None, id="first-box-unbalanced"),
        pytest.param(r"\boxed {B}", "B", id="space-before-brace"),
        pytest.param(r"\boxed{}", "", id="empty-box"),
        pytest.param("the answer is [0, 2]", None, id="no-box"),
        pytest.param("", None, id="empty-text"),
        pytest.param(None, None, id="none"),
    ],
)
def test_parse_boxed(text, expected):
    assert parse_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(r"\boxed{[0, 2]}", {0, 2}, id="list"),
        pytest.param(r"\boxed{3}", {3}, id="scalar"),
        pytest.param(r"\boxed{[1, 1, 2, 2]}", {1, 2}, id="duplicates-collapse"),
        pytest.param(r"\boxed{{0, 2}}", {0, 2}, id="set-literal-nested-braces"),
        pytest.param(r"\boxed{(1, 3)}", {1, 3}, id="tuple"),
        pytest.param(r"\boxed{[]}", set(), id="empty-list"),
        pytest.param(r"\boxed{ [0,2] }", {0, 2}, id="whitespace"),
        pytest.param(r"\boxed{[0, 2}", None, id="unbalanced-literal"),
        pytest.param(r"\boxed{concept 0 and 2}", None, id="words"),
        pytest.param(r"\boxed{[0.0, 1]}", None, id="float-element"),
        pytest.param(r"\boxed{'1'}", None, id="string"),
        pytest.param(r"\boxed{True}", None, id="bool"),
        pytest.param(r"\boxed{[[0], 1]}", None, id="nested-list"),
        pytest.param(r"\boxed{}", None, id="empty-box"),
        pytest.param("[0, 2]", None, id="no-box"),
        pytest.param(r"\boxed{[1]} or maybe \boxed{[0, 1, 2]}", {1}, id="second-box-ignored"),
    ],
)
def test_parse_index_set(text, expected):
    assert parse_index_set(text) == expected


def test_parse_index_set_unboxed():
    assert parse_index_set("[2, 0]", boxed=False) == {0, 2}
    assert parse_index_set("nope", boxed=False) is None


@pytest.mark.parametrize(
    "completion, present, expected",
    [
        pytest.param(r"\boxed{[0, 2]}", [0, 2], 1.0, id="exact"),
        pytest.param(r"\boxed{[0]}", [0, 2], 2 / 3, id="subset"),
        pytest.param(r"\boxed{[0, 1, 2]}", [0, 2], 0.8, id="superset"),
        pytest.param(r"\boxed{[0, 3]}", [0, 2], 0.5, id="one-right-one-wrong"),
        pytest.param(r"\boxed{1}", [1], 1.0, id="scalar-box"),
        pytest.param(r"\boxed{[1, 1, 1]}", [1], 1.0, id="duplicate-indices"),
        pytest.param(r"\boxed{[]}", [0], 0.0, id="empty-prediction"),
        pytest.param(r"\boxed{[3]}", [0, 2], 0.0, id="disjoint"),
        pytest.param(r"\boxed{zero}", [0], 0.0, id="unparsable-box"),
        pytest.param("0", [0], 0.0, id="no-box"),
        pytest.param("", [0], 0.0, id="empty-completion"),
        pytest.param(r"\boxed{[5]} \boxed{[0]}", [0], 0.0, id="second-box-ignored"),
        pytest.param(r"\boxed{[]}", [], 0.0, id="empty-gold-and-prediction"),
    ],
)
def test_recognition_reward(completion, present, expected):
    assert recognition_reward(completion, present) == pytest.approx(expected)


# ----------------------------------------------------------------------------- judge letters


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(r"\boxed{A}", "A", id="letter"),
        pytest.param(r"\boxed{b}", "B", id="lowercase-bare"),
        pytest.param(r"\boxed{(C)}", "C", id="parenthesized"),
        pytest.param(r"\boxed{D.}", "D", id="trailing-dot"),
        pytest.param(r"The caption says so. \boxed{B. Blue hat}", "B", id="letter-with-option-text"),
        pytest.param(r"\boxed{\text{C}}", "C", id="latex-text"),
        pytest.param(r"\boxed{A (A)}", "A", id="same-letter-twice"),
        pytest.param(r"\boxed{Cannot be determined}", "D", id="letter-inside-word-not-counted"),
        pytest.param(r"\boxed{A or B}", "D", id="two-letters-hedge"),
        pytest.param(r"\boxed{A or D}", "D", id="letter-and-D-hedge"),
        pytest.param(r"\boxed{E}", "D", id="not-an-option"),
        pytest.param(r"\boxed{}", "D", id="empty-box"),
        pytest.param("The answer is A.", "D", id="no-box-unparsable"),
        pytest.param(r"\boxed{A", "D", id="unbalanced"),
        pytest.param(r"\boxed{B} on second thought \boxed{C}", "B", id="second-box-ignored"),
        pytest.param("", "D", id="empty"),
    ],
)
def test_judge_letter(text, expected):
    assert judge_letter(text) == expected


# ----------------------------------------------------------------------------- r_caps


@pytest.mark.parametrize(
    "pos_answers, pos_correct, neg_answers, expected",
    [
        pytest.param("ABC", "ABC", "", 1.0, id="all-positives-right-no-negatives"),
        pytest.param("ABD", "ABC", "", 2 / 3, id="two-of-three"),
        pytest.param("DDD", "ABC", "", 0.0, id="positives-all-D"),
        pytest.param("ABCCBA", "ABCCBA", "", 2.0, id="two-concepts-max-is-2"),
        pytest.param("ABC", "ABC", "DDDDDD", 1.0, id="all-negatives-D"),
        pytest.param("ABC", "ABC", "ADD", 1.0 - 1 / 3, id="one-of-three-negatives-wrong"),
        pytest.param("", "", "ABC", -1.0, id="all-negatives-wrong-no-positives"),
        pytest.param("ACD", "ABC", "DBDDCD", 1 / 3 - 2 / 6, id="mixed"),
        pytest.param("", "", "", 0.0, id="no-questions"),
        pytest.param("abc", "ABC", "d", 1.0, id="lowercase-letters"),
    ],
)
def test_caption_reward(pos_answers, pos_correct, neg_answers, expected):
    assert caption_reward(list(pos_answers), list(pos_correct), list(neg_answers)) == pytest.approx(expected)


def test_caption_reward_parts_split_positive_and_negative():
    assert caption_reward_parts(["A", "B", "D"], ["A", "B", "C"], ["A", "D"]) == pytest.approx((2 / 3, -0.5))


@pytest.mark.parametrize(
    "pos_answers, pos_correct, neg_answers",
    [
        pytest.param(["A"], ["A", "B"], [], id="length-mismatch"),
        pytest.param(["X"], ["A"], [], id="bad-answer-letter"),
        pytest.param(["A"], ["E"], [], id="bad-correct-letter"),
        pytest.param([], [], [None], id="bad-negative"),
    ],
)
def test_caption_reward_rejects_bad_input(pos_answers, pos_correct, neg_answers):
    with pytest.raises(InputError):
        caption_reward(pos_answers, pos_correct, neg_answers)


# ----------------------------------------------------------------------------- degeneration

def _tokens(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def sentences_text(n_sentences: int, n_copies: int) -> str:
    """n_sentences sentences: 'it is nice' n_copies times (interleaved), the others distinct."""
    uniq = iter(f"{a} {b} {c}" for a, b, c in zip(_tokens(50, "a"), _tokens(50, "b"), _tokens(50, "c")))
    out = ["it is nice" if k % 2 == 0 and k // 2 < n_copies else next(uniq) for k in range(n_sentences)]
    return ". ".join(out) + "."


def ngrams_text(copies: int, extra: int) -> str:
    """A 9-word phrase `copies` times, each followed by one distinct word, then `extra` distinct words.

    No 10-word chunk repeats (the phrase is 9 words), no punctuation (one sentence).
    """
    filler = iter(_tokens(500, "f"))
    words: list[str] = []
    for _ in range(copies):
        words += _tokens(9, "p") + [next(filler)]
    words += [next(filler) for _ in range(extra)]
    return " ".join(words)


def chunks_text(n_words: int, span: int) -> str:
    """A `span`-word run twice among distinct filler words (n_words in all), no punctuation."""
    filler = _tokens(n_words - 2 * span, "f")
    half = len(filler) // 2
    return " ".join(_tokens(span, "s") + filler[:half] + _tokens(span, "s") + filler[half:])


@pytest.mark.parametrize(
    "text, fired, ratio_name, ratio",
    [
        # rule 1: >= 4 sentences and (total - distinct) / total >= 0.3
        pytest.param(sentences_text(10, 4), ("sentences",), "sentence_ratio", 0.3, id="sentences-at-threshold"),
        pytest.param(sentences_text(8, 4), ("sentences",), "sentence_ratio", 3 / 8, id="sentences-above"),
        pytest.param(sentences_text(7, 3), (), "sentence_ratio", 2 / 7, id="sentences-just-below"),
        pytest.param("it is nice. it is nice. it is nice. it is nice.", ("sentences",), "sentence_ratio", 0.75,
                     id="four-identical-sentences"),
        pytest.param("it is nice. it is nice. it is nice.", (), "sentence_ratio", None,
                     id="three-sentences-below-size-precondition"),
        pytest.param("It is nice!  IT IS   nice?? it is nice... It is NICE.", ("sentences",), "sentence_ratio", 0.75,
                     id="case-whitespace-punctuation-normalized"),
        # rule 2: >= 20 words and duplicate 5-gram ratio >= 0.3
        pytest.param(ngrams_text(4, 14), ("ngrams",), "ngram_ratio", 0.3, id="ngrams-at-threshold"),
        pytest.param(ngrams_text(2, 0), ("ngrams",), "ngram_ratio", 5 / 16, id="ngrams-above-at-20-words"),
        pytest.param(ngrams_text(4, 15), (), "ngram_ratio", 15 / 51, id="ngrams-just-below"),
        pytest.param(" ".join(["the"] * 19), (), "ngram_ratio", None, id="19-words-below-size-precondition"),
        pytest.param(" ".join(["the"] * 20), ("ngrams", "chunks"), "ngram_ratio", 15 / 16, id="20-same-words"),
        # rule 3: windows w in {10, 20, 30} with >= 2w words; repeated-chunk occurrences / chunks >= 0.2
        pytest.param(chunks_text(99, 18), ("chunks",), "chunk10", 0.2, id="chunks-at-threshold"),
        pytest.param(chunks_text(100, 19), ("chunks",), "chunk10", 20 / 91, id="chunks-above"),
        pytest.param(chunks_text(99, 17), (), "chunk10", 16 / 90, id="chunks-just-below"),
        # clean texts
        pytest.param("", (), "sentence_ratio", None, id="empty-caption"),
        pytest.param("Rex naps on the red sofa. He loves the park. Mia threw his ball. It rained.", (),
                     "sentence_ratio", 0.0, id="normal-caption"),
    ],
)
def test_degeneration_rules(text, fired, ratio_name, ratio):
    report = degeneration_report(text)
    assert report.fired == fired
    assert is_degenerate(text) is bool(fired)
    measured = report.chunk_ratios.get(10) if ratio_name == "chunk10" else getattr(report, ratio_name)
    if ratio is None:
        assert measured is None
    else:
        assert measured == pytest.approx(ratio)
    assert report.rule == (fired[0] if fired else None)


def test_chunk_windows_need_twice_their_length():
    assert set(degeneration_report(" ".join(_tokens(39, "w"))).chunk_ratios) == {10}
    assert set(degeneration_report(" ".join(_tokens(40, "w"))).chunk_ratios) == {10, 20}
    assert set(degeneration_report(" ".join(_tokens(60, "w"))).chunk_ratios) == {10, 20, 30}
    report = degeneration_report(chunks_text(99, 18))
    assert report.chunk_windows_fired == (10,)


# ----------------------------------------------------------------------------- over length + combined


@pytest.mark.parametrize(
    "n_tokens, limit, over",
    [
        pytest.param(510, 512, False, id="510-of-512"),
        pytest.param(511, 512, True, id="511-of-512"),
        pytest.param(512, 512, True, id="512-of-512"),
        pytest.param(None, 512, False, id="unknown-count"),
        pytest.param(63, 64, True, id="63-of-64"),
    ],
)
def test_over_length(n_tokens, limit, over):
    assert is_over_length(n_tokens, limit) is over
    reward = caption_sample_reward("Rex naps on the sofa.", ["A"], ["A"], ["D"], n_tokens=n_tokens,
                                   max_completion_tokens=limit)
    assert reward == (-1.0 if over else pytest.approx(1 / 3))


@pytest.mark.parametrize(
    "caption, pos, correct, neg, expected",
    [
        pytest.param(sentences_text(10, 4), "ABC", "ABC", "", -1.0, id="degenerate-overrides-judge"),
        pytest.param("", "DDD", "ABC", "DD", 0.0, id="empty-caption-not-degenerate"),
        pytest.param("Rex naps.", "ABC", "ABC", "DA", 0.5, id="clean-caption-r_caps"),
    ],
)
def test_caption_sample_reward(caption, pos, correct, neg, expected):
    assert caption_sample_reward(caption, list(pos), list(correct), list(neg)) == pytest.approx(expected)


# ----------------------------------------------------------------------------- verification


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        pytest.param(r"\boxed{yes}", "yes", 1.0, id="boxed-yes"),
        pytest.param(r"\boxed{Yes}", True, 1.0, id="bool-answer"),
        pytest.param("No.", "no", 1.0, id="bare-no"),
        pytest.param(r"\boxed{no}", "yes", 0.0, id="wrong"),
        pytest.param(r"At first yes, but \boxed{no}", "no", 1.0, id="box-takes-precedence"),
        pytest.param("yes or no", "yes", 0.0, id="both-words-unparsable"),
        pytest.param("maybe", "no", 0.0, id="neither-word"),
        pytest.param("", "yes", 0.0, id="empty"),
        pytest.param("nobody knows", "no", 0.0, id="whole-words-only"),
    ],
)
def test_verification_reward(completion, answer, expected):
    assert verification_reward(completion, answer) == expected


def test_verification_rejects_bad_answer():
    with pytest.raises(InputError):
        verification_reward("yes", "maybe")
    assert parse_yes_no(None) is None


# ----------------------------------------------------------------------------- trl adapter


def q(question: str, a: str, b: str, c: str, answer: str | None = None) -> dict:
    """An MCQA in the authors' dict format."""
    return {"id": "Q", "question": question, "options": {"A": a, "B": b, "C": c, "D": "cannot be determined"},
            "correct_answer": answer}


REX = [q("Where does Rex nap?", "on the red sofa", "in the garden", "under the bed", "A"),
       q("What does Rex chase?", "a blue ball", "the neighbour's cat", "pigeons", "B"),
       q("Who gave Rex his collar?", "Mia", "Grandpa Joe", "the vet", "B")]
MIA = [q("What does Mia play?", "the violin", "tennis", "chess", "A")]


class CountingJudge(Judge):
    """Wraps the lexical judge and records every call (to check the one-call-per-batch rule)."""

    model_id = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[JudgeItem]] = []
        self._inner = LexicalJudge()

    def _generate(self, prompts, seeds):  # pragma: no cover - answer() is overridden
        raise NotImplementedError

    def answer(self, items):
        self.calls.append(list(items))
        return self._inner.answer(items)


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_adapter_dispatches_by_type_with_conversational_completions():
    judge = CountingJudge()
    reward = CoViPReward(judge, max_completion_tokens=512)
    good = "Rex naps on the red sofa again, chasing the neighbour's cat in his dreams; Grandpa Joe gave him that collar."
    completions = [
        chat(good),                                                          # caption: 3/3 right, Mia's Q -> D
        chat("Rex plays the violin with Mia."),                              # caption: leaks Mia -> negative
        [{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{[0]}"}]}],  # recognition
        chat(r"\boxed{yes}"),                                                # verification
        chat(sentences_text(10, 4)),                                         # caption, degenerate
        chat("Rex naps."),                                                   # caption, over length via ids
        chat(""),                                                            # caption, empty
    ]
    columns = dict(
        sample_type=["caption", "caption", "recognition", "verification", "caption", "caption", "caption"],
        present=[[0], [0], [0, 1], None, [0], [0], [0]],
        pos_qas=[REX, REX, None, None, REX, REX, REX],
        neg_qas=[MIA, MIA, None, None, MIA, MIA, MIA],
        answer=[None, None, None, "yes", None, None, None],
        completion_ids=[[1] * 40, [1] * 10, [1] * 5, [1] * 3, [1] * 100, [1] * 511, []],
    )
    metrics: list[tuple[str, float]] = []
    rewards = reward(prompts=[None] * 7, completions=completions,
                     log_metric=lambda name, value: metrics.append((name, value)), **columns)
    assert rewards == pytest.approx([1.0, -1.0, 2 / 3, 1.0, -1.0, -1.0, 0.0])
    # ONE judge call for the whole batch, holding only the two clean non-empty captions' questions
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 2 * (len(REX) + len(MIA))
    comps = reward.last_components
    assert [c.sample_type for c in comps] == columns["sample_type"]
    assert comps[0].r_caps_pos == pytest.approx(1.0) and comps[0].r_caps_neg == 0.0
    assert comps[1].r_caps_pos == 0.0 and comps[1].r_caps_neg == -1.0
    assert comps[2].r_vis == pytest.approx(2 / 3) and comps[3].r_verify == 1.0
    assert comps[4].degenerate and comps[4].degeneration_rule == "sentences" and not comps[4].over_length
    assert comps[5].over_length and comps[5].n_tokens == 511 and not comps[5].degenerate
    assert comps[6].judge_answers == ["D"] * 4
    assert reward.component_log[0]["judge_answers"] == ["A", "B", "B", "D"]
    names = {n for n, _ in metrics}
    assert {"covip/r_vis", "covip/r_caps_pos", "covip/r_caps_neg", "covip/degenerate", "covip/over_length"} <= names
    assert reward.__name__ == "covip_reward"


def test_adapter_plain_string_completions_and_tokenizer_count():
    class Tok:
        def encode(self, text, add_special_tokens=False):
            return text.split()

    reward = CoViPReward(LexicalJudge(), max_completion_tokens=4, tokenizer=Tok())
    rewards = reward(prompts=["p", "p"], completions=["Rex naps on the red sofa.", "Rex naps."],
                     sample_type=["caption", "caption"], pos_qas=[REX, REX], neg_qas=[[], []])
    assert rewards == pytest.approx([-1.0, 0.0])  # 6 words >= 4 - 1 -> over length; 2 words: nothing stated
    assert reward.last_components[0].over_length and reward.last_components[0].n_tokens == 6


def test_adapter_needs_no_judge_without_captions():
    reward = CoViPReward(None)
    assert reward(completions=[r"\boxed{0}", "no"], sample_type=["recognition", "verification"],
                  present=[[0], None], answer=[None, False]) == [1.0, 1.0]


@pytest.mark.parametrize(
    "columns, message",
    [
        pytest.param({}, "sample_type", id="missing-sample-type"),
        pytest.param({"sample_type": ["story"]}, "unknown sample_type", id="unknown-type"),
        pytest.param({"sample_type": ["recognition"]}, "present", id="recognition-without-present"),
        pytest.param({"sample_type": ["caption", "caption"]}, "values for 1", id="column-length-mismatch"),
        pytest.param({"sample_type": ["caption"], "pos_qas": [[q("x?", "a", "b", "c")]]}, "no correct answer",
                     id="positive-without-answer"),
    ],
)
def test_adapter_rejects_bad_columns(columns, message):
    with pytest.raises(InputError, match=message):
        CoViPReward(LexicalJudge())(completions=["Rex naps."], **columns)


def test_adapter_without_judge_refuses_captions():
    with pytest.raises(InputError, match="without a judge"):
        CoViPReward(None)(completions=["Rex naps."], sample_type=["caption"], pos_qas=[REX], neg_qas=[[]])


@pytest.mark.parametrize(
    "completion, text",
    [
        pytest.param("plain", "plain", id="string"),
        pytest.param([{"role": "assistant", "content": "hi"}], "hi", id="messages"),
        pytest.param([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"},
                                                        {"type": "text", "text": "b"}]}], "ab", id="parts"),
        pytest.param({"role": "assistant", "content": None}, "", id="single-message-none"),
    ],
)
def test_completion_text(completion, text):
    assert completion_text(completion) == text


def test_mcqa_reads_the_authors_format():
    m = MCQA.coerce(REX[0])
    assert m.answer == "A" and m.options["D"] == "cannot be determined" and m.id == "Q"
    m2 = MCQA.coerce({"question": "q?", "options": {"a": "x", "b": "y", "c": "z"}, "answer": "c"})
    assert m2.answer == "C" and m2.options["D"].startswith("The answer cannot be determined")
    with pytest.raises(InputError):
        MCQA.coerce({"question": "q?", "options": {"A": "x", "B": "y"}})


def test_mcqa_is_one_type_for_data_judges_and_rewards():
    schema = pytest.importorskip("covip.training.data.schema")
    assert MCQA is schema.MCQA  # covip.training.judges re-exports the data package's type
    opts = {"A": "the park", "B": "the beach", "C": "home", "D": "The answer cannot be determined"}
    ours = schema.MCQA("q1", "Where?", opts, "B", concept_index=0, fact_answer="B")
    for obj in (ours, ours.to_dict()):
        m = MCQA.coerce(obj)
        assert m.answer == "B" and m.question == "Where?" and m.options == opts and m.id == "q1"


def test_recognition_falls_back_to_the_answer_column():
    reward = CoViPReward(None)
    assert reward(completions=[r"\boxed{[0, 1]}"], sample_type=["recognition"], present=[None],
                  answer=[(0, 1)]) == [1.0]
