"""covip.training.data: the sample schema, the authors' formats, and the offline synthetic generator."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covip.sdk.errors import DataError, InputError
from covip.training.data import (
    MCQA,
    Sample,
    SynthConfig,
    concept_similarity,
    load_capeval,
    load_testset_jsonl,
    load_training_json,
    read_jsonl,
    synthesize,
    write_jsonl,
)
from covip.training.data.cli import register
from covip.training.data.world import Look

D_TEXT = "The answer cannot be determined"


def qa(qid: str, question: str, a: str, b: str, c: str, correct: str) -> dict:
    return {"id": qid, "question": question, "options": {"A": a, "B": b, "C": c, "D": D_TEXT},
            "correct_answer": correct}


def concept_qas(name: str) -> list[dict]:
    return [qa("Q1", f"Where did the user take {name}?", "The park", "The beach", "The zoo", "A"),
            qa("Q2", f"When did the user meet {name}?", "Last summer", "Last winter", "Last fall", "B"),
            qa("Q3", f"What does {name} like?", "Naps", "Kites", "Boats", "C")]


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (40 * i, 10, 10)).save(root / f"i{i}.png")
    return root


def training_records() -> list[dict]:
    """A small file in the authors' training layout: one record of each accu_reward_method."""
    return [
        {"images": ["i0.png", "i1.png", "i2.png", "i4.png"], "accu_reward_method": "caption", "c_num": 3,
         "dialogues": ["User: This is Seth.", "User: This is Judy.", "User: This is Frank."],
         "pos_qas": [concept_qas("Seth")], "neg_qas": concept_qas("Judy") + concept_qas("Frank")},
        {"images": ["i0.png", "i1.png", "i2.png", "i4.png"], "accu_reward_method": "multi_vision", "c_num": 3,
         "answer": "[0, 2]"},
        {"images": ["i3.png", "i4.png"], "accu_reward_method": "vision", "answer": "Yes."},
    ]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# -- the authors' formats ------------------------------------------------------------------------------
def test_training_json_maps_every_method(tmp_path: Path, image_dir: Path) -> None:
    path = write_json(tmp_path / "train.json", training_records())
    cap, rec, ver = load_training_json(path, image_root=image_dir)
    assert (cap.sample_type, rec.sample_type, ver.sample_type) == ("caption", "recognition", "verification")
    assert cap.id == "train-0" and cap.query_image == str(image_dir / "i4.png") and cap.n_context == 3
    assert cap.present is None  # the training file does not record which concepts are present
    assert [q.correct for q in cap.pos_qas] == ["A", "B", "C"]
    assert {q.correct for q in cap.neg_qas} == {"D"}
    assert [q.fact_answer for q in cap.neg_qas] == ["A", "B", "C"] * 2
    assert rec.answer == (0, 2) and rec.present == (0, 2)
    assert ver.answer == "yes" and ver.present == (0,)


def test_training_json_with_gts_names_concepts_and_round_trips(tmp_path: Path, image_dir: Path) -> None:
    from covip.training.data import sample_to_training_record

    records = training_records()
    records[0]["gts"] = [1]
    records[0]["id"] = "cap-1"
    (cap, *_rest) = load_training_json(write_json(tmp_path / "t.jsonl.json", records), image_root=image_dir)
    assert cap.id == "cap-1" and cap.present == (1,) and {q.concept_index for q in cap.pos_qas} == {1}
    assert [q.concept_index for q in cap.neg_qas] == [0, 0, 0, 2, 2, 2]
    back = sample_to_training_record(cap)
    assert back["pos_qas"] == records[0]["pos_qas"] and back["neg_qas"] == records[0]["neg_qas"]
    assert back["gts"] == [1] and back["accu_reward_method"] == "caption"


def capeval_fixture() -> dict:
    return {"sample_0": {"qas": {f"concept_{j}": {"qa": concept_qas(n)} for j, n in enumerate(["Seth", "Judy", "Ann"])},
                         "gts": [0, 2]},
            "sample_1": {"qas": {f"concept_{j}": {"qa": concept_qas(n)} for j, n in enumerate(["Bo", "Kim"])},
                         "gts": [1]}}


def test_capeval_and_testset_jsonl(tmp_path: Path, image_dir: Path) -> None:
    cap_path = write_json(tmp_path / "QAS_GT_test.json", capeval_fixture())
    entries = load_capeval(cap_path)
    assert list(entries) == ["sample_0", "sample_1"]
    e0 = entries["sample_0"]
    assert e0.gts == (0, 2) and len(e0.pos_qas()) == 6 and len(e0.neg_qas()) == 3
    assert {q.correct for q in e0.neg_qas()} == {"D"} and {q.concept_index for q in e0.neg_qas()} == {1}
    assert e0.to_official() == capeval_fixture()["sample_0"]
    lines = [{"imgs": "i4.png", "concepts": ["i0.png", "i1.png", "i2.png"],
              "dialogues": {"Seth": "User: Seth.", "Judy": "User: Judy.", "Ann": "User: Ann."}},
             {"imgs": "/i3.png", "concepts": ["i0.png", "i1.png"], "dialogues": ["User: Bo.", "User: Kim."]}]
    ts = tmp_path / "meta_test.jsonl"
    ts.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    s0, s1 = load_testset_jsonl(ts, image_root=image_dir, capeval=cap_path)
    assert (s0.id, s1.id) == ("sample_0", "sample_1")
    assert s0.present == (0, 2) and s0.dialogues[1] == "User: Judy." and s0.meta["dialogue_keys"][0] == "Seth"
    assert s1.query_image == str(image_dir / "i3.png")  # '/i3.png' joined to the root, as prefix + path
    assert s1.present == (1,) and len(s1.pos_qas) == 3 and len(s1.neg_qas) == 3
    (bare,) = load_testset_jsonl(ts, image_root=image_dir)[:1]
    assert bare.present is None and not bare.is_labelled


def _mutate(records: list[dict], index: int, path: tuple, value) -> list[dict]:
    out = copy.deepcopy(records)
    target = out[index]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


@pytest.mark.parametrize(("index", "path", "value", "field"), [
    (0, ("accu_reward_method",), "captions", "accu_reward_method"),
    (0, ("c_num",), 2, "images"),
    (0, ("pos_qas", 0, 1, "correct_answer"), "E", "pos_qas[0][1].correct_answer"),
    (0, ("pos_qas", 0, 0, "options", "D"), "Maple trees", "pos_qas[0][0].options.D"),
    (0, ("neg_qas", 4, "options", "B"), "last SUMMER", "neg_qas[4].options"),
    (0, ("dialogues",), ["only one"], "dialogues"),
    (1, ("answer",), "[0, 7]", "answer"),
    (2, ("answer",), "maybe", "answer"),
])
def test_bad_fields_name_the_field_and_sample(tmp_path, image_dir, index, path, value, field) -> None:
    bad = _mutate(training_records(), index, path, value)
    with pytest.raises(DataError) as info:
        load_training_json(write_json(tmp_path / "bad.json", bad), image_root=image_dir)
    assert info.value.sample_id == f"bad-{index}" and info.value.field == field
    assert f"'bad-{index}'" in str(info.value) and field in str(info.value)
    assert isinstance(info.value, InputError)


def test_bad_capeval_and_schema_fields(tmp_path: Path) -> None:
    data = capeval_fixture()
    data["sample_1"]["gts"] = [5]
    with pytest.raises(DataError, match=r"sample 'sample_1': field 'gts'"):
        load_capeval(write_json(tmp_path / "c.json", data))
    good = Sample(id="s1", sample_type="recognition", images=["a.png", "b.png", "q.png"], answer=[1])
    record = good.to_dict() | {"colour": "red"}
    with pytest.raises(DataError, match=r"sample 's1': field 'colour'"):
        Sample.from_dict(record)
    record = good.to_dict() | {"present": [0]}
    with pytest.raises(DataError, match=r"sample 's1': field 'present'"):
        Sample.from_dict(record)
    with pytest.raises(DataError, match=r"sample 's2': field 'neg_qas\[0\].correct'"):
        Sample(id="s2", sample_type="caption", images=["a.png", "q.png"], dialogues=["hi"], present=[],
               neg_qas=[MCQA("Q1", "Where?", {"A": "x", "B": "y", "C": "z", "D": D_TEXT}, "A", 0, "A")])
    path = tmp_path / "s.jsonl"
    write_jsonl(path, [good])
    path.write_text(path.read_text() + json.dumps(good.to_dict() | {"id": "s3", "sample_type": "nope"}) + "\n")
    with pytest.raises(DataError, match=r":2: sample 's3': field 'sample_type'"):
        read_jsonl(path)


def test_missing_image_names_the_sample(tmp_path: Path, image_dir: Path) -> None:
    records = _mutate(training_records(), 2, ("images",), ["i3.png", "gone.png"])
    path = write_json(tmp_path / "m.json", records)
    with pytest.raises(DataError, match=r"sample 'm-2': field 'images\[1\]': image 'gone.png' not found") as info:
        load_training_json(path, image_root=image_dir)
    assert info.value.sample_id == "m-2"
    kept = load_training_json(path, image_root=image_dir, on_error="skip")
    assert [s.id for s in kept] == ["m-0", "m-1"]
    assert len(load_training_json(path, image_root=image_dir, check_images=False)) == 3


# -- the synthetic generator ----------------------------------------------------------------------------
CONFIG = SynthConfig(n_concepts=20, n_train=16, n_test=12, image_size=48, seed=3)


@pytest.fixture(scope="module")
def synth_dirs(tmp_path_factory, tiny_embedder) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("synth")
    a, b = base / "a", base / "b"
    synthesize(CONFIG, a, embedder=tiny_embedder, progress=False)
    synthesize(CONFIG, b, embedder=tiny_embedder, progress=False)
    return a, b


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_is_deterministic(synth_dirs) -> None:
    a, b = _files(synth_dirs[0]), _files(synth_dirs[1])
    assert a.keys() == b.keys() and a == b
    assert sum(k.endswith(".png") for k in a) == CONFIG.n_concepts + CONFIG.n_train + CONFIG.n_test


def _load(root: Path) -> dict[str, list[Sample]]:
    return {s: read_jsonl(root / f"{s}.jsonl", image_root=root, check_images=True) for s in ("train", "test")}


def test_synth_splits_types_and_present_indices(synth_dirs) -> None:
    root = synth_dirs[0]
    samples = _load(root)
    assert (len(samples["train"]), len(samples["test"])) == (CONFIG.n_train, CONFIG.n_test)
    used = {split: {c for s in ss for c in (*s.meta["concept_ids"], *s.meta["query_concept_ids"])}
            for split, ss in samples.items()}
    assert used["train"] and used["test"] and not used["train"] & used["test"]
    world = json.loads((root / "concepts.json").read_text())
    assert {c["id"] for c in world if c["split"] == "test"} >= used["test"]
    for s in samples["train"] + samples["test"]:
        assert {s.sample_type for s in samples["train"]} == {"caption", "recognition", "verification"}
        if s.sample_type == "verification":
            assert s.answer in ("yes", "no")
            assert (s.meta["concept_ids"][0] in s.meta["query_concept_ids"]) == (s.answer == "yes")
            continue
        assert 1 <= len(s.present) <= CONFIG.max_present and s.n_context == CONFIG.context_size
        assert all(0 <= i < s.n_context for i in s.present)
        assert {s.meta["concept_ids"][i] for i in s.present} == set(s.meta["query_concept_ids"])
        if s.sample_type == "recognition":
            assert s.answer == s.present


def test_synth_questions_are_answerable_from_their_dialogue(synth_dirs) -> None:
    samples = [s for ss in _load(synth_dirs[0]).values() for s in ss if s.sample_type == "caption"]
    assert samples
    for s in samples:
        assert len(s.pos_qas) == 3 * len(s.present)
        assert len(s.neg_qas) == 3 * (s.n_context - len(s.present))
        assert {q.correct for q in s.neg_qas} == {"D"}
        assert all(q.options["D"] == D_TEXT for q in (*s.pos_qas, *s.neg_qas))
        for q in (*s.pos_qas, *s.neg_qas):
            dialogue = s.dialogues[q.concept_index].lower()
            assert s.concept_names[q.concept_index] in q.question
            assert q.fact_text.lower() in dialogue, (s.id, q)
            wrong = [q.options[k] for k in "ABC" if q.options[k] != q.fact_text]
            assert len(wrong) == 2 and not any(w.lower() in dialogue for w in wrong), (s.id, q)


def test_synth_distractors_are_more_similar_than_random(synth_dirs, tiny_embedder) -> None:
    root = synth_dirs[0]
    world = json.loads((root / "concepts.json").read_text())
    index = {c["id"]: i for i, c in enumerate(world)}
    sim = concept_similarity([Look(**c["look"]) for c in world], measure="clip", embedder=tiny_embedder,
                             image_size=CONFIG.image_size)
    chosen, random_ = [], []
    for split, samples in _load(root).items():
        members = [index[c["id"]] for c in world if c["split"] == split]
        for s in samples:
            if s.sample_type == "verification":
                continue
            present = [index[c] for c in s.meta["query_concept_ids"]]
            distractors = [index[c] for c in s.meta["concept_ids"] if index[c] not in present]
            if not distractors:
                continue
            score = {c: max(sim[c, p] for p in present) for c in members if c not in present}
            chosen.append(np.mean([score[c] for c in distractors]))
            random_.append(np.mean(list(score.values())))
    assert len(chosen) >= 5
    assert np.mean(chosen) > np.mean(random_) + 0.05


def test_synth_capeval_and_official_files_round_trip(synth_dirs) -> None:
    root = synth_dirs[0]
    samples = _load(root)
    captions = [s for s in samples["test"] if s.sample_type == "caption"]
    entries = load_capeval(root / "capeval_test.json")
    assert list(entries) == [s.id for s in captions]
    for s in captions:
        e = entries[s.id]
        assert e.gts == s.present and len(e.qas) == s.n_context
        assert e.pos_qas() == list(s.pos_qas) and e.neg_qas() == list(s.neg_qas)
    loaded = load_testset_jsonl(root / "testset.jsonl", capeval=entries)
    for got, want in zip(loaded, captions, strict=True):
        assert (got.id, got.images, got.dialogues, got.present) == (want.id, want.images, want.dialogues,
                                                                     want.present)
        assert (got.pos_qas, got.neg_qas) == (want.pos_qas, want.neg_qas)
    official = load_training_json(root / "train_official.json")
    for got, want in zip(official, samples["train"], strict=True):
        assert (got.id, got.sample_type, got.images, got.answer, got.present) == (
            want.id, want.sample_type, want.images, want.answer, want.present)
        assert (got.pos_qas, got.neg_qas) == (want.pos_qas, want.neg_qas)


def test_synth_config_is_validated() -> None:
    with pytest.raises(InputError, match="max_present"):
        SynthConfig(max_present=6, context_size=5)
    with pytest.raises(InputError, match="test split"):
        SynthConfig(n_concepts=10, context_size=5)


def test_cli_data_synth_writes_the_files(tmp_path: Path) -> None:
    group = click.Group("covip")
    register(group)
    out = tmp_path / "out"
    args = ["data", "synth", "--out", str(out), "--seed", "1", "--n-concepts", "20", "--n-train", "6",
            "--n-test", "6", "--image-size", "40", "--similarity", "attributes", "--no-progress"]
    result = CliRunner().invoke(group, args)
    assert result.exit_code == 0, result.output
    assert "distractor similarity (attributes)" in result.output
    for name in ("train.jsonl", "test.jsonl", "capeval_test.json", "testset.jsonl", "train_official.json",
                 "concepts.json", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 1 and manifest["mean_distractor_similarity"] > manifest[
        "mean_random_similarity"]
    again = CliRunner().invoke(group, args)
    assert isinstance(again.exception, InputError) and "not empty" in str(again.exception)
    assert CliRunner().invoke(group, [*args, "--force", "--json"]).exit_code == 0
    checked = CliRunner().invoke(group, ["data", "check", str(out / "train.jsonl")])
    assert checked.exit_code == 0 and "6 valid samples (samples)" in checked.output, checked.output
    checked = CliRunner().invoke(group, ["data", "check", str(out / "capeval_test.json")])
    assert checked.exit_code == 0 and "CapEval samples" in checked.output, checked.output
