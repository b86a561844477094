"""The paper protocol of ``covip eval`` (the authors' judge parsing, downstream scoring, CAG layout), the
scoring-only modes, the authors' hub datasets and caption formats.

Expected values come from the authors' rules (oyt9306/CoViP ``evaluation/`` and ``downstream/``) applied by
hand to hand-written judge outputs and answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from PIL import Image

from covip.sdk import prompts
from covip.sdk.errors import DataError, InputError
from covip.training.data import SynthConfig, synthesize
from covip.training.data.downstream import PAPER_QUESTIONS, load_downstream
from covip.training.eval.capeval import load_items, read_captions, run_capeval
from covip.training.eval.cli import register
from covip.training.eval.downstream import read_answers, run_downstream
from covip.training.eval.protocols import (
    check_protocol,
    paper_itr_score,
    paper_judge_box,
    paper_lar_correct,
    paper_lsd_extract,
    paper_lsd_f1,
    paper_lsd_score,
)
from covip.training.eval.scoring import parser_disagreement, question_record, score_records
from covip.training.judges import Judge
from tests.training.test_eval import ScriptedEngine


# -- CapEval judge parsing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("output", "box", "pos_a", "neg"), [
    ("\\boxed{A}", "A", True, False),
    ("Reasoning first. Answer: \\boxed{A or D}", "A or D", True, True),  # a hedge counts for both
    ("\\boxed{A or B}", "A or B", True, False),
    ("The answer is A", "D", False, True),  # no box: D
    ("", "D", False, True),
    ("\\boxed{", "D", False, True),
    ("\\boxed{}", "", False, False),  # an empty box is not D
    ("\\boxed{a}", "a", False, False),  # case-sensitive
    ("first \\boxed{C} then \\boxed{A}", "C", False, False),  # the first box
    ("\\boxed{\\text{A}}", "\\text{A", True, False),  # up to the first closing brace
    ("\\boxed{Cannot be determined}", "Cannot be determined", False, False),
])
def test_paper_judge_parser_follows_the_authors(output: str, box: str, pos_a: bool, neg: bool) -> None:
    assert paper_judge_box(output) == box
    pos = question_record("s", "q", polarity="pos", n_present=1, correct="A", judge_output=output)
    negative = question_record("s", "q", polarity="neg", n_present=1, correct="B", judge_output=output)
    assert pos.protocol == "paper" and (pos.right, negative.right) == (pos_a, neg)


def test_parsers_disagree_on_hedges_and_are_counted() -> None:
    outputs = ["\\boxed{A}", "\\boxed{A or D}", "no box", "\\boxed{}"]
    recs = [question_record("s", f"q{i}", polarity="pos", n_present=2, correct="A", judge_output=o)
            for i, o in enumerate(outputs)]
    recs += [question_record("s", f"n{i}", polarity="neg", n_present=2, correct="A", judge_output=o)
             for i, o in enumerate(outputs)]
    # strict: pos right only for "\boxed{A}"; neg right for the hedge (read as D), "no box" and "\boxed{}"
    # paper: pos right for "\boxed{A}" and the hedge; neg right for the hedge and "no box"
    assert [r.right_strict for r in recs] == [True, False, False, False, False, True, True, True]
    assert [r.right_paper for r in recs] == [True, True, False, False, False, True, True, False]
    assert parser_disagreement(recs) == {"questions": 8, "disagree": 2, "share": 0.25, "right_only_under_paper": 1,
                                         "right_only_under_strict": 1}
    paper = score_records(recs)["2"]
    assert (paper.acc_pos, paper.acc_neg) == (0.5, 0.5)
    with pytest.raises(InputError, match="protocol"):
        check_protocol("vibes")


# -- downstream rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("answer", "place"), [
    ("I think so. //boxed{Han river park}", "Han river park"),
    ("//boxed{first} and later //boxed{ second }", "second"),  # the last box
    ("Maybe \\boxed{Han river}", ""),  # a LaTeX box is not read
    ("The place is // Han river park", "Han river park"),  # after the last //
    ("Han river park // ", "Han river park"),  # the last piece empty: the one before
    ("plain text only", ""),
])
def test_paper_lsd_extraction(answer: str, place: str) -> None:
    assert paper_lsd_extract(answer) == place


def test_paper_lsd_f1_is_over_lowercased_whitespace_token_sets() -> None:
    assert paper_lsd_f1("Han River park", "the han river park") == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    assert paper_lsd_f1("park,", "park") == 0.0  # punctuation stays: "park," is not "park"
    assert paper_lsd_f1("park, park", "park") == pytest.approx(2 / 3)
    assert paper_lsd_f1("park park", "park") == 1.0  # sets: repeats do not count
    assert paper_lsd_f1("", "") == 1.0 and paper_lsd_f1("", "park") == 0.0
    assert paper_lsd_score("//boxed{han river}", ["Han river park", "han river"]) == (1.0, True)
    assert paper_lsd_score("\\boxed{han river}", ["han river"]) == (0.0, False)


def test_paper_lar_and_itr_rules() -> None:
    assert paper_lar_correct("Correct") and paper_lar_correct("**correct**")
    assert paper_lar_correct("Incorrect")  # the authors' substring test counts it
    assert not paper_lar_correct("Wrong") and not paper_lar_correct(None)
    assert paper_itr_score("Look, SKS is here!", ["SKS"])
    assert not paper_itr_score("look, sks is here", ["SKS"])  # case-sensitive
    assert paper_itr_score("SKSdog", ["SKS"])  # a substring, not a word


# -- CapEval end to end: protocol, judge prompt and settings, disagreement --------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("protosynth") / "data"
    synthesize(SynthConfig(n_concepts=14, n_train=0, n_test=6, context_size=3, max_present=2, image_size=48,
                           similarity="attributes", type_mix=(1, 0, 0), test_fraction=0.5, n_downstream=2),
               out, progress=False)
    return out


class HedgingJudge(Judge):
    """Reasons, then boxes 'A or D' for every question; records the chats it was given."""

    model_id = "hedging-judge"

    def __init__(self) -> None:
        super().__init__()
        self.chats: list = []

    def _generate(self, prompts_, seeds):
        self.chats += prompts_
        return ["The description mentions it, I think.\nAnswer: \\boxed{A or D}"] * len(prompts_)

    def sampling_params(self):
        return {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 4096}


def test_capeval_paper_protocol_asks_and_scores_as_the_authors(synth: Path, tmp_path: Path) -> None:
    items = load_items(synth / "test.jsonl")
    caps = tmp_path / "caps.json"  # the authors' Gemini layout
    caps.write_text(json.dumps({it.id: {"caption": "a photo"} for it in items}))
    results = {}
    for protocol in ("paper", "strict"):
        judge = HedgingJudge()
        results[protocol] = run_capeval(synth / "test.jsonl", captions=caps, judge=judge, out=tmp_path / protocol,
                                        progress=False, protocol=protocol)
        roles = {tuple(m["role"] for m in chat) for chat in judge.chats}
        assert roles == ({("user",)} if protocol == "paper" else {("system", "user")})
        assert ("Think it over" in judge.chats[0][-1]["content"]) == (protocol == "paper")
    paper, strict = results["paper"], results["strict"]
    pos_a = sum(qa.correct == "A" for it in items for qa in it.pos_qas) / sum(len(it.pos_qas) for it in items)
    assert paper.scores["vision"]["overall"].acc_pos == pytest.approx(pos_a)  # the hedge holds A
    assert paper.scores["vision"]["overall"].acc_neg == 1.0  # ... and D
    assert strict.scores["vision"]["overall"].acc_pos == 0.0 and strict.scores["vision"]["overall"].acc_neg == 1.0
    report = paper.report
    assert report["protocol"] == "paper" and report["judge_sampling"]["max_tokens"] == 4096
    n = report["n_questions"]
    n_pos_a = round(pos_a * sum(len(it.pos_qas) for it in items))
    assert report["parser_disagreement"]["vision"] == {
        "questions": n, "disagree": n_pos_a, "share": round(n_pos_a / n, 6), "right_only_under_paper": n_pos_a,
        "right_only_under_strict": 0}
    audit = [json.loads(x) for x in Path(paper.files["judgments"]).read_text().splitlines()]
    assert {"right", "right_strict", "right_paper", "protocol"} <= set(audit[0])


def test_a_prompt_pack_words_the_judge_and_is_recorded(synth: Path, tmp_path: Path) -> None:
    items = load_items(synth / "test.jsonl")
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({it.id: "a photo" for it in items}))
    pack = tmp_path / "authors.toml"
    pack.write_text('judge_paper_user = "Caption: {caption} | {question} | {options} | box one letter"\n')
    judge = HedgingJudge()
    res = run_capeval(synth / "test.jsonl", captions=caps, judge=judge, out=tmp_path / "o", progress=False,
                      prompt_pack=pack)
    assert judge.chats[0][0]["content"].startswith("Caption: a photo | ")
    loaded = prompts.load_pack(pack)
    assert res.report["prompt_pack"] == {"name": "authors", "hash": loaded.hash, "tag": loaded.tag()}
    assert res.report["prompt_version"] == loaded.tag() != prompts.PROMPT_VERSION


def test_paper_protocol_gives_model_judges_room_to_reason(monkeypatch, tmp_path: Path) -> None:
    import covip.training.judges as judges
    from covip.training.eval.capeval import _make_judge

    seen: dict = {}
    monkeypatch.setattr(judges, "make_judge", lambda spec, **kw: seen.update(kw) or HedgingJudge())
    _make_judge("http://127.0.0.1:9/v1", tmp_path, {}, False, "paper")
    assert seen == {"max_tokens": 4096}
    seen.clear()
    _make_judge("http://127.0.0.1:9/v1", tmp_path, {"max_tokens": 300}, False, "paper")  # the user's wins
    assert seen == {"max_tokens": 300}
    seen.clear()
    _make_judge("http://127.0.0.1:9/v1", tmp_path, {}, False, "strict")
    assert seen == {}


def test_captions_in_the_authors_formats(tmp_path: Path) -> None:
    gemini = tmp_path / "gemini.json"
    gemini.write_text(json.dumps({"sample_0": {"caption": "Bori at the river."}, "sample_1": {"caption": []}}))
    assert read_captions(gemini) == {"sample_0": "Bori at the river.", "sample_1": ""}
    qwen = tmp_path / "qwen.json"
    qwen.write_text(json.dumps({"sample_0": "Bori at the river."}))
    assert read_captions(qwen) == {"sample_0": "Bori at the river."}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sample_0": {"caption": 3}}))
    with pytest.raises(DataError, match="sample_0"):
        read_captions(bad)


# -- downstream: the paper layout, a perfect paper answerer, scoring only ----------------------------------
@pytest.mark.parametrize("task", ["lsd", "lar", "itr"])
def test_paper_layout_and_a_perfect_paper_answerer(synth: Path, tmp_path: Path, task: str) -> None:
    samples = load_downstream(synth / f"downstream_{task}.jsonl", task)
    reply = {"lsd": "Thinking... //boxed{{{}}}", "lar": "You were {} that day.", "itr": "{}! I see them."}[task]
    engine = ScriptedEngine({s.query_image: reply.format(s.last_action or s.answer) for s in samples})
    res = run_downstream(task, synth / f"downstream_{task}.jsonl", model=engine, judge="lexical",
                         modes=("cag", "no_cag"), out=tmp_path, progress=False)
    assert {m: v["score"] for m, v in res.scores.items()} == {"cag": 1.0, "no_cag": 1.0}
    assert res.report["protocol"] == "paper" and res.report["generation"]["answer"]["max_new_tokens"] == 1024
    caption_pass, answer_pass, direct = engine.chats[:3]
    assert [m["role"] for m in caption_pass] == ["user"]
    assert [m["role"] for m in answer_pass] == ["system", "user", "assistant", "user"]
    system = prompts.PERSONALIZATION_PROMPT if task == "itr" else prompts.CAPTION_INSTRUCTION
    assert answer_pass[0]["content"] == system
    texts = "".join(p.get("text", "") for p in answer_pass[1]["content"])
    assert prompts.CAPTION_INSTRUCTION not in texts and "===== New Image =====" in texts
    assert answer_pass[1]["content"][-1]["type"] == "image"  # the query image ends the user turn
    assert answer_pass[3]["content"] == PAPER_QUESTIONS[task]
    assert [m["role"] for m in direct] == (["user"] if task == "lsd" else ["system", "user"])
    assert direct[-1]["content"][-1] == {"type": "text", "text": PAPER_QUESTIONS[task]}


def test_synthetic_lar_records_carry_last_action(synth: Path) -> None:
    for s in load_downstream(synth / "downstream_lar.jsonl", "lar"):
        assert s.last_action and s.last_action == s.answer


def test_scoring_only_reads_three_answer_layouts(synth: Path, tmp_path: Path) -> None:
    data = synth / "downstream_lsd.jsonl"
    samples = load_downstream(data, "lsd")
    right = [f"//boxed{{{s.answer}}}" for s in samples]
    layouts = {
        "list.json": json.dumps(right),
        "map.json": json.dumps({s.id: a for s, a in zip(samples, right)}),
        "rows.jsonl": "".join(json.dumps({"id": s.id, "answer": a, "mode": m}) + "\n"
                              for s, a in zip(samples, right) for m in ("cag", "no_cag")),
    }
    for name, text in layouts.items():
        path = tmp_path / name
        path.write_text(text)
        res = run_downstream("lsd", data, answers=path, out=tmp_path / name.split(".")[0], progress=False)
        assert all(v["score"] == 1.0 for v in res.scores.values())
        assert set(res.scores) == ({"cag", "no_cag"} if name == "rows.jsonl" else {"given"})
        assert res.report["model"] is None and res.report["answers"] == str(path)
    strict = run_downstream("lsd", data, answers=tmp_path / "list.json", out=tmp_path / "s", progress=False,
                            protocol="strict")
    # covip's strict reader finds no \boxed{} and scores the whole answer text ("boxed" among its tokens)
    assert strict.scores["given"]["boxed_rate"] == 0.0 and strict.scores["given"]["score"] < 1.0


@pytest.mark.parametrize(("text", "match"), [
    (json.dumps(["only one"]), "one string per sample"),
    ('{"id": "nope", "answer": "x"}\n', "not in the data file"),
    ('{"id": "lsd-00000", "answer": "x", "mode": "weird"}\n', "mode"),
    ("not json\n", "not valid JSON"),
    ('["a list"]\n{"id": "lsd-00000", "answer": "x"}\n', "not valid JSON objects"),
    ('{"id": "lsd-00000"}\n', "answer"),
])
def test_bad_answer_files_are_refused_with_the_reason(synth: Path, tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_answers(path, load_downstream(synth / "downstream_lsd.jsonl", "lsd"))


def test_cli_scores_answers_without_a_model(synth: Path, tmp_path: Path) -> None:
    group = click.Group("covip")
    register(group)
    samples = load_downstream(synth / "downstream_itr.jsonl", "itr")
    answers = tmp_path / "a.jsonl"
    answers.write_text("".join(json.dumps({"id": s.id, "answer": f"Oh, {s.answer}!"}) + "\n" for s in samples))
    args = ["eval", "downstream", "--task", "itr", "--data", str(synth / "downstream_itr.jsonl"), "--answers",
            str(answers), "--out", str(tmp_path / "o"), "--json"]
    pack = tmp_path / "qs.json"
    pack.write_text(json.dumps({"paper_questions": {"itr": "Who is in the new picture?"}}))
    res = CliRunner().invoke(group, [*args, "--prompt-pack", str(pack)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["scores"] == {"given": {"score": 1.0, "n": len(samples)}} and report["protocol"] == "paper"
    assert report["prompt_pack"]["name"] == "qs"
    scored = [json.loads(x) for x in Path(report["files"]["scored"]).read_text().splitlines()]
    assert {r["question"] for r in scored} == {"Who is in the new picture?"}
    both = CliRunner().invoke(group, [*args[:-1], "--model", "tiny"])
    assert both.exit_code != 0 and "not both" in both.output
    missing = CliRunner().invoke(group, ["eval", "downstream", "--task", "lsd", "--data", str(tmp_path / "nope.jsonl"),
                                         "--answers", str(answers), "--out", str(tmp_path / "x")])
    assert missing.exit_code != 0 and "does not exist" in missing.output


# -- the authors' hub datasets -----------------------------------------------------------------------------
def _hub_folder(root: Path, task: str) -> Path:
    """A dataset folder laid out as the hub stores it (parquet under data/, images inside the rows)."""
    import datasets

    colours = ["red", "green", "blue"]
    rows = {"images_context": [[Image.new("RGB", (32, 32), c) for c in colours]] * 2,
            "dialogues_context": [[f"User: this is {c}." for c in colours]] * 2,
            "query_image": [Image.new("RGB", (32, 32), "green")] * 2,
            "answer": ["the green park", "SKS"], "last_action": ["painting a fence", "baking bread"]}
    features = datasets.Features({"images_context": datasets.Sequence(datasets.Image()),
                                  "dialogues_context": datasets.Sequence(datasets.Value("string")),
                                  "query_image": datasets.Image(), "answer": datasets.Value("string"),
                                  "last_action": datasets.Value("string")})
    folder = root / task
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    return folder


def test_a_downloaded_hub_dataset_is_read(tmp_path: Path) -> None:
    folder = _hub_folder(tmp_path, "lar")
    samples = load_downstream(folder, "lar")
    assert [s.id for s in samples] == ["lar-0", "lar-1"]
    assert samples[0].last_action == "painting a fence" and samples[0].answer == "the green park"
    assert isinstance(samples[0].query_image, Image.Image) and len(samples[0].context_images) == 3
    assert samples[0].meta["source"] == str(folder)
    itr = load_downstream(_hub_folder(tmp_path / "i", "itr"), "itr")
    assert itr[0].meta["placeholder"] == "SKS"
    answers = tmp_path / "a.json"
    answers.write_text(json.dumps(["Look, SKS!", "nothing"]))
    res = run_downstream("itr", tmp_path / "i" / "itr", answers=answers, out=tmp_path / "o", progress=False)
    assert res.scores["given"] == {"score": 0.5, "n": 2}


def test_offline_hub_names_the_download_command(monkeypatch) -> None:
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="huggingface-cli download --repo-type dataset Yeongtak/lsd"):
        load_downstream("hf:Yeongtak/lsd", "lsd")
    with pytest.raises(DataError, match="name a dataset"):
        load_downstream("hf:", "lsd")


# -- loaders: one bad record does not stop an evaluation ---------------------------------------------------
def test_broken_capeval_records_are_skipped_and_counted(synth: Path, tmp_path: Path) -> None:
    data = json.loads((synth / "capeval_test.json").read_text())
    keys = list(data)
    data[keys[0]] = {"qas": "not an object", "gts": [0]}
    data[keys[1]].pop("gts")
    broken = tmp_path / "capeval.json"
    broken.write_text(json.dumps(data))
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({k: "a photo" for k in keys}))
    res = run_capeval(broken, captions=caps, judge="lexical", out=tmp_path / "o", progress=False)
    assert res.report["n_samples"] == len(keys) - 2
    skipped = res.report["skipped_records"]
    assert skipped["count"] == 2 and [e["id"] for e in skipped["examples"]] == keys[:2]
    assert "qas" in skipped["examples"][0]["reason"] and "gts" in skipped["examples"][1]["reason"]
    group = click.Group("covip")
    register(group)
    out = CliRunner().invoke(group, ["eval", "capeval", "--test", str(broken), "--captions", str(caps), "--judge",
                                     "lexical", "--out", str(tmp_path / "c")])
    assert out.exit_code == 0 and "skipped 2 record(s)" in out.output
    assert "parsers disagree on 0 of" in out.output
    nothing = tmp_path / "nothing.json"
    nothing.write_text(json.dumps({keys[0]: data[keys[0]]}))
    with pytest.raises(DataError, match="no caption samples.*1 record.*break the schema"):
        run_capeval(nothing, captions=caps, judge="lexical", out=tmp_path / "n", progress=False)


def test_testset_dialogues_pair_with_concepts_by_position(synth: Path, tmp_path: Path) -> None:
    from covip.training.data.loaders import load_testset_jsonl

    lines = [json.loads(x) for x in (synth / "testset.jsonl").read_text().splitlines()]
    extra = dict(lines[0])
    extra["dialogues"] = {**extra["dialogues"], "extra": "User: an unrelated chat."}
    fewer = dict(lines[1])
    fewer["dialogues"] = dict(list(fewer["dialogues"].items())[:1])
    path = tmp_path / "testset.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [extra, fewer]))
    samples = load_testset_jsonl(path, image_root=synth, capeval=synth / "capeval_test.json", on_error="skip")
    assert len(samples) == 1 and samples[0].meta["extra_dialogues"] == 1
    assert list(samples[0].dialogues) == list(lines[0]["dialogues"].values())
    with pytest.raises(DataError, match="dialogues"):
        load_testset_jsonl(path, image_root=synth, capeval=synth / "capeval_test.json")
