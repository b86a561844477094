"""Attention-pointer supervision (covip.training.sft_pointer): where the pointers of a caption row point, that
the loss trains the supervised heads toward them, and that a model or config it cannot serve is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from covip.sdk.errors import InputError
from covip.training.sft_config import SftConfig

pytest.importorskip("trl")

WORLD = {"n_concepts": 24, "test_fraction": 0.25, "n_train": 24, "n_test": 8, "context_size": 3, "max_present": 2,
         "image_size": 64, "similarity": "attributes", "seed": 3, "type_mix": [1.0, 0.0, 0.0]}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from covip.training.data import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("pointer-world") / "world"
    synthesize(SynthConfig(**WORLD), out, progress=False)
    return out


def _batch(world_dir, tiny_vlm_dir, n=4):
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import build_sft_dataset, load_sft_samples, load_world
    from covip.training.sft_pointer import PointerCollator

    world = load_world(world_dir)
    samples = [s for s in load_sft_samples(SftDataSection(), world_dir) if s.sample_type == "caption"][:n]
    rows = build_sft_dataset(samples, world, types=["caption"], context_spans=True)
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    base = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    collate = PointerCollator(base, processor.tokenizer, processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    examples = [rows[i] for i in range(len(rows))]
    return samples, world, processor, collate(examples), examples


def test_pointers_bind_names_to_their_photos_and_answers_to_the_matching_name(world_dir, tiny_vlm_dir):
    from covip.training.sft_pointer import SPANS_COLUMN, _runs

    samples, _, processor, batch, _ = _batch(world_dir, tiny_vlm_dir)
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert "pointer_targets" in batch and SPANS_COLUMN not in batch  # the column never reaches the model
    for b, sample in enumerate(samples):
        ids = batch["input_ids"][b].tolist()
        labels = batch["labels"][b].tolist()
        runs = _runs(ids, image_id)
        pointers = batch["pointer_targets"][b]
        names = list(sample.concept_names)
        binds = [p for p in pointers if p[0] == "bind"]
        assert len(binds) == len(names) == len(runs) - 1
        for i, (_, (src,), dst) in enumerate(binds):  # each name, after its own photo, points at that photo
            assert dst == runs[i] and runs[i][-1] < src < runs[i + 1][0]
            assert tok.decode(ids[src:src + 8]).strip().startswith(names[i])
        looks = [p for p in pointers if p[0] == "look"]
        copies = {p[1][0]: p[2] for p in pointers if p[0] == "copy"}
        present = {names[j] for j in sample.present}
        assert looks and all(dst == runs[-1] for _, _, dst in looks)  # the answer looks at the query photo
        said = set()
        for _, (pos,), _ in looks:
            assert labels[pos + 1] != -100  # it predicts an answer token...
            (src,) = copies[pos]
            item = next(i for i, (_, s, _) in enumerate(binds) if s == [src])  # ...copied from a bound name
            assert tok.decode(ids[pos + 1:pos + 8]).strip().startswith(names[item])
            said.add(names[item])
        assert said == present  # every present concept's name, and no distractor's
        facts = [p for p in pointers if p[0] == "copy" and p[1] not in [q[1] for q in looks]]
        assert facts  # the remembered facts the caption states point into the dialogues
        for _, (pos,), (src,) in facts:
            assert labels[pos + 1] == ids[src] and src < runs[-1][0]


def test_rows_without_the_layout_get_no_pointers(tiny_vlm_dir):
    from transformers import AutoProcessor

    from covip.training.sft_pointer import pointer_loss, pointer_targets

    tok = AutoProcessor.from_pretrained(tiny_vlm_dir).tokenizer
    ids = tok("Hello there Bori", add_special_tokens=False)["input_ids"]
    labels = [-100] * (len(ids) - 1) + ids[-1:]
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert pointer_targets(ids, labels, [["Bori"]], tok, image_id) == []  # no photos
    assert pointer_targets(ids, labels, [], tok, image_id) == []
    assert pointer_loss({}, [[], []]) is None


def test_pointer_loss_trains_the_supervised_heads_toward_their_targets(tmp_path, world_dir, tiny_vlm_dir):
    from covip.training.sft import train_sft

    config = SftConfig.from_dict({
        "model": {"name_or_path": str(tiny_vlm_dir)},
        "data": {"world": str(world_dir), "sample_types": ["caption"]},
        "trainer": {"max_steps": 24, "per_device_train_batch_size": 4, "pointer_loss": 1.0, "learning_rate": 3e-3,
                    "warmup_steps": 0},
        "eval": {"enabled": False},
        "run": {"output_dir": str(tmp_path / "run"), "use_cpu": True, "progress": False, "logging_steps": 4}})
    result = train_sft(config)
    logged = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    curve = [m["pointer_loss"] for m in logged if "pointer_loss" in m]
    assert len(curve) >= 4
    assert curve[-1] < 0.8 * curve[0]  # the heads learned to look where they are shown


def test_pointer_loss_is_refused_where_it_cannot_apply(tmp_path, world_dir, tiny_vlm_dir):
    with pytest.raises(InputError, match="trainer.pointer_loss"):
        SftConfig.from_dict({"data": {"sample_types": ["verification"]}, "trainer": {"pointer_loss": 1.0}})
    with pytest.raises(InputError, match="trainer.pointer_loss"):
        SftConfig.from_dict({"trainer": {"pointer_loss": -1.0}})
    with pytest.raises(InputError, match="trainer.value_probe.*needs trainer.pointer_loss > 0"):
        SftConfig.from_dict({"trainer": {"value_probe": 1.0}})
    with pytest.raises(InputError, match="trainer.value_probe"):
        SftConfig.from_dict({"trainer": {"pointer_loss": 1.0, "value_probe": 1e9}})
    with pytest.raises(InputError, match="trainer.value_probe_scale.*'head' or 'stream'"):
        SftConfig.from_dict({"trainer": {"pointer_loss": 1.0, "value_probe": 1.0, "value_probe_scale": "../x"}})


def test_fresh_names_are_drawn_like_the_worlds_names(world_dir):
    """A world whose training concepts have compound names ("Frank-Ziggy") gets compound fresh names in the same
    share, so a caption phase learns to copy them; a world of single names gets single names as before."""
    import dataclasses
    import random

    from covip.training.data.world import NAMES
    from covip.training.sft_data import fresh_names, load_world

    world = load_world(world_dir)
    assert world.compound_share() == 0
    assert fresh_names(world, random.Random(3), 3) == random.Random(3).sample(NAMES, 3)
    train = sorted(cid for cid, s in world.split.items() if s == "train")
    renamed = {cid: dataclasses.replace(c, name=f"{NAMES[0]}-{NAMES[i + 1]}" if cid in train[: len(train) // 2]
                                        else c.name) for i, (cid, c) in enumerate(world.concepts.items())}
    mixed = dataclasses.replace(world, concepts=renamed)
    share = mixed.compound_share()
    assert 0.4 <= share <= 0.6
    rng = random.Random(0)
    draws = [fresh_names(mixed, rng, 3) for _ in range(400)]
    assert all(len(set(d)) == 3 for d in draws)
    flat = [n for d in draws for n in d]
    compounds = [n for n in flat if "-" in n]
    assert abs(len(compounds) / len(flat) - share) < 0.08
    assert all(a in NAMES and b in NAMES and a != b for a, b in (n.split("-") for n in compounds))


    def before(rng):  # the draws before data.invented_names existed: off, it must not change a recorded recipe
        names = []
        while len(names) < 3:
            name = "-".join(rng.sample(NAMES, 2)) if rng.random() < share else rng.choice(NAMES)
            if name not in names:
                names.append(name)
        return names

    r1, r2 = random.Random(9), random.Random(9)
    assert [fresh_names(mixed, r1, 3, invented=0.0) for _ in range(50)] == [before(r2) for _ in range(50)]

    # data.invented_names: that share of the names (and of compound halves) is made up, not in the list
    rng = random.Random(1)
    invented = [fresh_names(mixed, rng, 3, invented=0.5) for _ in range(400)]
    assert all(len(set(d)) == 3 for d in invented)
    halves = [h for d in invented for n in d for h in n.split("-")]
    made_up = [h for h in halves if h not in NAMES]
    assert 0.4 <= len(made_up) / len(halves) <= 0.6
    assert all(h.isalpha() and h[0].isupper() and h[1:].islower() and 4 <= len(h) <= 12 for h in made_up)
    assert len(set(made_up)) > 0.95 * len(made_up)  # a guess from a list cannot name them
    assert abs(sum("-" in n for d in invented for n in d) / (3 * len(invented)) - share) < 0.08
    assert all(h not in NAMES for n in fresh_names(world, random.Random(2), 3, invented=1.0) for h in n.split("-"))
    with pytest.raises(InputError, match="data.invented_names.*fresh_identities"):
        SftConfig.from_dict({"data": {"invented_names": 0.5}})


def test_fresh_identities_rename_every_context_concept_consistently(world_dir):
    from covip.training.data.world import FACT_LISTS
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import build_sft_dataset, load_sft_samples, load_world

    world = load_world(world_dir)
    samples = [s for s in load_sft_samples(SftDataSection(), world_dir) if s.sample_type == "caption"]
    plain = build_sft_dataset(samples, world, types=["caption"], context_spans=True).to_list()
    rows = build_sft_dataset(samples, world, types=["caption"], context_spans=True, identities=True,
                             passes=2).to_list()
    assert len(rows) == 2 * len(plain)
    by_images = {}
    for row in rows:
        prompt = "".join(p.get("text") or "" for m in row["prompt"] for p in m["content"])
        caption = row["completion"][0]["content"][0]["text"]
        spans = row["context_spans"]
        sample = next(s for s in samples if [str(p) for p in s.images] == [im["path"] for im in row["images"]])
        names = [item[0] for item in spans]
        assert len(set(names)) == len(names) == len(sample.concept_names)
        for item in spans:  # every new name and fact is what the rewritten dialogue states
            assert all(v in prompt or v[:1].upper() + v[1:] in prompt for v in item)
            assert all(v in FACT_LISTS[k] for k, v in zip(("place", "time", "event", "action"), item[1:]))
        for j, item in enumerate(spans):  # the caption names the present concepts by their new names only
            assert (item[0] in caption) == (j in sample.present)
        assert not any(world.concepts[c].name in prompt for c in sample.meta["concept_ids"]
                       if world.concepts[c].name not in names)  # the world's own names are gone
        by_images.setdefault(tuple(im["path"] for im in row["images"]), []).append(tuple(names))
    assert any(len(set(v)) > 1 for v in by_images.values())  # each pass draws anew


def test_recognition_pointers_label_match_and_read(tmp_path, tiny_vlm_dir):
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from covip.training.data import SynthConfig, synthesize
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import build_sft_dataset, load_sft_samples, load_world
    from covip.training.sft_pointer import PointerCollator, _runs
    from covip.training.sft_trainer import training_chat_template

    root = tmp_path / "world"
    synthesize(SynthConfig(**{**WORLD, "type_mix": [0.0, 1.0, 0.0]}), root, progress=False)
    world = load_world(root)
    samples = [s for s in load_sft_samples(SftDataSection(), root) if s.sample_type == "recognition"][:4]
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    # one query per row, the rationale before the box; and two queries per row (a follow-up turn)
    single = build_sft_dataset(samples, world, types=["recognition"], context_spans=True, rationale=True)
    multi = build_sft_dataset(samples, world, types=["recognition"], context_spans=True, queries_per_row=2,
                              rationale=False)
    collators = [DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True),
                 DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True,
                                                       chat_template=training_chat_template(processor.chat_template))]
    for rows, base, queries in ((single, collators[0], 1), (multi, collators[1], 2)):
        batch = PointerCollator(base, tok, image_id)([rows[i] for i in range(len(rows))])
        for b in range(len(rows)):
            ids, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
            runs = _runs(ids, image_id)
            pointers = batch["pointer_targets"][b]
            n = len(runs) - queries
            labels_ = [p for p in pointers if p[0] == "label"]
            assert [p[1] for p in labels_] == runs[:n]  # every concept photo's tokens...
            for i, (_, _, (digit,)) in enumerate(labels_):  # ...look at its own header number
                assert tok.decode([ids[digit]]) == str(i) and (runs[i - 1][-1] if i else 0) < digit < runs[i][0]
            matches = [p for p in pointers if p[0] == "match"]
            assert [p[1] for p in matches] == runs[n:]  # each query photo...
            for (_, query, dst), k in zip(matches, range(n, len(runs))):
                stop = runs[k + 1][0] if k + 1 < len(runs) else len(ids)
                said = tok.decode([t for p, t in enumerate(ids) if query[-1] < p < stop and labels[p] != -100])
                box = said[said.index("\\boxed{[") + 8:said.index("]", said.index("\\boxed{["))]
                present = sorted(int(x) for x in box.split(","))
                assert dst == [p for i in present for p in runs[i]]  # ...at the photos its answer names
                reads = [p for p in pointers if p[0] == "read" and p[2] == query]
                assert [tok.decode([ids[p[1][0] + 1]]) for p in reads] == [str(i) for i in present]
    # trainer.answer_format_weight: the box digits keep weight 1, the answer's format tokens get the weight
    from covip.training.sft_pointer import WEIGHTS_KEY

    assert WEIGHTS_KEY not in PointerCollator(collators[0], tok, image_id)([single[0]])
    batch = PointerCollator(collators[0], tok, image_id, format_weight=0.25)([single[i] for i in range(len(single))])
    for b in range(len(single)):
        labels, weights = batch["labels"][b], batch[WEIGHTS_KEY][b]
        digits = {p[1][0] + 1 for p in batch["pointer_targets"][b] if p[0] == "read"}
        assert digits and all(weights[p] == 1.0 for p in digits)
        formats = [p for p in range(len(labels)) if labels[p] != -100 and p not in digits]
        assert formats and all(weights[p] == 0.25 for p in formats)
        assert (weights[labels == -100] == 1.0).all()  # unlabelled positions are not weighed at all


def test_recognition_pointer_loss_trains_a_three_layer_chain(tmp_path):
    from covip.sdk.models import build_tiny_vlm
    from covip.training.sft import train_sft

    config = SftConfig.from_dict({
        "model": {"name_or_path": str(build_tiny_vlm("mini-qwen3-vl"))},
        "data": {"synth": {**WORLD, "type_mix": [0.0, 1.0, 0.0]}, "sample_types": ["recognition"],
                 "recognition_rationale": False},
        "trainer": {"max_steps": 16, "per_device_train_batch_size": 4, "pointer_loss": 1.0, "learning_rate": 3e-3,
                    "warmup_steps": 0},
        "eval": {"enabled": False},
        "run": {"output_dir": str(tmp_path / "run"), "use_cpu": True, "progress": False, "logging_steps": 1}})
    result = train_sft(config)
    logged = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    curve = [m["pointer_loss"] for m in logged if "pointer_loss" in m]
    assert len(curve) >= 4 and curve[-1] < 0.5 * curve[0]
    assert not any("probe_loss" in m for m in logged)
    # trainer.probe_loss: the same first step (same weights, same batch) adds exactly its weight x the probe term
    probed = train_sft(SftConfig.from_dict({**config.to_dict(), "trainer": {**config.to_dict()["trainer"],
                                                                           "probe_loss": 2.0, "max_steps": 1},
                                            "run": {**config.to_dict()["run"], "output_dir": str(tmp_path / "p")}}))
    first = next(json.loads(line) for line in probed.metrics_path.read_text().splitlines() if "probe_loss" in line)
    plain = next(m for m in logged if m.get("step") == 1)
    assert first["probe_loss"] > 0 and first["pointer_loss"] == pytest.approx(plain["pointer_loss"], rel=1e-4)
    assert first["loss"] - plain["loss"] == pytest.approx(2.0 * first["probe_loss"], rel=1e-3)
    tiny = SftConfig.from_dict({**config.to_dict(), "model": {"name_or_path": "tiny"}})
    with pytest.raises(InputError, match="needs >= 3 decoder layers"):  # the tiny model has 2
        train_sft(tiny)


def test_the_mini_recipe_uses_the_pointer_chain_and_names_its_pack():
    from covip.training.config_io import pack_path
    from covip.training.sft_config import load_sft_config

    config = load_sft_config("mini-cpu")
    t = config.trainer
    assert t.pointer_loss > 0 and t.probe_loss > 0 and t.answer_format_weight < 1 and t.freeze_vision
    assert config.data.sample_types == ["recognition"] and config.vision_warmup.objective == "contrastive"
    assert pack_path(config.data.prompt_pack, config.source).is_file()
    # the caption phase continues from the recognition phase's checkpoint and world, with the same pack
    from covip.sdk.prompts import load_pack

    captions = load_sft_config(Path(config.source).parent / "sft" / "mini-cpu-captions.yaml")
    assert captions.model.name_or_path == f"{config.run.output_dir}/model"
    assert captions.data.world == config.data.world and captions.data.caption_style == "indexed"
    assert set(captions.data.sample_types) == {"caption", "recognition"} and captions.data.fresh_identities
    assert captions.trainer.pointer_loss > 0 and captions.trainer.probe_loss > 0
    pack = pack_path(captions.data.prompt_pack, captions.source)
    assert pack.resolve() == pack_path(config.data.prompt_pack, config.source).resolve()
    assert load_pack(pack).dialogue_numbering == 0  # caption and recognition boxes count context items alike
    # then the names phase: the caption phase's checkpoint, gentler, the copied names weighing as answers do
    from covip.training.gspo_config import load_config
    from covip.training.sft_config import load_phases

    phases = load_phases(config)
    assert [p.name for p in phases] == ["mini-cpu-captions", "mini-cpu-names", "mini-cpu-answers"]
    names = load_sft_config(Path(config.source).parent / "sft" / "mini-cpu-names.yaml")
    assert names.model.name_or_path == f"{phases[0].run.output_dir}/model"
    assert names.trainer.copy_name_weight == 1.0 and names.trainer.learning_rate < captions.trainer.learning_rate
    assert names.data.caption_style == "indexed" and names.data.fresh_identities
    assert pack_path(names.data.prompt_pack, names.source).resolve() == pack.resolve()
    # then the answers phase: the names phase's checkpoint and data, with the downstream questions' answer rows
    answers = load_sft_config(Path(config.source).parent / "sft" / "mini-cpu-answers.yaml")
    assert answers.model.name_or_path == f"{phases[1].run.output_dir}/model" == phases[2].model.name_or_path
    assert answers.data.answer_tasks == ["lsd", "lar"] and not names.data.answer_tasks
    assert load_config("mini-cpu").model.name_or_path == f"{phases[-1].run.output_dir}/model"  # GSPO starts there


def test_probe_loss_reads_the_carried_digit_through_the_models_own_head(tiny_vlm_dir):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from covip.training.sft_pointer import probe_loss

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    tok = AutoProcessor.from_pretrained(tiny_vlm_dir).tokenizer
    d0, d1, img = (tok.convert_tokens_to_ids(t) for t in ("0", "1", "<|image_pad|>"))
    ids = torch.tensor([[d0, img, img, d1, img, img, img, img, d0, d1]])
    # concept photo 0 (positions 1-2) under header "0", photo 1 (4-5) under "1", the query (6-7) shows concept
    # 1, and position 8 predicts the answer digit "1" at 9
    row = [("label", [1, 2], [0]), ("label", [4, 5], [3]), ("match", [6, 7], [4, 5]), ("read", [8], [6, 7])]
    head = model.get_output_embeddings().weight.detach()

    def states(digit_of):  # residual streams that hold, at each position, the embedding of a chosen digit
        h = torch.zeros(1, ids.shape[1], head.shape[1])
        for pos, tok_id in digit_of.items():
            h[0, pos] = head[tok_id] * 10
        return [h] * 4  # embeddings, then the outputs of layers 0-2 (the label, match and read layers)

    right = {1: d0, 2: d0, 4: d1, 5: d1, 6: d1, 7: d1, 8: d1}
    wrong = {1: d1, 2: d1, 4: d0, 5: d0, 6: d0, 7: d0, 8: d0}
    with torch.no_grad():
        good, bad = probe_loss(model, states(right), ids, [row]), probe_loss(model, states(wrong), ids, [row])
    assert good.item() < bad.item() - 0.5  # the digit each pointer carries is what the loss rewards
    assert probe_loss(model, states(right), ids, [[("bind", [1], [0])]]) is None  # caption pointers: no probe


@pytest.mark.parametrize("numbering", [1, 0])
def test_captions_by_index_box_the_dialogue_then_copy_what_the_user_said(world_dir, tiny_vlm_dir, numbering):
    """``data.caption_style: indexed``: the target boxes the present dialogues (numbered as the prompt's
    headers) and repeats the user's lines there; the pointers tag every dialogue with its header digit, carry
    the box digit along the answer and point each copied token at its source in a present dialogue."""
    import dataclasses

    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from covip.sdk.prompts import PromptPack
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import build_sft_dataset, load_sft_samples, load_world
    from covip.training.sft_pointer import WEIGHTS_KEY, PointerCollator, _runs

    world = load_world(world_dir)
    samples = [s for s in load_sft_samples(SftDataSection(), world_dir) if s.sample_type == "caption"][:6]
    assert any(len(s.present) == 2 for s in samples)
    pack = dataclasses.replace(PromptPack(), dialogue_numbering=numbering)
    rows = build_sft_dataset(samples, world, types=["caption"], context_spans=True, identities=True, pack=pack,
                             caption_style="indexed")
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    base = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    batch = PointerCollator(base, tok, image_id, format_weight=0.25)([rows[i] for i in range(len(rows))])
    named = PointerCollator(base, tok, image_id, format_weight=0.25, name_weight=1.0)([rows[i] for i in range(len(rows))])
    for b, sample in enumerate(samples):
        target = rows[b]["completion"][0]["content"][0]["text"]
        present = sorted(sample.present)
        box = "Answer: \\boxed{[" + ", ".join(str(i + numbering) for i in present) + "]} "
        assert target.startswith(box) and rows[b]["context_spans"] == []  # no prose-caption pointers
        dialogues = rows[b]["prompt"][0]["content"]
        said = [line[6:] for i in present for line in _dialogue_text(dialogues, i).splitlines()
                if line.startswith("User: ")]
        assert target[len(box):] == " ".join(said)  # the user's own words, in the present dialogues' order

        ids, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
        runs = _runs(ids, image_id)
        pointers = batch["pointer_targets"][b]
        kinds = {k: [p for p in pointers if p[0] == k]
                 for k in ("label", "match", "read", "tag", "prev", "carry", "recall")}
        assert [tok.decode([ids[p[2][0]]]) for p in kinds["label"]] == [str(i + numbering) for i in range(3)]
        assert [tok.decode([ids[p[2][0]]]) for p in kinds["tag"]] == [str(i + numbering) for i in range(3)]
        for i, (_, src, _) in enumerate(kinds["tag"]):  # dialogue i's text, between its photo and the next one
            assert runs[i][-1] < src[0] and src[-1] < runs[i + 1][0]
            assert _dialogue_text(dialogues, i).strip()[:40] in tok.decode([ids[p] for p in src])
        assert [tok.decode([ids[p[1][0] + 1]]) for p in kinds["read"]] == [str(i + numbering) for i in present]
        assert kinds["match"][0][2] == [p for i in present for p in runs[i]]
        (_, srcs, dsts), = kinds["recall"]
        answer = [p for p in range(len(ids)) if labels[p] != -100]
        copied = [p for p in answer if p > kinds["read"][-1][1][0] + 1]
        # nearly every token after the box is a copy, each pointing at the same token in a present dialogue
        assert len(srcs) == len(dsts) >= 0.9 * (len(copied) - 3)
        for src, dst in zip(srcs, dsts):
            assert ids[dst] == ids[src + 1] and any(runs[i][-1] < dst < runs[i + 1][0] for i in present)
        (_, lines, before), = kinds["prev"]  # every user-line token of every dialogue to the token before it
        assert set(dsts) <= set(lines) and before == [q - 1 for q in lines]
        assert all(any(runs[i][-1] < q < runs[i + 1][0] for i in range(3)) for q in lines)
        assert any(runs[i][-1] < q < runs[i + 1][0] for q in lines for i in range(3) if i not in present)
        digits = [p[1][0] + 1 for p in kinds["read"]]
        assert kinds["carry"] == [("carry", srcs, digits)]
        weights = batch[WEIGHTS_KEY][b]
        assert all(weights[p] == 1.0 for p in digits)
        tail = [p for p in answer if p >= srcs[0] + 1]  # the text after the box, its end included
        assert all(weights[p] == 0.25 for p in tail)
        assert weights[answer[0]] == 0.25  # "Answer" is format
        # trainer.copy_name_weight: the copied names (the row's own fresh names) weigh 1, the rest of the copy not
        names = rows[b]["context_names"]
        assert len(names) == 3 and all(n in _dialogue_text(dialogues, i) for i, n in enumerate(names))
        heavy = [p for p in tail if named[WEIGHTS_KEY][b][p] == 1.0]
        spelled = tok.decode([ids[p] for p in heavy])
        assert heavy and all(named[WEIGHTS_KEY][b][p] == 0.25 for p in tail if p not in heavy)
        assert spelled.replace(" ", "") == "".join(names[i] for i in present for _ in
                                                   range(target[len(box):].count(" " + names[i]))).replace(" ", "")
        assert named["input_ids"][b].tolist() == ids  # the names column changes weights only


def _dialogue_text(content, i):
    """The text part that follows the (i+1)-th image of a caption prompt (its dialogue)."""
    images = [k for k, part in enumerate(content) if part["type"] == "image"]
    return content[images[i] + 1]["text"]


def test_batched_pointer_and_probe_losses_equal_their_per_pointer_definition(tiny_vlm_dir):
    """The losses read every pointer of a batch in one indexing step per layer (for speed on the CPU); the value,
    the gradient and the per-kind log must stay what the docstrings define pointer by pointer."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from covip.training.sft_pointer import HEADS, PAIRED, pointer_loss, probe_loss

    torch.manual_seed(0)
    rows = [[("label", [1, 2], [0]), ("match", [6, 7], [1, 2, 4]), ("read", [8], [6, 7]), ("tag", [3, 4, 5], [0]),
             ("prev", [4, 5], [3, 4]), ("carry", [9], [8]), ("recall", [9, 10, 11], [4, 5, 6])],
            [("label", [2, 3], [1]), ("recall", [10, 11], [2, 3]), ("match", [5], [2, 3])]]
    att = {layer: torch.rand(2, 3, 12, 12).softmax(-1).requires_grad_() for layer in range(4)}
    by_kind: dict[str, list[float]] = {}
    loss = pointer_loss(att, rows, by_kind)
    loss.backward()
    fast = {layer: a.grad.clone() for layer, a in att.items()}
    for a in att.values():
        a.grad = None
    terms, expected_log = [], {}
    for b, row in enumerate(rows):
        for kind, src, dst in row:
            layer, head = HEADS[kind]
            m = att[layer][b, head]
            mass = m[src, dst] if kind in PAIRED else m[src][:, dst].sum(-1)
            term = -torch.log(mass.clamp(min=1e-6))
            terms.append(term if kind == "recall" else term.mean()[None])
            expected_log.setdefault(kind, []).append(term.mean().item())
    reference = torch.cat(terms).mean()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for layer in att:
        assert torch.allclose(fast[layer], att[layer].grad, atol=1e-7)
    assert by_kind.keys() == expected_log.keys()
    for kind, values in expected_log.items():
        assert by_kind[kind] == pytest.approx(values, rel=1e-6)
    with pytest.raises(ValueError, match="'recall' pointer pairs 2 sources with 1 targets"):
        pointer_loss(att, [[("recall", [9, 10], [4])]])

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    tok = AutoProcessor.from_pretrained(tiny_vlm_dir).tokenizer
    d0, d1, d2 = (tok.convert_tokens_to_ids(t) for t in ("0", "1", "2"))
    words = tok.convert_tokens_to_ids(["the", "dog", "park", "red", "ball"])
    ids = torch.tensor([[d0, 7, 7, d1, 7, 7, 7, 7, words[0], words[1], words[2], d1],
                        [d2, d0, 7, 7, d1, 7, 7, words[3], words[4], words[0], d0, 7]])
    probe_rows = [[("label", [1, 2], [0]), ("label", [4, 5], [3]), ("match", [6, 7], [4, 5]), ("read", [10], [6, 7]),
                   ("prev", [9, 10], [8, 9]), ("carry", [8], [3])],
                  [("label", [2, 3], [1]), ("label", [5, 6], [4]), ("tag", [7, 8], [4]), ("prev", [8, 9], [7, 8])]]
    hidden = [torch.randn(2, 12, model.config.text_config.hidden_size, requires_grad=True) for _ in range(4)]
    value = probe_loss(model, hidden, ids, probe_rows)
    value.backward()
    fast = [None if h.grad is None else h.grad.clone() for h in hidden]  # [0]: the embeddings, not read
    head_grad = model.get_output_embeddings().weight.grad.clone()
    model.zero_grad()
    for h in hidden:
        h.grad = None
    norm = model.model.language_model.norm
    weight = model.get_output_embeddings().weight
    terms = []
    for b, row in enumerate(probe_rows):
        digits = sorted({int(ids[b, dst[0]]) for kind, _, dst in row if kind == "label"})
        digit_at = {p: digits.index(int(ids[b, dst[0]])) for kind, src, dst in row if kind == "label" for p in src}
        for kind, src, dst in row:
            h = norm(hidden[HEADS[kind][0] + 1][b, src])
            if kind == "prev":
                vocab = sorted({int(t) for t in ids[b, src]} | {int(t) for t in ids[b, dst]})
                logp = torch.log_softmax(h @ weight[vocab].T, -1)
                terms.append(-logp.gather(1, torch.tensor([[vocab.index(int(t))] for t in ids[b, dst]])).mean())
                continue
            if kind == "label":
                wanted = [digit_at[src[0]]]
            elif kind == "match":
                wanted = sorted({digit_at[p] for p in dst if p in digit_at})
            elif kind == "read":
                wanted = [digits.index(int(ids[b, src[0] + 1]))]
            else:
                wanted = [digits.index(int(ids[b, dst[0]]))]
            logp = torch.log_softmax(h @ weight[digits].T, -1)
            terms.append(-torch.logsumexp(logp[:, wanted], -1).mean())
    reference = torch.stack(terms).mean()
    reference.backward()
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    assert [g is None for g in fast] == [h.grad is None for h in hidden] == [True, False, False, False]
    for got, h in zip(fast[1:], hidden[1:]):
        assert torch.allclose(got, h.grad, atol=1e-6)
    assert torch.allclose(head_grad, weight.grad, atol=1e-6)


@pytest.fixture
def copy_batch(tiny_vlm_dir, monkeypatch):
    """The tiny model with its last layer's head 1 as the ``recall`` head, two rows of dialogue words that the
    recall pointers copy from, and random head outputs ``x`` for the recall layer's output projection."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from covip.training.sft_pointer import HEADS

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    tok = AutoProcessor.from_pretrained(tiny_vlm_dir).tokenizer
    text = model.config.text_config
    layer, head = text.num_hidden_layers - 1, 1  # the tiny model is shallower than the mini recipe's chain
    monkeypatch.setitem(HEADS, "recall", (layer, head))
    words = tok.convert_tokens_to_ids(["the", "dog", "park", "red", "ball", "Frank"])
    ids = torch.tensor([[7, words[0], words[1], words[5], words[2], 7, 7, 7, 7, 7],
                        [7, words[3], words[4], words[0], 7, 7, 7, 7, 7, 7]])
    # row 0: positions 6-7 copy "Frank park" (sources 3-4); row 1: position 5 copies "ball" (source 2)
    rows = [[("prev", [1, 2, 3, 4], [0, 1, 2, 3]), ("recall", [6, 7], [3, 4])],
            [("prev", [1, 2, 3], [0, 1, 2]), ("recall", [5], [2])]]
    torch.manual_seed(0)
    x = torch.randn(2, 10, text.num_attention_heads * text.head_dim, requires_grad=True)
    projection = model.model.language_model.layers[layer].self_attn.o_proj
    columns = projection.weight[:, head * text.head_dim:(head + 1) * text.head_dim]  # the head's own columns
    return SimpleNamespace(model=model, text=text, layer=layer, head=head, width=text.head_dim, words=words,
                           ids=ids, rows=rows, x=x, columns=columns, norm=model.model.language_model.norm,
                           lm=model.get_output_embeddings().weight)


def test_value_loss_reads_only_what_the_copy_head_carries_and_trains_it_to_name_the_copied_token(copy_batch):
    """``trainer.value_probe``: the recall head's own output (not the other heads' and not the residual stream),
    read through the final norm and LM head among the row's dialogue words, should name the token each recall
    pointer attends to; the loss is that definition, and descending it makes the head name the copied token."""
    import torch

    from covip.training.sft_pointer import value_loss

    c = copy_batch
    model, text, layer, head, width, words, ids, rows, x = (c.model, c.text, c.layer, c.head, c.width, c.words,
                                                             c.ids, c.rows, c.x)
    columns, norm, lm = c.columns, c.norm, c.lm
    loss = value_loss(model, {layer: x}, ids, rows)
    # the definition, written out: the head's slice through its columns of the output projection
    terms = []
    for b, row in enumerate(rows):
        (_, src, dst), = [p for p in row if p[0] == "recall"]
        vocab = sorted({int(t) for t in ids[b, row[0][1]]} | {int(t) for t in ids[b, dst]})
        logp = torch.log_softmax(norm(x[b, src, head * width:(head + 1) * width] @ columns.T) @ lm[vocab].T, -1)
        terms.append(-logp[range(len(src)), [vocab.index(int(t)) for t in ids[b, dst]]])
    assert loss.item() == pytest.approx(torch.cat(terms).mean().item(), rel=1e-5)
    loss.backward()
    grad = x.grad.view(2, 10, text.num_attention_heads, width)
    others = [h for h in range(text.num_attention_heads) if h != head]
    assert grad[:, :, others].abs().max() == 0  # the other heads' outputs are not read
    assert grad[0, 6, head].abs().max() > 0 and grad[0, 5, head].abs().max() == 0  # only the recall sources
    assert value_loss(model, {layer: x}, ids, [[("prev", [1, 2], [0, 1])], []]) is None  # no copy, no term
    assert value_loss(model, {}, ids, rows) is None

    # descending the loss on the head's output makes it name the copied token among the row's words
    own = x.detach().clone().requires_grad_()
    opt = torch.optim.Adam([own], lr=0.05)
    first = value_loss(model, {layer: own}, ids, rows).item()
    for _ in range(60):
        opt.zero_grad()
        value_loss(model, {layer: own}, ids, rows).backward()
        opt.step()
    assert value_loss(model, {layer: own}, ids, rows).item() < first * 0.75
    with torch.no_grad():
        scores = norm(own[0, 6, head * width:(head + 1) * width] @ columns.T) @ lm[sorted(set(words))].T
    assert sorted(set(words))[int(scores.argmax())] == words[5]  # "Frank"


def test_value_loss_at_the_streams_scale_is_the_heads_direct_effect_on_the_logits_and_sees_its_size(copy_batch):
    """``trainer.value_probe_scale: stream``: the recall head's contribution, scaled as the final norm scales it
    inside the whole residual stream (the stream's RMS held fixed), through the LM head over the whole
    vocabulary, should name the copied token. Unlike the head-scaled reading it sees the contribution's size
    (a head that carries the right token too faintly to move the output is penalized), no gradient reaches the
    stream, and descending it makes the head's direct effect pick the token out of the whole vocabulary."""
    import torch

    from covip.training.sft_pointer import value_loss

    c = copy_batch
    model, text, layer, head, width, words, ids, rows, x = (c.model, c.text, c.layer, c.head, c.width, c.words,
                                                             c.ids, c.rows, c.x)
    columns, norm, lm = c.columns, c.norm, c.lm
    stream = (0.01 * torch.randn(2, 10, text.hidden_size)).requires_grad_()  # the random tiny model's scale
    loss = value_loss(model, {layer: x}, ids, rows, stream=stream)
    # the definition, written out
    src, dst = [(0, 6), (0, 7), (1, 5)], [(0, 3), (0, 4), (1, 2)]
    outs = torch.stack([x[b, q, head * width:(head + 1) * width] @ columns.T for b, q in src])
    rms = torch.stack([stream[b, q].detach().pow(2).mean().add(norm.variance_epsilon).sqrt() for b, q in src])
    logits = (norm.weight * outs / rms[:, None]) @ lm.T
    expected = torch.nn.functional.cross_entropy(logits, torch.stack([ids[b, p] for b, p in dst]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert stream.grad is None  # the stream's scale is held fixed
    grad = x.grad.view(2, 10, text.num_attention_heads, width)
    assert grad[:, :, [h for h in range(text.num_attention_heads) if h != head]].abs().max() == 0

    # the size counts: a faint copy of the same direction scores worse here, the same under the head's own scale
    faint = x.detach().clone()
    faint[..., head * width:(head + 1) * width] *= 0.1
    assert value_loss(model, {layer: faint}, ids, rows).item() == pytest.approx(
        value_loss(model, {layer: x.detach()}, ids, rows).item(), rel=1e-3)
    full = value_loss(model, {layer: x.detach()}, ids, rows, stream=stream).item()
    assert full < math.log(model.config.text_config.vocab_size) - 0.5  # better than uniform over the vocabulary
    assert value_loss(model, {layer: faint}, ids, rows, stream=stream).item() > full + 0.5

    own = x.detach().clone().requires_grad_()
    opt = torch.optim.Adam([own], lr=0.1)
    first = value_loss(model, {layer: own}, ids, rows, stream=stream).item()
    for _ in range(150):
        opt.zero_grad()
        value_loss(model, {layer: own}, ids, rows, stream=stream).backward()
        opt.step()
    assert value_loss(model, {layer: own}, ids, rows, stream=stream).item() < first * 0.5

    def rank_of_frank(heads: torch.Tensor) -> int:  # the copied token's rank in the head's direct effect
        with torch.no_grad():
            scores = (norm.weight * (heads[0, 6, head * width:(head + 1) * width] @ columns.T) / rms[0]) @ lm.T
        return int((scores > scores[words[5]]).sum())

    assert rank_of_frank(x) > 1000 and rank_of_frank(own) < 10  # near the top of 49,156 (a 16-wide head)


def test_caption_phase_trains_the_copy_heads_value_on_invented_names(tmp_path):
    """`covip train sft` with captions by index, invented fresh names and ``trainer.value_probe``: the copy
    head's value loss is computed on the real model (four layers, as the mini recipe's chain needs) at every
    step and logged, at the scale of a choice among the row's dialogue words (not among the 49k-token
    vocabulary); that descending it teaches the head is the unit test above."""
    from covip.sdk.models import build_tiny_vlm
    from covip.training.sft import train_sft

    config = SftConfig.from_dict({
        "model": {"name_or_path": str(build_tiny_vlm("mini-qwen3-vl"))},
        "data": {"synth": WORLD, "sample_types": ["caption"], "caption_style": "indexed",
                 "fresh_identities": True, "invented_names": 0.5},
        "trainer": {"max_steps": 4, "per_device_train_batch_size": 2, "pointer_loss": 1.0, "value_probe": 1.0,
                    "learning_rate": 1e-3, "warmup_steps": 0},
        "eval": {"enabled": False},
        "run": {"output_dir": str(tmp_path / "run"), "use_cpu": True, "progress": False, "logging_steps": 1}})
    result = train_sft(config)
    logged = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    curve = [m["value_loss"] for m in logged if "value_loss" in m]
    assert len(curve) == 4
    assert all(2.0 < v < 7.5 for v in curve)  # ln(~100-1,000 words) of an untrained head; ln(49,156) = 10.8
