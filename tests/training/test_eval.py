"""covip eval (CapEval-QAs, downstream with/without CAG).

Scorer and metric cases are hand-built; the official layouts are read from small fixtures written here
from the schema; end to end runs use the tiny random-weight engine (captions of a few tokens) and the
lexical judge on a small synthetic set, plus a scripted "oracle" engine where the numbers must be exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from PIL import Image

from covip.sdk.engines.base import Generation
from covip.sdk.errors import DataError, InputError
from covip.training.data import SynthConfig, synthesize
from covip.training.data.downstream import DEFAULT_QUESTIONS, load_downstream
from covip.training.eval.capeval import (
    caption_messages_for,
    detect_format,
    load_items,
    no_vision_verdict,
    read_captions,
    run_capeval,
)
from covip.training.eval.cli import register
from covip.training.eval.common import JsonlStore, parse_options
from covip.training.eval.downstream import (
    itr_score,
    lar_lexical_correct,
    lsd_score,
    parse_verdict,
    run_downstream,
    token_set_f1,
)
from covip.training.eval.scoring import question_record, score_records
from covip.training.judges import Judge

ROOT = Path(__file__).resolve().parents[2]
BOX = "\\boxed{{{}}}"


# -- the scorer ---------------------------------------------------------------------------------------------
def _recs(sample: str, n_present: int, pos: list[tuple[str, str]], neg: list[str], protocol: str = "strict"):
    """(correct, judge output) per positive question, judge output per negative one (covip's strict parser;
    the paper protocol's parser has its own tests in test_protocols.py)."""
    out = [question_record(sample, f"p{i}", polarity="pos", n_present=n_present, correct=c, judge_output=o,
                           protocol=protocol) for i, (c, o) in enumerate(pos)]
    out += [question_record(sample, f"n{i}", polarity="neg", n_present=n_present, correct="B", judge_output=o,
                            protocol=protocol) for i, o in enumerate(neg)]
    return out


def test_scorer_all_right_and_all_d() -> None:
    right = _recs("s1", 1, [("A", BOX.format("A")), ("B", BOX.format("B")), ("C", BOX.format("c"))],
                  [BOX.format("D")] * 6)
    s = score_records(right)
    assert (s["1"].acc_pos, s["1"].acc_neg, s["overall"].acc_pos, s["overall"].acc_neg) == (1.0, 1.0, 1.0, 1.0)
    assert (s["1"].n_samples, s["1"].n_pos, s["1"].n_neg) == (1, 3, 6)
    all_d = _recs("s1", 1, [("A", BOX.format("D"))] * 3, [BOX.format("D")] * 6)
    s = score_records(all_d)
    assert (s["overall"].acc_pos, s["overall"].acc_neg) == (0.0, 1.0)
    for key in ("2", "3", "4"):  # always listed; no questions -> None
        assert s[key].n_pos == 0 and s[key].acc_pos is None and s[key].acc_neg is None


def test_scorer_mixed_buckets_are_micro_averaged() -> None:
    recs = _recs("a", 1, [("A", BOX.format("A")), ("A", BOX.format("A")), ("B", BOX.format("C"))],
                 [BOX.format("D")] * 6)
    recs += _recs("b", 2, [("A", BOX.format("A"))] * 3 + [("B", BOX.format("D"))] * 3,
                  [BOX.format("D"), BOX.format("A"), BOX.format("B")])
    recs += _recs("c", 4, [("C", BOX.format("C"))] * 12, [])
    s = score_records(recs)
    assert (s["1"].acc_pos, s["1"].acc_neg) == (pytest.approx(2 / 3), 1.0)
    assert (s["2"].acc_pos, s["2"].acc_neg) == (0.5, pytest.approx(1 / 3))
    assert (s["4"].acc_pos, s["4"].acc_neg, s["4"].n_pos) == (1.0, None, 12)
    assert s["3"].n_samples == 0
    # micro: 17 of 21 positive questions, 7 of 9 negative ones (a macro mean over buckets would differ)
    assert s["overall"].acc_pos == pytest.approx(17 / 21) and s["overall"].acc_neg == pytest.approx(7 / 9)
    assert (s["overall"].n_samples, s["overall"].n_pos, s["overall"].n_neg) == (3, 21, 9)


@pytest.mark.parametrize("output", ["The answer is A", "\\boxed{A or B}", "", "\\boxed{", "\\boxed{}"])
def test_unparsable_judge_output_counts_as_d(output: str) -> None:
    pos = question_record("s", "q", polarity="pos", n_present=1, correct="A", judge_output=output, protocol="strict")
    neg = question_record("s", "q", polarity="neg", n_present=1, correct="A", judge_output=output, protocol="strict")
    assert pos.answer == neg.answer == "D"
    s = score_records([pos, neg])
    assert (s["overall"].acc_pos, s["overall"].acc_neg) == (0.0, 1.0)


def test_scorer_rejects_bad_records() -> None:
    with pytest.raises(InputError):
        question_record("s", "q", polarity="maybe", n_present=1, correct="A", judge_output="")
    with pytest.raises(InputError):
        question_record("s", "q", polarity="pos", n_present=1, correct="E", judge_output="")


def test_no_vision_verdict() -> None:
    def sc(pos_right: int) -> dict:
        return score_records(_recs("s", 1, [("A", BOX.format("A"))] * pos_right + [("A", "x")] * (10 - pos_right),
                                   [BOX.format("D")]))
    assert no_vision_verdict(sc(8), sc(1))["verdict"] == "pass"
    assert no_vision_verdict(sc(8), sc(7))["verdict"] == "fail"
    assert no_vision_verdict(sc(0), sc(0))["verdict"] == "inconclusive"


# -- official layouts ----------------------------------------------------------------------------------------
def _qa(qid: str, letter: str, topic: str) -> dict:
    return {"id": qid, "question": f"Where was {topic}?",
            "options": {"A": f"{topic} park", "B": f"{topic} beach", "C": f"{topic} cabin"},
            "correct_answer": letter}


def _png(path: Path, colour: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return path.name


@pytest.fixture
def official(tmp_path: Path) -> dict[str, Path]:
    """A CapEval file, a test-set JSONL, captions JSONL and downstream files in the authors' layouts."""
    capeval = {"sample_0": {"qas": {"concept_0": {"qa": [_qa("Q1", "A", "bori"), _qa("Q2", "B", "bori"),
                                                          _qa("Q3", "C", "bori")]},
                                    "concept_1": {"qa": [_qa("Q1", "B", "mochi"), _qa("Q2", "B", "mochi"),
                                                         _qa("Q3", "A", "mochi")]}},
                            "gts": [1]},
               "sample_1": {"qas": {"concept_0": {"qa": [_qa("Q1", "C", "pino")]},
                                    "concept_1": {"qa": [_qa("Q1", "A", "dubu")]}},
                            "gts": [0, 1]}}
    (tmp_path / "capeval.json").write_text(json.dumps(capeval))
    names = [_png(tmp_path / f"{n}.png", c) for n, c in (("a", (200, 0, 0)), ("b", (0, 200, 0)), ("q", (0, 0, 200)))]
    lines = [{"imgs": names[2], "concepts": names[:2], "dialogues": {"a": "User: Bori at the park.",
                                                                      "b": "User: Mochi at the beach."}},
             {"imgs": names[2], "concepts": names[:2], "dialogues": ["User: Pino.", "User: Dubu."]}]
    (tmp_path / "testset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"id": "sample_0", "caption": "Mochi on mochi beach."})
                                             + "\n" + json.dumps({"id": "sample_1", "caption": ""}) + "\n")
    ds = {"images_context": names[:2], "dialogues_context": {"x": "User: Bori at the park.", "y": "User: Mochi."},
          "query_image": names[2], "answer": "the park"}
    (tmp_path / "lsd.json").write_text(json.dumps([ds, {**ds, "id": "two", "answer": ["the park", "a park"],
                                                        "question": "Where?"}]))
    return {"capeval": tmp_path / "capeval.json", "testset": tmp_path / "testset.jsonl",
            "captions": tmp_path / "captions.jsonl", "lsd": tmp_path / "lsd.json", "dir": tmp_path}


def test_capeval_file_and_testset_layouts_are_read(official) -> None:
    assert detect_format(official["capeval"]) == "capeval" and detect_format(official["testset"]) == "testset"
    items = load_items(official["capeval"])
    first = items[0]
    assert first.id == "sample_0" and first.present == (1,) and first.sample is None
    assert [q.correct for q in first.pos_qas] == ["B", "B", "A"] and {q.concept_index for q in first.pos_qas} == {1}
    assert [q.correct for q in first.neg_qas] == ["D"] * 3 and [q.fact_answer for q in first.neg_qas] == list("ABC")
    assert items[1].present == (0, 1) and not items[1].neg_qas
    merged = load_items(official["testset"], capeval=official["capeval"])
    assert [it.id for it in merged] == ["sample_0", "sample_1"]
    s = merged[0].sample
    assert s is not None and s.query_image.endswith("q.png") and s.dialogues[1] == "User: Mochi at the beach."
    assert merged[0].pos_qas == first.pos_qas
    with pytest.raises(InputError, match="--capeval"):
        load_items(official["testset"])
    assert load_items(official["capeval"], limit=1)[0].id == "sample_0"


def test_captions_files_are_read(official, tmp_path: Path) -> None:
    assert read_captions(official["captions"]) == {"sample_0": "Mochi on mochi beach.", "sample_1": ""}
    obj = tmp_path / "caps.json"
    obj.write_text(json.dumps({"sample_0": "x"}))
    assert read_captions(obj) == {"sample_0": "x"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(DataError, match="caption"):
        read_captions(bad)


def test_scoring_given_captions_with_the_lexical_judge(official, tmp_path: Path) -> None:
    res = run_capeval(official["capeval"], captions=official["captions"], judge="lexical", out=tmp_path / "o",
                      progress=False)
    s = res.scores["vision"]
    # sample_0: caption states "mochi beach" = B for Mochi's Q1 and Q2 (right), not A for Q3; Bori's 3 negatives
    # are all D. sample_1: empty caption, every answer D: both positives wrong.
    assert (s["1"].pos_right, s["1"].n_pos, s["1"].neg_right, s["1"].n_neg) == (2, 3, 3, 3)
    assert (s["2"].pos_right, s["2"].n_pos) == (0, 2)
    assert s["overall"].acc_pos == pytest.approx(2 / 5) and s["overall"].acc_neg == 1.0
    lines = [json.loads(x) for x in (tmp_path / "o" / "judgments.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and {"judge_output", "answer", "right", "polarity", "question"} <= set(lines[0])
    # each record quotes its own concept's question (ids Q1-Q3 repeat per concept: Bori's Q1 is not Mochi's)
    topics = {("sample_0", 0): "bori", ("sample_0", 1): "mochi", ("sample_1", 0): "pino", ("sample_1", 1): "dubu"}
    assert all(r["question"] == f"Where was {topics[r['sample_id'], r['concept_index']]}?" for r in lines)


def test_downstream_layout_is_read(official, tmp_path: Path) -> None:
    samples = load_downstream(official["lsd"], "lsd")
    assert [s.id for s in samples] == ["lsd-0", "two"]
    assert samples[0].question == DEFAULT_QUESTIONS["lsd"] and samples[1].question == "Where?"
    assert samples[1].answers == ("the park", "a park") and samples[0].dialogues[1] == "User: Mochi."
    assert Path(samples[0].query_image).is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"images_context": ["a.png"], "dialogues_context": ["x"], "query_image": "q.png"})
                   + "\n")
    with pytest.raises(DataError, match="answer"):
        load_downstream(bad, "lsd", check_images=False)
    bad.write_text(json.dumps({"task": "itr", "images_context": ["a.png"], "dialogues_context": ["x"],
                               "query_image": "q.png", "answer": "x"}) + "\n")
    with pytest.raises(DataError, match="task"):
        load_downstream(bad, "lsd", check_images=False)


# -- downstream metrics ------------------------------------------------------------------------------------
def test_downstream_metrics() -> None:
    assert token_set_f1("The Han river park", "the han river park") == 1.0
    assert token_set_f1("han river", "the Han river park") == pytest.approx(0.8)
    assert token_set_f1("", "park") == 0.0
    assert lsd_score("I think \\boxed{Haeundae beach}.", ["Haeundae beach"]) == (1.0, True)
    f1, boxed = lsd_score("At Haeundae beach with friends", ["Haeundae beach"])
    assert not boxed and 0 < f1 < 1
    assert itr_score("Paprika! That's Seoyeon.", ["paprika"]) and not itr_score("paprikas", ["paprika"])
    assert itr_score("velvet comet!", ["velvet-comet"])
    assert lar_lexical_correct("You were baking some cinnamon rolls.", ["baking cinnamon rolls"])
    assert not lar_lexical_correct("You were baking bread.", ["baking cinnamon rolls"])
    assert parse_verdict("\\boxed{Correct}") and not parse_verdict("\\boxed{Wrong}")
    assert not parse_verdict("Correct") and not parse_verdict("\\boxed{Incorrect}")


# -- end to end on a small synthetic set -------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evsynth") / "data"
    synthesize(SynthConfig(n_concepts=14, n_train=0, n_test=6, context_size=3, max_present=2, image_size=48,
                           similarity="attributes", type_mix=(1, 0, 0), test_fraction=0.5, n_downstream=2),
               out, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_engine():
    from covip.sdk.engines import make_engine

    engine = make_engine("tiny", device="cpu")
    yield engine
    engine.close()


class Counting:
    """Wraps an engine and counts generate() calls."""

    def __init__(self, engine) -> None:
        self.engine, self.calls = engine, 0
        self.model_id, self.meaningless = engine.model_id, engine.meaningless

    def generate(self, messages, config=None, **kw):
        self.calls += 1
        return self.engine.generate(messages, config, **kw)


def test_synth_writes_downstream_files(synth: Path) -> None:
    for task in ("lsd", "lar", "itr"):
        samples = load_downstream(synth / f"downstream_{task}.jsonl", task)
        assert len(samples) == 2 and all(Path(p).is_file() for s in samples for p in (*s.context_images,
                                                                                        s.query_image))
    world = {c["id"]: c for c in json.loads((synth / "concepts.json").read_text())}
    lsd, lar, itr = (load_downstream(synth / f"downstream_{t}.jsonl", t) for t in ("lsd", "lar", "itr"))
    for a, b, c in zip(lsd, lar, itr):
        facts = world[a.meta["target_concept_id"]]["facts"]
        assert a.answer == facts["place"] and b.answer == facts["action"]
        j = c.meta["target_index"]
        assert c.answer in c.dialogues[j] and c.dialogues[:j] == a.dialogues[:j]
        assert c.query_image == a.query_image and world[a.meta["target_concept_id"]]["split"] == "test"


def test_capeval_end_to_end_tiny_model(synth: Path, tiny_engine, tmp_path: Path) -> None:
    out = tmp_path / "run"
    engine = Counting(tiny_engine)
    res = run_capeval(synth / "test.jsonl", model=engine, judge="lexical", out=out, max_new_tokens=6, limit=4,
                      no_vision=True, progress=False)
    assert engine.calls == 8  # 4 samples, with and without vision
    for name in ("capeval.json", "capeval.png", "captions.jsonl", "captions_no_vision.jsonl", "judgments.jsonl",
                 "judgments_no_vision.jsonl"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "capeval.json").read_text())
    assert report["n_samples"] == 4 and report["no_vision_check"]["verdict"] in ("pass", "fail", "inconclusive")
    for run in report["scores"].values():
        for bucket in run.values():
            for key in ("acc_pos", "acc_neg"):
                assert bucket[key] is None or 0.0 <= bucket[key] <= 1.0
    assert report["scores"]["vision"]["overall"]["n_pos"] + report["scores"]["vision"]["overall"]["n_neg"] == \
        len((out / "judgments.jsonl").read_text().splitlines()) == report["n_questions"]
    assert "Acc+" in res.table() and "no vision" in res.table()
    # resume: the 4 captions are kept, only the 2 new samples are captioned
    again = Counting(tiny_engine)
    run_capeval(synth / "test.jsonl", model=again, judge="lexical", out=out, max_new_tokens=6, limit=6,
                progress=False)
    assert again.calls == 2 and len((out / "captions.jsonl").read_text().splitlines()) == 6
    with pytest.raises(InputError, match="max_new_tokens"):  # a store made with other settings is refused
        run_capeval(synth / "test.jsonl", model=again, judge="lexical", out=out, max_new_tokens=7, limit=1,
                    progress=False)


def test_no_vision_prompt_drops_only_the_query_image(synth: Path) -> None:
    sample = load_items(synth / "test.jsonl")[0].sample
    full, blind = caption_messages_for(sample), caption_messages_for(sample, vision=False)
    images = [[p for p in m[0]["content"] if p["type"] == "image"] for m in (full, blind)]
    assert len(images[0]) == sample.n_context + 1 and len(images[1]) == sample.n_context
    assert [p["image"] for p in images[1]] == list(sample.context_images)
    texts = [[p["text"] for p in m[0]["content"] if p["type"] == "text"] for m in (full, blind)]
    assert texts[0] == texts[1]


class OracleJudge(Judge):
    """Answers D to everything, counting the prompts it actually generates for."""

    model_id = "oracle-judge"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.generated = 0

    def _generate(self, prompts, seeds):
        self.generated += len(prompts)
        return ["\\boxed{D}"] * len(prompts)


def test_judge_cache_is_reused_on_rerun(synth: Path, tmp_path: Path) -> None:
    items = load_items(synth / "test.jsonl")
    caps = tmp_path / "caps.jsonl"
    caps.write_text("".join(json.dumps({"id": it.id, "caption": "a photo"}) + "\n" for it in items))
    n = sum(len(it.pos_qas) + len(it.neg_qas) for it in items)
    first = OracleJudge(cache_path=tmp_path / "cache.sqlite")
    run_capeval(synth / "test.jsonl", captions=caps, judge=first, out=tmp_path / "o", progress=False, judge_batch=5)
    second = OracleJudge(cache_path=tmp_path / "cache.sqlite")
    res = run_capeval(synth / "test.jsonl", captions=caps, judge=second, out=tmp_path / "o", progress=False)
    assert first.generated == n and second.generated == 0 and second.stats.cache_hits == n
    assert res.scores["vision"]["overall"].acc_pos == 0.0 and res.scores["vision"]["overall"].acc_neg == 1.0


def test_model_judges_get_a_cache_in_the_output_folder(monkeypatch, tmp_path: Path) -> None:
    import covip.training.judges as judges
    from covip.training.eval.capeval import _make_judge

    seen = {}
    monkeypatch.setattr(judges, "make_judge", lambda spec, **kw: seen.update(spec=spec, **kw) or OracleJudge())
    _make_judge("http://127.0.0.1:9/v1", tmp_path, {"concurrency": 4}, True)
    assert seen == {"spec": "http://127.0.0.1:9/v1", "concurrency": 4,
                    "cache_path": str(tmp_path / "judge_cache.sqlite")}


def test_oracle_captions_score_high_and_the_text_only_shortcut_fails_acc_neg(synth: Path, tmp_path: Path) -> None:
    items = load_items(synth / "test.jsonl")
    good, dump = tmp_path / "good.jsonl", tmp_path / "dump.jsonl"
    good.write_text("".join(json.dumps({"id": it.id, "caption": " ".join(
        it.sample.dialogues[j] for j in it.present)}) + "\n" for it in items))
    dump.write_text("".join(json.dumps({"id": it.id, "caption": " ".join(it.sample.dialogues)}) + "\n"
                            for it in items))
    g = run_capeval(synth / "test.jsonl", captions=good, judge="lexical", out=tmp_path / "g", progress=False)
    d = run_capeval(synth / "test.jsonl", captions=dump, judge="lexical", out=tmp_path / "d", progress=False)
    assert g.scores["vision"]["1"].acc_pos == 1.0
    assert g.scores["vision"]["overall"].acc_pos >= 0.7 and g.scores["vision"]["overall"].acc_neg >= 0.7
    assert d.scores["vision"]["overall"].acc_neg <= 0.3  # every memory dumped: absent concepts get answered


class ScriptedEngine:
    """Answers each query image with a scripted reply; records the chats it was given."""

    model_id, meaningless = "scripted", False

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies, self.chats = replies, []

    def generate(self, messages, config=None, **kw):
        self.chats.append(messages)
        user = next(m for m in messages if m["role"] == "user")
        query = [p["image"] for p in user["content"] if p["type"] == "image"][-1]
        return Generation(text=self.replies[str(query)], prompt_tokens=1, completion_tokens=1)


@pytest.mark.parametrize("task", ["lsd", "lar", "itr"])
def test_downstream_scores_a_perfect_answerer_1_in_both_modes(synth: Path, tmp_path: Path, task: str) -> None:
    samples = load_downstream(synth / f"downstream_{task}.jsonl", task)
    reply = {"lsd": "\\boxed{{{}}}", "lar": "You were {} that day.", "itr": "{}! I see them."}[task]
    engine = ScriptedEngine({s.query_image: reply.format(s.answer) for s in samples})
    res = run_downstream(task, synth / f"downstream_{task}.jsonl", model=engine, judge="lexical",
                         modes=("cag", "no_cag"), out=tmp_path, progress=False, protocol="strict")
    assert res.scores == {m: {"score": 1.0, "n": 2, **({"boxed_rate": 1.0} if task == "lsd" else {})}
                          for m in ("cag", "no_cag")}
    assert len(engine.chats) == 2 * 3  # per sample: caption + answer (CAG), one direct answer
    cag_answer = next(c for c in engine.chats if len(c) == 3)
    assert [m["role"] for m in cag_answer] == ["user", "assistant", "user"]
    assert cag_answer[2]["content"] == samples[0].question


@pytest.mark.parametrize("task", ["lsd", "lar", "itr"])
def test_downstream_end_to_end_tiny_model(synth: Path, tiny_engine, tmp_path: Path, task: str) -> None:
    group = click.Group("covip")
    register(group)
    args = ["eval", "downstream", "--task", task, "--data", str(synth / f"downstream_{task}.jsonl"), "--model",
            "tiny", "--judge", "lexical", "--out", str(tmp_path), "--max-new-tokens", "4", "--answer-tokens", "4",
            "--no-progress", "--json"]
    import covip.sdk.engines.factory as factory

    with pytest.MonkeyPatch.context() as mp:  # reuse the module's engine (building one per test is slow)
        mp.setattr(factory, "make_engine", lambda spec, **kw: tiny_engine)
        mp.setattr(tiny_engine, "close", lambda: None)
        both = CliRunner().invoke(group, [*args, "--both"])
        assert both.exit_code == 0, both.output
        report = json.loads(both.output)
        assert set(report["scores"]) == {"cag", "no_cag"} and report["cag_minus_no_cag"] is not None
        assert all(0.0 <= v["score"] <= 1.0 and v["n"] == 2 for v in report["scores"].values())
        only = CliRunner().invoke(group, [*args, "--no-cag"])  # resumes: the direct answers are already there
        assert only.exit_code == 0, only.output
        assert json.loads(only.output)["modes"] == ["no_cag"]
    for name in (f"downstream_{task}.json", f"downstream_{task}.png", f"answers_{task}.jsonl", f"scored_{task}.jsonl"):
        assert (tmp_path / name).stat().st_size > 0


def test_cli_capeval_and_lar_needs_a_judge(synth: Path, official, tmp_path: Path) -> None:
    group = click.Group("covip")
    register(group)
    res = CliRunner().invoke(group, ["eval", "capeval", "--test", str(official["capeval"]), "--captions",
                                     str(official["captions"]), "--judge", "lexical", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "overall" in res.output and "40.0" in res.output
    res = CliRunner().invoke(group, ["eval", "downstream", "--task", "lar", "--data",
                                     str(synth / "downstream_lar.jsonl"), "--model", "x", "--out", str(tmp_path)])
    assert isinstance(res.exception, InputError) and "judge" in str(res.exception)


def test_jsonl_store_drops_a_torn_line_and_parse_options(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store = JsonlStore(path, expect={"model": "m"})
    store.add({"id": "a", "model": "m", "caption": "x"})
    with path.open("a") as fh:
        fh.write('{"id": "b", "mod')  # a crash mid-write
    again = JsonlStore(path, expect={"model": "m"})
    assert "a" in again and "b" not in again and len(path.read_text().splitlines()) == 1
    with pytest.raises(InputError, match="model"):
        JsonlStore(path, expect={"model": "other"})
    assert parse_options(["device=cuda", "n-ctx=4096", "seed=null"]) == {"device": "cuda", "n_ctx": 4096,
                                                                           "seed": None}
    with pytest.raises(InputError):
        parse_options(["nothing"])
