"""Stage 1, the supervised warm start (covip.training.sft*): config, data, targets, scoring, a learning run.

* config: the bundled ``mini-cpu`` recipe loads for both stages, ``--quick`` applies its overrides, unknown
  keys and bad values name the dotted key;
* data: held-out concepts never reach the SFT data (and a sample showing one is refused), prompts are
  exactly :mod:`covip.sdk.prompts`' layouts, and every ground-truth answer earns the full reward;
* scoring: recognition F1 with its chance levels (best constant answer, permutation null);
* the trainer: the CPU loss equals the model's own loss on the answer tokens, the time budget stops;
* learning: a short SFT run raises held-out recognition F1 above what chance gives.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from covip.sdk.errors import DataError, InputError
from covip.training.sft_config import SftConfig, load_sft_config

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("trl")

WORLD = {"n_concepts": 24, "test_fraction": 0.25, "n_train": 30, "n_test": 12, "context_size": 3, "max_present": 2,
         "image_size": 64, "similarity": "attributes", "seed": 1}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    from covip.training.data import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("sft-world") / "world"
    synthesize(SynthConfig(**WORLD), out, progress=False)
    return out


# ----------------------------------------------------------------------------- config


def test_mini_recipe_loads_for_both_stages_and_quick_applies_its_overrides():
    from covip.training.gspo_config import load_config

    full = load_sft_config("mini-cpu")
    assert full.name == "mini-cpu" and full.description
    assert full.model.name_or_path == "mini-qwen3-vl"
    assert full.trainer.max_time_s <= 1800  # the full SFT stage fits 30 minutes
    assert full.data.sample_types == ["recognition"]  # the stage that learns held-out concepts on 2 cores
    quick = load_sft_config("mini-cpu", quick=True)
    assert quick.trainer.max_steps <= 600 and quick.trainer.max_steps < full.trainer.max_steps  # steps bound it
    assert quick.vision_warmup.max_time_s < full.vision_warmup.max_time_s and quick.quick == {}
    assert quick.run.output_dir != full.run.output_dir and quick.data.world != full.data.world
    from covip.training.sft_config import load_phases

    # phase 2, captions by index, then phase 3, names, then phase 4, answers, continue on the same world into
    # <output_dir>/<its name>; not in a quick run
    captions, names, answers = load_phases(full)
    for later in (names, answers):
        assert later.run.output_dir == str(Path(full.run.output_dir) / later.name)
        assert later.data.world == full.data.world
    assert captions.data.caption_style == "indexed" and "caption" in captions.data.sample_types
    assert captions.data.world == full.data.world and captions.run.seed == full.run.seed
    assert captions.run.output_dir == str(Path(full.run.output_dir) / captions.name) and captions.then == []
    assert quick.then == [] and load_phases(quick) == []
    gspo = load_config("mini-cpu")  # the same file is the GSPO stage's config: it starts from the last phase
    assert gspo.model.name_or_path == str(Path(answers.run.output_dir) / "model")
    assert gspo.data.train == str(Path(full.data.world) / "train.jsonl")
    assert gspo.sft and gspo.gspo.importance_sampling_level == "sequence"
    assert gspo.data.fresh_identities  # GSPO's prompts name their concepts anew, as the caption phases' rows
    from covip.training.config_io import pack_path

    # both stages word their prompts alike: the pack is found beside the recipe, whatever the working folder
    assert pack_path(gspo.data.prompt_pack, gspo.source) == pack_path(full.data.prompt_pack, full.source)
    assert pack_path(gspo.data.prompt_pack, gspo.source).is_file()


def test_unknown_and_bad_sft_keys_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  lerning_rate: 1e-3\n")
    with pytest.raises(InputError, match=r"'trainer\.lerning_rate'.*bad\.yaml"):
        load_sft_config(bad)
    with pytest.raises(InputError, match=r"'trainer\.learning_rate'.*> 0"):
        SftConfig.from_dict({"trainer": {"learning_rate": -1}})
    with pytest.raises(InputError, match=r"'data\.sample_types'"):
        SftConfig.from_dict({"data": {"sample_types": ["captions"]}})
    with pytest.raises(InputError, match=r"'data\.synth'.*n_conceps"):
        SftConfig.from_dict({"data": {"synth": {"n_conceps": 3}}})
    with pytest.raises(InputError, match=r"'data\.synth'.*max_present"):
        SftConfig.from_dict({"data": {"synth": {"context_size": 2, "max_present": 3}}})
    with pytest.raises(InputError, match=r"'eval\.batch_size'"):
        load_sft_config("mini-cpu", ["eval.batch_size=0"])
    with pytest.raises(InputError, match=r"'vision_warmup\.objective'.*'distill'"):
        load_sft_config("mini-cpu", ["vision_warmup.objective=distil"])
    with pytest.raises(InputError, match=r"'vision_warmup\.max_steps'"):
        load_sft_config("mini-cpu", ["vision_warmup.max_steps=0"])
    with pytest.raises(InputError, match=r"'data\.queries_per_row'.*1-16"):
        load_sft_config("mini-cpu", ["data.queries_per_row=1000000000"])
    with pytest.raises(InputError, match=r"'data\.copy_share'"):
        load_sft_config("mini-cpu", ["data.copy_share=1.5"])
    with pytest.raises(InputError, match=r"'data\.caption_style'.*'prose' or 'indexed'"):
        load_sft_config("mini-cpu", ["data.caption_style=../../etc/passwd"])
    with pytest.raises(InputError, match=r"'trainer\.max_setps'"):
        load_sft_config("mini-cpu", ["trainer.max_setps=3"])
    with pytest.raises(InputError, match=r"'trainer\.copy_name_weight'.*0-1"):
        load_sft_config("mini-cpu", ["trainer.copy_name_weight=1000000000"])
    with pytest.raises(InputError, match=r"'trainer\.copy_name_weight'.*pointer_loss > 0"):
        load_sft_config("mini-cpu", ["trainer.copy_name_weight=1.0", "trainer.pointer_loss=0", "trainer.probe_loss=0"])
    assert load_sft_config("mini-cpu", ["trainer.copy_name_weight=1.0"]).trainer.copy_name_weight == 1.0
    with pytest.raises(InputError, match="sft"):
        path = tmp_path / "recipe.yaml"
        path.write_text("sft: 3\n")
        load_sft_config(path)
    no_quick = tmp_path / "plain.yaml"
    no_quick.write_text("name: plain\n")
    with pytest.raises(InputError, match="no 'quick' overrides"):
        load_sft_config(no_quick, quick=True)


def test_a_config_extends_a_file_beside_it_group_by_group(tmp_path):
    base = {"name": "base", "data": {"sample_types": ["caption", "recognition"], "copy_share": 0.3},
            "trainer": {"learning_rate": 1e-3, "max_steps": 2400, "pointer_loss": 1.0}, "then": ["x.yaml"]}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({
        "name": "child", "extends": "base.yaml", "data": {"sample_types": ["caption"]},
        "trainer": {"max_steps": 500}, "then": []}))
    child = load_sft_config(tmp_path / "child.yaml")
    assert child.name == "child" and child.source == str(tmp_path / "child.yaml")
    assert child.data.sample_types == ["caption"] and child.data.copy_share == 0.3  # lists replaced, keys merged
    assert child.trainer.max_steps == 500 and child.trainer.learning_rate == 1e-3 and child.trainer.pointer_loss == 1.0
    assert child.then == []


def _phase_keys_that_differ(base: str, phase: str) -> tuple[set[str], dict]:
    """(the dotted keys whose values differ between two bundled SFT phase files, the second one's values)."""
    import covip.training

    phases = Path(covip.training.__file__).parent / "configs" / "sft"
    a, b = (load_sft_config(phases / name).to_dict() for name in (base, phase))
    return {f"{group}.{key}" for group, values in b.items() if isinstance(values, dict)
            for key, value in values.items() if a[group][key] != value}, b


def test_the_names_phase_is_the_caption_phase_but_for_its_own_keys():
    differ, _ = _phase_keys_that_differ("mini-cpu-captions.yaml", "mini-cpu-names.yaml")
    assert differ == {"model.name_or_path", "trainer.learning_rate", "trainer.warmup_steps", "trainer.max_steps",
                      "trainer.max_time_s", "trainer.copy_name_weight", "run.output_dir"}


def test_the_answers_phase_is_the_names_phase_with_answer_rows():
    differ, answers = _phase_keys_that_differ("mini-cpu-names.yaml", "mini-cpu-answers.yaml")
    assert differ == {"model.name_or_path", "data.answer_tasks", "data.answer_rows", "trainer.max_steps",
                      "trainer.max_time_s", "run.output_dir"}
    assert answers["data"]["answer_tasks"] == ["lsd", "lar"]


@pytest.mark.parametrize("tasks, needle", [
    (["itr"], "must be distinct tasks of"), (["lsd", "lsd"], "must be distinct tasks of"),
    (["../../etc/passwd"], "must be distinct tasks of"),
])
def test_bad_answer_tasks_name_the_key(tasks, needle):
    with pytest.raises(InputError, match=rf"'data\.answer_tasks'.*{needle}"):
        load_sft_config("mini-cpu", [f"data.answer_tasks={json.dumps(tasks)}"])
    with pytest.raises(InputError, match=r"'data\.answer_tasks'.*needs 'caption'"):
        load_sft_config("mini-cpu", ['data.answer_tasks=["lsd"]', 'data.sample_types=["recognition"]'])
    for rows in (0, 10**9):
        with pytest.raises(InputError, match=r"'data\.answer_rows'.*must be 1-8"):
            load_sft_config("mini-cpu", [f"data.answer_rows={rows}"])


@pytest.mark.parametrize("extends, needle", [
    ("../outside.yaml", "must name a YAML config file in"),
    ("/etc/passwd", "must name a YAML config file in"),
    ("missing.yaml", "must name a YAML config file in"),
    ("notes.txt", "must name a YAML config file in"),
    (5, "must name a YAML config file in"),
    ("loop.yaml", "more than 4 files behind one config"),
    ("list.yaml", "holds no mapping of config groups"),
])
def test_extends_refuses_files_outside_loops_and_non_configs(tmp_path, extends, needle):
    (tmp_path / "outside.yaml").write_text("name: outside\n")
    inner = tmp_path / "configs"
    inner.mkdir()
    (inner / "notes.txt").write_text("name: notes\n")
    (inner / "loop.yaml").write_text("name: loop\nextends: loop.yaml\n")
    (inner / "list.yaml").write_text("- 1\n- 2\n")
    (inner / "child.yaml").write_text(yaml.safe_dump({"name": "child", "extends": extends}))
    with pytest.raises(InputError, match="config key 'extends'") as err:
        load_sft_config(inner / "child.yaml")
    assert needle in str(err.value)


def test_sft_values_are_typed_and_synth_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"learning_rate": "5e-4", "max_time_s": "60"},
                                    "data": {"synth": {"n_train": 10}}}))
    config = load_sft_config(path, ["data.synth.n_test=7", "trainer.max_steps=3"])
    assert config.trainer.learning_rate == 5e-4 and config.trainer.max_time_s == 60.0
    assert config.data.synth == {"n_train": 10, "n_test": 7} and config.trainer.max_steps == 3
    assert SftConfig.from_dict(yaml.safe_load(config.to_yaml())).to_dict() == config.to_dict()


def test_sft_arguments_train_on_answers_only(tmp_path):
    from covip.training.sft import sft_args

    config = load_sft_config("mini-cpu", ["trainer.learning_rate=3e-4", "trainer.per_device_train_batch_size=2"])
    args = sft_args(config, tmp_path)
    assert args.completion_only_loss is True and args.remove_unused_columns is False
    assert (args.learning_rate, args.per_device_train_batch_size) == (3e-4, 2)
    with pytest.raises(InputError, match="extra_args"):
        sft_args(load_sft_config("mini-cpu", ["trainer.extra_args={no_such_argument: 1}"]), tmp_path)


# ----------------------------------------------------------------------------- data


def test_held_out_concepts_never_reach_the_sft_data(world_dir):
    from covip.training.data import read_jsonl
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import (
        build_sft_dataset,
        check_training_concepts,
        load_sft_samples,
        load_world,
    )

    world = load_world(world_dir)
    held = world.held_out()
    assert held and len(held) < len(world.concepts)
    samples = load_sft_samples(SftDataSection(), world_dir)
    ds = build_sft_dataset(samples, world, seed=0)
    assert len(ds) == len(samples) == WORLD["n_train"]
    held_names = {world.concepts[c].name for c in held}
    held_images = {f"images/concepts/{c}.png" for c in held}
    for sample in samples:
        assert not [p for p in sample.images if any(p.endswith(h) for h in held_images)], sample.id
    for row in ds.to_list():
        text = json.dumps([row["prompt"], row["completion"]])
        assert not [n for n in held_names if f"{n}," in text or f"{n} " in text or f"{n}." in text], text[:200]
    test = read_jsonl(world_dir / "test.jsonl", image_root=world_dir)
    with pytest.raises(DataError, match="held-out concept"):
        check_training_concepts(test[:1], world)
    with pytest.raises(DataError, match="held-out concept"):
        build_sft_dataset([*samples, test[0]], world)


def test_sft_prompts_are_the_sdk_layouts_and_answers_earn_full_reward(world_dir):
    from covip.sdk import prompts
    from covip.training.gspo_data import sample_messages
    from covip.training.judges import LexicalJudge
    from covip.training.rewards import caption_reward_parts, recognition_reward, verification_reward
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import load_sft_samples, load_world, sft_row

    world = load_world(world_dir)
    samples = load_sft_samples(SftDataSection(), world_dir)
    judge = LexicalJudge()
    seen = set()
    for sample in samples:
        row = sft_row(sample, world, random.Random(0))
        seen.add(sample.sample_type)
        as_messages = [{"role": "user", "content": [{"type": p["type"], "text": p["text"]}
                                                    for p in row["prompt"][0]["content"]]}]
        rendered = prompts.render_text(as_messages)
        answer = row["completion"][0]["content"][0]["text"]
        assert row["completion"][0]["role"] == "assistant"
        if sample.sample_type == "caption":
            head = next(p["text"] for p in row["prompt"][0]["content"] if p["text"] and "=====" in p["text"]
                        and "Dialogue" not in p["text"])
            header = head.strip().strip("= ").strip()
            assert rendered == prompts.render_text(sample_messages(sample, rng=None)).replace("New Image", header)
            pos = judge.answer([(answer, q) for q in sample.pos_qas])
            neg = judge.answer([(answer, q) for q in sample.neg_qas])
            got_pos, got_neg = caption_reward_parts(pos, [q.correct for q in sample.pos_qas], neg)
            assert got_pos == pytest.approx(len(sample.present)) and got_neg == 0.0, answer
        else:
            assert rendered == prompts.render_text(sample_messages(sample, rng=None))
            if sample.sample_type == "recognition":
                assert prompts.RECOGNITION_INSTRUCTION in rendered
                assert recognition_reward(answer, sample.answer) == 1.0
            else:
                assert verification_reward(answer, sample.answer) == 1.0
    assert seen == {"caption", "recognition", "verification"}


def test_describe_rows_and_training_order(world_dir):
    from covip.sdk import prompts
    from covip.training.data.targets import describe_target
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import (
        build_sft_dataset,
        describe_items,
        load_sft_samples,
        load_world,
        order_rows,
    )

    world = load_world(world_dir)
    samples = load_sft_samples(SftDataSection(), world_dir)
    items = describe_items(samples, world)
    paths = [p for p, _ in items]
    assert items and len(paths) == len(set(paths))
    for s in samples:  # a one-concept query photo is described with its concept's look, a group photo never
        shown = s.meta["query_concept_ids"]
        if len(shown) == 1:
            assert (s.images[-1], world.concepts[shown[0]].look) in items
        else:
            assert s.images[-1] not in paths, s.id
    assert not world.held_out() & {Path(p).stem for p in paths}  # held-out memory photos are never described

    ds = build_sft_dataset(samples, world, describe=True, types=["recognition"], batch_size=4, warmup_describe=6)
    rows = ds.to_list()
    is_describe = [r["prompt"][0]["content"][-1]["text"] == prompts.DESCRIBE_INSTRUCTION for r in rows]
    assert is_describe[:6] == [True] * 6  # the warm-up comes first
    n_rec = sum(s.sample_type == "recognition" for s in samples)
    assert len(rows) == 6 + len(items) + n_rec and sum(is_describe) == 6 + len(items)
    by_path = dict(items)
    for row, desc in zip(rows, is_describe):
        if desc:  # the image column holds {"path": ..., "bytes": None} before decoding
            assert row["completion"][0]["content"][0]["text"] == describe_target(by_path[row["images"][0]["path"]])

    groups = {"a": [{"t": "a", "i": i} for i in range(8)], "b": [{"t": "b", "i": i} for i in range(12)]}
    ordered = order_rows(groups, batch_size=4, seed=3, warmup=[{"t": "w"}])
    assert ordered[0] == {"t": "w"} and len(ordered) == 21
    body = ordered[1:]
    assert all(len({r["t"] for r in body[i:i + 4]}) == 1 for i in range(0, 20, 4))  # one type per batch
    assert [r["t"] for r in body] != ["a"] * 8 + ["b"] * 12  # the batches are shuffled
    assert order_rows(groups, batch_size=4, seed=3) == order_rows(groups, batch_size=4, seed=3)


def test_matching_warmup_rows_show_the_concepts_own_photo_first(world_dir):
    from covip.training.rewards import parse_index_set
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import build_sft_dataset, load_sft_samples, load_world

    world = load_world(world_dir)
    samples = load_sft_samples(SftDataSection(), world_dir)
    ds = build_sft_dataset(samples, world, types=["recognition"], batch_size=4, matching_warmup=5, rationale=False)
    rows = ds.to_list()
    n_rec = sum(s.sample_type == "recognition" for s in samples)
    assert len(rows) == 5 + n_rec
    for row in rows[:5]:  # the query is one of the concept images, and the answer names exactly that one
        paths = [im["path"] for im in row["images"]]
        assert paths[-1] in paths[:-1]
        box = parse_index_set(row["completion"][0]["content"][0]["text"])
        assert box == {paths[:-1].index(paths[-1])}
    for row in rows[5:]:  # the real samples follow, unchanged
        paths = [im["path"] for im in row["images"]]
        assert paths[-1] not in paths[:-1]
    # with several queries per row, every query of a warm-up row is a copy, answered with its index
    chat = build_sft_dataset(samples, world, types=["recognition"], batch_size=4, matching_warmup=5, rationale=False,
                             queries_per_row=3).to_list()
    for row in chat[:5]:
        paths = [im["path"] for im in row["images"]]
        for photo, answer in zip(paths[3:], row["messages"][1::2]):
            assert parse_index_set(answer["content"][0]["text"]) == {paths[:3].index(photo)}


def test_multi_query_rows_label_every_answer_with_a_photo_of_that_concept(world_dir, tiny_vlm_dir, tmp_path):
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from covip.sdk import prompts
    from covip.training.rewards import parse_index_set
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import build_sft_dataset, load_sft_samples, load_world, query_pool
    from covip.training.sft_trainer import training_chat_template

    world = load_world(world_dir)
    samples = load_sft_samples(SftDataSection(), world_dir)
    pool = query_pool(samples)
    owner = {photo: cid for cid, photos in pool.items() for photo in photos}
    pack = prompts.load_pack({"name": "short", "recognition_instruction": "Which concept is in the query image?"})
    ds = build_sft_dataset(samples, world, types=["recognition", "verification"], batch_size=4, queries_per_row=3,
                           copy_share=0.5, rationale=False, pack=pack)
    rows = ds.to_list()
    assert set(rows[0]) == {"messages", "images"}  # one conversational dataset for every type
    recognition = [r for r in rows if len(r["messages"]) == 6]
    assert len(recognition) == sum(s.sample_type == "recognition" for s in samples)
    copies = followups = 0
    for row in recognition:
        paths = [im["path"] for im in row["images"]]
        assert len(paths) == 3 + 3 and [m["role"] for m in row["messages"]] == ["user", "assistant"] * 3
        assert "Which concept is in the query image?" in row["messages"][0]["content"][-2]["text"]
        context = paths[:3]
        ids = next(s.meta["concept_ids"] for s in samples if [str(p) for p in s.images[:3]] == context)
        for photo, answer in zip(paths[4:], row["messages"][3::2]):  # the follow-up turns
            (j,) = parse_index_set(answer["content"][0]["text"])
            if photo == context[j]:
                copies += 1
            else:  # a query photo of exactly that concept, from the training split
                assert owner[photo] == ids[j]
                followups += 1
    assert copies and followups  # both kinds were drawn at copy_share 0.5
    # one query per row: prompt/completion rows (completion-only loss), the query a copy at copy_share 1
    single = build_sft_dataset(samples, world, types=["recognition"], batch_size=4, copy_share=1.0,
                               rationale=False).to_list()
    assert set(single[0]) == {"prompt", "completion", "images"}
    for row in single:
        paths = [im["path"] for im in row["images"]]
        if len(parse_index_set(row["completion"][0]["content"][0]["text"])) == 1:
            assert paths[-1] in paths[:-1]
    # passes: the same samples again, with their own draws and order
    twice = build_sft_dataset(samples, world, types=["recognition"], batch_size=4, queries_per_row=3,
                              copy_share=0.5, rationale=False, pack=pack, passes=2).to_list()
    assert len(twice) == 2 * len(recognition)
    first, second = twice[:len(recognition)], twice[len(recognition):]
    key = lambda r: tuple(im["path"] for im in r["images"][:3])  # noqa: E731 - the row's concept images
    assert sorted(map(key, first)) == sorted(map(key, second))  # every sample once per pass
    assert [r["images"] for r in first] != [r["images"] for r in second]  # drawn and ordered anew
    # trl's collator with covip's training template labels exactly the assistant answers
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    template = training_chat_template(processor.chat_template)
    batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True, chat_template=template)(
        [ds[i] for i in range(len(rows)) if len(rows[i]["messages"]) == 6][:2])
    for labels, row in zip(batch["labels"], [r for r in rows if len(r["messages"]) == 6][:2]):
        expected = "".join(m["content"][0]["text"] + "<|im_end|>" for m in row["messages"][1::2])
        assert processor.tokenizer.decode(labels[labels != -100]) == expected


def test_training_chat_template_renders_the_same_text_and_refuses_unknown_templates(tiny_vlm_dir):
    from transformers import AutoProcessor

    from covip.training.sft_trainer import training_chat_template

    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
            {"role": "user", "content": [{"type": "text", "text": "again"}]}]
    template = training_chat_template(processor.chat_template)
    assert "{% generation %}" in template and training_chat_template(template) == template
    for gen in (False, True):
        assert processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen) == \
            processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen, chat_template=template)
    with pytest.raises(InputError, match="queries_per_row"):
        training_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(InputError, match="queries_per_row"):
        training_chat_template(None)


def test_answer_rows_are_the_evaluations_paper_layouts_and_earn_full_marks(world_dir):
    """An answer row's prompt is exactly what the downstream evaluation sends (CAG's answer pass after the gold
    caption, or the direct answer) and its answer scores full marks with the evaluation's own scorers."""
    from types import SimpleNamespace

    from covip.sdk import prompts
    from covip.training.data.downstream import DownstreamSample
    from covip.training.eval.downstream import answer_sample, lar_lexical_correct
    from covip.training.eval.protocols import paper_lsd_score
    from covip.training.gspo_data import placeholder_messages
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import (
        answer_row,
        build_sft_dataset,
        load_sft_samples,
        load_world,
        target_for,
    )

    class Recorder:  # records the chats the evaluation sends; the caption pass answers with the gold caption
        def __init__(self, caption: str) -> None:
            self.caption, self.sent = caption, []

        def generate(self, messages, config):
            self.sent.append(messages)
            return SimpleNamespace(text=self.caption, completion_tokens=1, cached_tokens=0)

    def as_rows(messages):  # the dataset's Arrow struct of a chat
        return [{"role": m["role"], "content": [{"type": p["type"], "text": p["text"]} for p in m["content"]]}
                for m in placeholder_messages(messages)[0]]

    world = load_world(world_dir)
    singles = [s for s in load_sft_samples(SftDataSection(), world_dir)
               if s.sample_type == "caption" and len(s.present) == 1]
    assert singles
    modes = set()
    for i, sample in enumerate(singles[:4]):
        concept = world.concepts[sample.meta["concept_ids"][sample.present[0]]]
        for task in ("lsd", "lar"):
            for cag in (True, False):
                row = answer_row(sample, world, random.Random(i), task=task, cag=cag)
                caption = target_for(sample, world, random.Random(i), rationale=False)
                ds = DownstreamSample(sample.id, task, tuple(sample.images[:-1]), tuple(sample.dialogues),
                                      sample.images[-1], prompts.DOWNSTREAM_QUESTIONS[task], (concept.facts.place,))
                engine = Recorder(caption)
                answer_sample(engine, ds, "cag" if cag else "no_cag", caption_config=None, answer_config=None,
                              protocol="paper")
                assert as_rows(engine.sent[-1]) == row["prompt"]
                assert row["images"] == [str(p) for p in sample.images]
                answer = row["completion"][0]["content"][0]["text"]
                if task == "lsd":
                    assert paper_lsd_score(answer, [concept.facts.place]) == (1.0, True)  # the paper's scorer
                else:
                    assert lar_lexical_correct(answer, [concept.facts.action])
                modes.add((task, cag))
    assert len(modes) == 4
    with pytest.raises(DataError, match="one present concept"):
        answer_row(next(s for s in load_sft_samples(SftDataSection(), world_dir) if s.sample_type == "recognition"),
                   world, random.Random(0), task="lsd", cag=True)
    plain = build_sft_dataset(singles, world, seed=0, types=["caption"])
    with_answers = build_sft_dataset(singles, world, seed=0, types=["caption"], answer_tasks=["lsd", "lar"])
    assert len(with_answers) == 2 * len(plain)  # one answer row per one-concept caption sample
    texts = [r["completion"][0]["content"][0]["text"] for r in with_answers]
    assert sum(t.startswith("//boxed{") or t.startswith("You were ") for t in texts) == len(singles)
    two = build_sft_dataset(singles, world, seed=0, types=["caption"], answer_tasks=["lar"], answer_rows=2)
    answers = [r for r in two if r["completion"][0]["content"][0]["text"].startswith("You were ")]
    with_caption = [any(m["role"] == "assistant" for m in r["prompt"]) for r in answers]
    assert len(answers) == 2 * len(singles) and sum(with_caption) == len(singles)  # one CAG, one direct each


def test_who_rows_ask_as_the_assistant_does_and_answer_with_what_the_demo_reads(world_dir):
    """answer_tasks 'who': "Who is this?" in the layouts covip's assistant sends (after CAG's caption, or
    directly), answered with the box of the concept's dialogue (direct) and its name, which the demo scores."""
    from types import SimpleNamespace

    from covip.sdk import prompts
    from covip.sdk.demo_mini import named_concept, spells_name
    from covip.training.gspo_data import placeholder_messages
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import (
        WHO_QUESTIONS,
        answer_row,
        build_sft_dataset,
        load_sft_samples,
        load_world,
    )

    pack = prompts.load_pack(REPO / "training" / "configs" / "packs" / "mini-short.toml")
    world = load_world(world_dir)
    singles = [s for s in load_sft_samples(SftDataSection(), world_dir)
               if s.sample_type == "caption" and len(s.present) == 1]
    asked = set()
    for i, sample in enumerate(singles[:6]):
        name = sample.concept_names[sample.present[0]]
        items = [SimpleNamespace(concepts=[n]) for n in sample.concept_names]
        context = [prompts.ContextEntry(dialogue=d, image=img) for d, img in zip(sample.dialogues, sample.images[:-1])]
        for cag in (True, False):
            row = answer_row(sample, world, random.Random(i), task="who", cag=cag, pack=pack)
            question = row["prompt"][-1]["content"][-1]["text"]
            assert question in WHO_QUESTIONS
            asked.add(question)
            if cag:
                caption = row["prompt"][-2]["content"][0]["text"]
                sent = prompts.answer_messages(context, sample.images[-1], caption, question, pack=pack)
            else:
                sent = prompts.direct_messages(context, sample.images[-1], question, pack=pack)
            assert placeholder_messages(sent)[0] == row["prompt"]  # what CagPipeline sends for either mode
            answer = row["completion"][0]["content"][0]["text"]
            assert spells_name(answer, name) and ("\\boxed{" in answer) != cag  # direct: the box first
            read = named_concept(caption + "\n" + answer if cag else answer, items, sample.concept_names,
                                 numbering=pack.dialogue_numbering)
            assert read == name, (cag, answer)
    assert len(asked) > 1
    renamed = build_sft_dataset(singles, world, seed=0, types=["caption"], answer_tasks=["who"], identities=True,
                                pack=pack)
    who = [r for r in renamed if "That's " in r["completion"][0]["content"][0]["text"]]
    assert len(who) == len(singles)
    for row in who:  # with fresh identities the answer names the concept as this row's dialogues do
        name = row["completion"][0]["content"][0]["text"].rsplit("That's ", 1)[1].rstrip(".")
        prompt = "".join(p.get("text") or "" for m in row["prompt"] for p in m["content"])
        assert f"{name}!" in prompt or f"{name}." in prompt or f"{name} " in prompt


def test_missing_world_and_foreign_samples_fail_clearly(tmp_path, world_dir):
    from covip.training.data import Sample
    from covip.training.sft_data import load_world, target_for

    with pytest.raises(InputError, match="concepts.json is missing"):
        load_world(tmp_path)
    world = load_world(world_dir)
    foreign = Sample(id="x", sample_type="verification", images=["a.png", "b.png"], answer="yes")
    with pytest.raises(DataError, match="meta.concept_ids"):
        target_for(foreign, world, random.Random(0))


def test_targets_state_the_ground_truth():
    from covip.training.data.targets import caption_target, look_phrase, recognition_target
    from covip.training.data.world import Concept, Facts, Look
    from covip.training.rewards import parse_index_set

    look = Look("robot", "orange", "patch", "orange", "backpack", "orange")
    assert look_phrase(look) == "an orange toy robot with an orange patch and an orange backpack"
    assert look_phrase(Look("person", "red", "plain", "blue", "none", "blue")) == "a person in red"
    looks = [Look("cat", "red", "stripes", "blue", "hat", "green"), look]
    text = recognition_target(looks, [1])
    assert parse_index_set(text) == {1} and text.splitlines()[-1] == "Answer: \\boxed{[1]}"
    assert text.index("concept 1") > text.index("orange toy robot")  # description first, then the number
    with pytest.raises(InputError):
        recognition_target(looks, [2])
    assert recognition_target(looks, [1, 0], rationale=False) == "Answer: \\boxed{[0, 1]}"
    facts = Facts("Haeundae beach", "two winters ago", "a family picnic", "feeding the ducks")
    caption = caption_target([Concept("c1", "Bori", looks[0], facts, "", ())], random.Random(0))
    assert "Bori" in caption and all(v in caption for v in (facts.place, facts.time, facts.event, facts.action))
    # a caption by index: the box numbered like the dialogue headers, then the user's lines of those dialogues
    from covip.training.data.targets import indexed_caption_target

    dialogues = ["User: Meet Bori! My dog.\nAssistant: Cute!\nUser: At Haeundae beach.", "User: This is Mom."]
    assert indexed_caption_target(dialogues, [0], numbering=1) == "Answer: \\boxed{[1]} Meet Bori! My dog. At Haeundae beach."
    assert indexed_caption_target(dialogues, [1, 0]) == \
        "Answer: \\boxed{[0, 1]} Meet Bori! My dog. At Haeundae beach. This is Mom."
    with pytest.raises(InputError, match="do not fit 2 dialogues"):
        indexed_caption_target(dialogues, [2])
    with pytest.raises(InputError, match="no 'User: ' line"):
        indexed_caption_target(["Assistant: hello"], [0])


# ----------------------------------------------------------------------------- scoring


def test_recognition_scores_come_with_chance_levels():
    from covip.training.data import Sample
    from covip.training.sft_eval import score_recognition

    rng = random.Random(0)
    samples = []
    for i in range(60):
        present = sorted(rng.sample(range(4), rng.randint(1, 2)))
        samples.append(Sample(id=f"s{i}", sample_type="recognition", images=[f"{j}.png" for j in range(5)],
                              answer=present))
    perfect = score_recognition([f"\\boxed{{{list(s.answer)}}}" for s in samples], samples, permutations=500)
    assert perfect["f1"] == 1.0 and perfect["parsed"] == 1.0
    assert perfect["permutation"]["p_value"] < 0.01 and perfect["constant"]["f1"] < 0.7
    constant = score_recognition(["\\boxed{[0, 1, 2, 3]}"] * len(samples), samples, permutations=500)
    assert constant["f1"] == pytest.approx(constant["constant"]["f1"])  # the best blind answer: all four
    assert constant["permutation"]["p_value"] == 1.0
    garbage = score_recognition(["no idea"] * len(samples), samples, permutations=200)
    assert garbage["f1"] == 0.0 and garbage["parsed"] == 0.0
    with pytest.raises(InputError):
        score_recognition(["\\boxed{[0]}"], samples)


# ----------------------------------------------------------------------------- the trainer


def test_cpu_loss_is_the_models_loss_on_answer_tokens(tmp_path, world_dir, tiny_vlm_dir, monkeypatch):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from covip.training.sft import sft_args
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import build_sft_dataset, load_sft_samples, load_world
    from covip.training.sft_trainer import CompletionOnlySFTTrainer

    world = load_world(world_dir)
    ds = build_sft_dataset(load_sft_samples(SftDataSection(), world_dir)[:6], world)
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    config = load_sft_config("mini-cpu", [f"run.output_dir={tmp_path}", "run.use_cpu=true"])
    trainer = CompletionOnlySFTTrainer(model=model, args=sft_args(config, tmp_path), train_dataset=ds, processing_class=processor)
    batch = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)([ds[i] for i in range(6)])
    labels = batch["labels"]
    assert (labels != -100).sum() > 0 and (labels == -100).sum() > (labels != -100).sum()
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, dict(batch))
        reference = model(**batch).loss  # the model's own shifted cross-entropy over labelled tokens
    assert ours.item() == pytest.approx(reference.item(), rel=1e-4)
    # with pointer supervision the answer loss is summed per row, then averaged over rows
    trainer.pointer_weight = 1.0
    with torch.no_grad():
        per_row = trainer.compute_loss(trainer.model, dict(batch))  # no pointer_targets: the answer loss alone
    rows = int((labels != -100).any(dim=1).sum())
    assert per_row.item() == pytest.approx(reference.item() * int((labels != -100).sum()) / rows, rel=1e-4)
    from covip.training.sft_pointer import WEIGHTS_KEY

    weights = torch.ones(labels.shape)
    weights[labels != -100] = 0.5  # the collator's per-token weights (trainer.answer_format_weight) scale it
    with torch.no_grad():
        halved = trainer.compute_loss(trainer.model, {**batch, WEIGHTS_KEY: weights})
    assert halved.item() == pytest.approx(per_row.item() / 2, rel=1e-4)
    # each weight scales its own token: only row 0's answer counts, the others weigh 0
    only = torch.zeros(labels.shape)
    only[0][labels[0] != -100] = 1.0
    with torch.no_grad():
        first = trainer.compute_loss(trainer.model, {**batch, WEIGHTS_KEY: only})
        logits = model(**batch).logits[0, :-1]
    row0 = torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum")
    assert first.item() == pytest.approx(row0.item() / rows, rel=1e-4)
    # transformers 4 keeps the positions labelled in any row (a 1-D logits_to_keep): the same loss
    import covip.training.sft_trainer as sft_trainer

    monkeypatch.setattr(sft_trainer, "_ROW_MASK", False)
    with torch.no_grad():
        assert trainer.compute_loss(trainer.model, {**batch, WEIGHTS_KEY: only}).item() == pytest.approx(first.item(),
                                                                                                        rel=1e-4)


def test_a_multi_query_run_trains_evaluates_and_saves_the_inference_template(tmp_path, world_dir, tiny_vlm_dir):
    from transformers import AutoProcessor

    from covip.training.sft import train_sft

    pack = tmp_path / "short.toml"
    pack.write_text('name = "short"\nrecognition_instruction = "Which concept is in the query image?"\n')
    config = SftConfig.from_dict({
        "model": {"name_or_path": str(tiny_vlm_dir)},
        "data": {"world": str(world_dir), "sample_types": ["recognition"], "queries_per_row": 2, "copy_share": 0.5,
                 "prompt_pack": str(pack), "recognition_rationale": False},
        "trainer": {"max_steps": 2, "per_device_train_batch_size": 2},
        "eval": {"max_samples": 4, "max_new_tokens": 8, "permutations": 100, "every_steps": 1, "curve_samples": 2},
        "run": {"output_dir": str(tmp_path / "run"), "use_cpu": True, "progress": False, "logging_steps": 1}})
    result = train_sft(config)
    assert result.global_step == 2 and result.evaluation["sft"]["recognition"]["n"] == 3  # the world holds 3
    saved = AutoProcessor.from_pretrained(result.model_dir)
    assert saved.chat_template == AutoProcessor.from_pretrained(tiny_vlm_dir).chat_template  # no training markers
    assert "{% generation %}" not in saved.chat_template
    from covip.training.sft import PROVENANCE_FILE

    provenance = json.loads((result.model_dir / PROVENANCE_FILE).read_text())
    assert provenance["prompt_version"].startswith("covip-prompts-1+short:")  # the pack to use at inference
    logged = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert any("loss" in m for m in logged)
    # the learning curve: held-out recognition scored after every step, in the metrics and in eval.json
    curve = [m for m in logged if "heldout_recognition_f1" in m]
    assert [m["step"] for m in curve] == [1, 2] and all(m["heldout_n"] == 2 for m in curve)
    assert json.loads(result.eval_path.read_text())["curve"] == result.evaluation["curve"]
    assert [p["step"] for p in result.evaluation["curve"]] == [1, 2]


def _phase_file(folder: Path, stem: str, then: list[str] | None = None, **groups) -> Path:
    path = folder / f"{stem}.yaml"
    data = {"name": stem, "model": {"name_or_path": "not-used-the-previous-phase-is"},
            "data": {"sample_types": ["caption"], "caption_style": "indexed"},
            "trainer": {"max_steps": 1, "per_device_train_batch_size": 2}, "eval": {"enabled": False},
            "run": {"output_dir": "not-used"}, **({"then": then} if then is not None else {}), **groups}
    path.write_text(yaml.safe_dump(data))
    return path


def test_phases_continue_from_the_previous_checkpoint_on_the_same_world(tmp_path, world_dir, tiny_vlm_dir):
    from click.testing import CliRunner

    from covip.sdk.cli.main import cli
    from covip.training.cli import register
    from covip.training.sft import PROVENANCE_FILE

    if "train" not in cli.commands:
        register(cli)
    _phase_file(tmp_path, "captions")
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({
        "name": "recognition", "model": {"name_or_path": str(tiny_vlm_dir)},
        "data": {"world": str(world_dir), "sample_types": ["recognition"], "recognition_rationale": False},
        "trainer": {"max_steps": 2, "per_device_train_batch_size": 2}, "eval": {"enabled": False},
        "run": {"output_dir": str(tmp_path / "run"), "use_cpu": True, "progress": False, "seed": 3},
        "then": ["captions.yaml"]}))  # found beside the config, whatever the working folder
    out = CliRunner().invoke(cli, ["train", "sft", "--config", str(first)])
    assert out.exit_code == 0, out.output
    assert "recognition: trained 2 steps" in out.output and "captions: trained 1 steps" in out.output
    phase_dir = tmp_path / "run" / "captions"
    provenance = json.loads((phase_dir / "model" / PROVENANCE_FILE).read_text())
    assert provenance["base_model"] == str(tmp_path / "run" / "model")  # from phase 1's checkpoint
    ran = yaml.safe_load((phase_dir / "config.yaml").read_text())
    assert ran["data"]["world"] == str(world_dir) and ran["run"]["seed"] == 3 and ran["then"] == []
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["final_model_dir"] == str(phase_dir / "model")
    assert [p["name"] for p in summary["phases"]] == ["recognition", "captions"]
    assert [p["global_step"] for p in summary["phases"]] == [2, 1]

    # reuse_finished (covip repro mini --resume): a finished phase of the same config is not trained again
    from transformers import TrainerCallback

    from covip.training.sft import train_sft

    class Count(TrainerCallback):
        runs = 0

        def on_train_begin(self, args, state, control, **kwargs):
            Count.runs += 1

    again = train_sft(load_sft_config(first), callbacks=[Count()], reuse_finished=True)
    assert Count.runs == 0 and again.model_dir == phase_dir / "model" and len(again.phases) == 2
    _phase_file(tmp_path, "captions", trainer={"max_steps": 2, "per_device_train_batch_size": 2})
    changed = train_sft(load_sft_config(first), callbacks=[Count()], reuse_finished=True)
    assert Count.runs == 1 and changed.global_step == 2  # only the changed phase trained
    assert json.loads((phase_dir / "result.json").read_text())["global_step"] == 2
    # a phase after one that trained again trains again too: its start checkpoint changed at the same path
    edited = yaml.safe_load(first.read_text())
    edited["trainer"]["max_steps"] = 3
    first.write_text(yaml.safe_dump(edited))
    Count.runs = 0
    both = train_sft(load_sft_config(first), callbacks=[Count()], reuse_finished=True)
    assert Count.runs == 2 and [p["global_step"] for p in both.phases] == [3, 2]
    # a recipe that gains a phase keeps the phases it had (what comes after a phase is not what it trained)
    _phase_file(tmp_path, "answers")
    edited["then"] = ["captions.yaml", "answers.yaml"]
    first.write_text(yaml.safe_dump(edited))
    Count.runs = 0
    grown = train_sft(load_sft_config(first), callbacks=[Count()], reuse_finished=True)
    assert Count.runs == 1 and [p["name"] for p in grown.phases] == ["recognition", "captions", "answers"]
    assert [bool(p.get("reused")) for p in grown.phases] == [True, True, False]
    # ... but only while its config as trained is the recorded one
    ran = tmp_path / "run" / "config.yaml"
    ran.write_text(ran.read_text().replace("max_steps: 3", "max_steps: 4"))
    Count.runs = 0
    train_sft(load_sft_config(first), callbacks=[Count()], reuse_finished=True)
    assert Count.runs == 3


def test_the_training_seed_orders_the_rows_and_reproduces_a_run(tmp_path, world_dir, tiny_vlm_dir):
    """run.seed is a training seed: the same rows in another order (so seeds of `covip repro mini` train
    differently; before, a sequential sampler's order followed data.seed alone and seeds 1 and 2 were one run),
    and the same seed gives the same run."""
    from covip.training.sft import train_sft
    from covip.training.sft_config import SftDataSection
    from covip.training.sft_data import build_sft_dataset, load_sft_samples, load_world

    world = load_world(world_dir)
    samples = load_sft_samples(SftDataSection(), world_dir)

    def rows(**kw):
        return [json.dumps(r, sort_keys=True) for r in build_sft_dataset(
            samples, world, types=["recognition"], batch_size=2, rationale=False, **kw).to_list()]

    base, other = rows(), rows(order_seed=1)
    assert rows(order_seed=0) == base and other != base and sorted(other) == sorted(base)

    def losses(seed: int, name: str) -> list[float]:
        config = SftConfig.from_dict({
            "name": "seeded", "model": {"name_or_path": str(tiny_vlm_dir)},
            "data": {"world": str(world_dir), "sample_types": ["recognition"], "recognition_rationale": False},
            "trainer": {"max_steps": 3, "per_device_train_batch_size": 2}, "eval": {"enabled": False},
            "run": {"output_dir": str(tmp_path / name), "use_cpu": True, "progress": False, "seed": seed,
                    "logging_steps": 1}})
        result = train_sft(config)
        lines = result.metrics_path.read_text().splitlines()
        return [row["loss"] for row in map(json.loads, lines) if "loss" in row]

    zero = losses(0, "a")
    assert len(zero) == 3 and losses(0, "b") == zero and losses(1, "c") != zero


def test_bad_phases_are_refused_before_anything_trains(tmp_path, world_dir, tiny_vlm_dir):
    from covip.training.sft import train_sft

    def run(then: list[str]) -> str:
        config = SftConfig.from_dict({
            "name": "first", "model": {"name_or_path": str(tiny_vlm_dir)},
            "data": {"world": str(world_dir), "sample_types": ["recognition"]},
            "trainer": {"max_steps": 1}, "eval": {"enabled": False},
            "run": {"output_dir": str(tmp_path / "run"), "use_cpu": True, "progress": False}, "then": then},
            source=str(tmp_path / "first.yaml"))
        with pytest.raises(InputError) as err:
            train_sft(config)
        assert not (tmp_path / "run" / "model").exists()  # refused before the first phase trained
        return str(err.value)

    assert "no-such-phase.yaml" in run(["no-such-phase.yaml"])
    _phase_file(tmp_path, "loop", then=["loop.yaml"])  # a phase that names itself
    assert "named 'loop' like an earlier phase" in run(["loop.yaml"])
    _phase_file(tmp_path, "again", name="first")
    assert "like an earlier phase" in run(["again.yaml"])
    _phase_file(tmp_path, "escape", name="../../outside")  # a name is a folder under the run: no way out
    assert "'../../outside'" in run(["escape.yaml"]) and not (tmp_path.parent / "outside").exists()
    _phase_file(tmp_path, "bad", trainer={"max_steps": 0})
    assert "phase 'bad.yaml'" in run(["bad.yaml"]) and "trainer.max_steps" in run(["bad.yaml"])
    with pytest.raises(InputError, match="at most 8 phases"):
        SftConfig.from_dict({"then": ["a"] * 9})
    with pytest.raises(InputError, match="then"):
        SftConfig.from_dict({"then": [""]})


def test_freeze_vision_keeps_the_tower_the_warm_up_trained(tmp_path, world_dir, tiny_vlm_dir):
    import torch
    from transformers import AutoModelForImageTextToText, TrainerCallback

    from covip.training.sft import train_sft

    class Snapshot(TrainerCallback):  # the tower as SFT starts, i.e. after the warm-up
        tower: dict = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            Snapshot.tower = {k: v.detach().clone() for k, v in model.model.visual.state_dict().items()}

    config = SftConfig.from_dict({
        "model": {"name_or_path": str(tiny_vlm_dir)},
        "data": {"world": str(world_dir), "sample_types": ["recognition"], "recognition_rationale": False},
        "vision_warmup": {"enabled": True, "num_train_epochs": 1, "per_device_train_batch_size": 8},
        "trainer": {"max_steps": 2, "per_device_train_batch_size": 2, "freeze_vision": True},
        "eval": {"enabled": False},
        "run": {"output_dir": str(tmp_path / "run"), "use_cpu": True, "progress": False}})
    result = train_sft(config, callbacks=[Snapshot()])
    initial = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    trained = AutoModelForImageTextToText.from_pretrained(result.model_dir)
    start = initial.model.visual.state_dict()
    saved = trained.model.visual.state_dict()
    assert any(not torch.equal(Snapshot.tower[k], start[k]) for k in start)  # the warm-up trained the tower
    assert all(torch.equal(Snapshot.tower[k], saved[k]) for k in saved)  # SFT kept it
    lm_start, lm_saved = initial.model.language_model.state_dict(), trained.model.language_model.state_dict()
    assert any(not torch.equal(lm_start[k], lm_saved[k]) for k in lm_saved)  # the language model trained


def test_time_budget_stops_training():
    from transformers import TrainerControl, TrainerState

    from covip.training.sft_trainer import TimeBudgetCallback

    cb = TimeBudgetCallback(max_time_s=1e-6)
    control = TrainerControl()
    cb.on_train_begin(None, TrainerState(), control)
    cb.on_step_end(None, TrainerState(), control)
    assert control.should_training_stop and cb.stopped
    endless = TimeBudgetCallback(None)
    control = TrainerControl()
    endless.on_train_begin(None, TrainerState(), control)
    endless.on_step_end(None, TrainerState(), control)
    assert not control.should_training_stop


# ----------------------------------------------------------------------------- the CLI


def test_cli_prints_the_quick_config_and_lists_the_recipe(tmp_path):
    from click.testing import CliRunner

    from covip.sdk.cli.main import cli
    from covip.training.cli import register

    if "train" not in cli.commands:
        register(cli)
    runner = CliRunner()
    out = runner.invoke(cli, ["train", "sft", "--config", "mini-cpu", "--quick", "--print-config",
                              "--set", "trainer.learning_rate=2e-3"])
    assert out.exit_code == 0, out.output
    printed = yaml.safe_load(out.output)
    assert printed["trainer"]["learning_rate"] == 2e-3 and printed["trainer"]["max_steps"] <= 600
    listed = runner.invoke(cli, ["train", "configs"])
    assert listed.exit_code == 0 and "mini-cpu" in listed.output
    bad = runner.invoke(cli, ["train", "sft", "--config", "mini-cpu", "--print-config", "--set", "trainer.nope=1"])
    assert bad.exit_code != 0 and "trainer.nope" in bad.output
    earlier = tmp_path / "earlier-run"
    (earlier / "model").mkdir(parents=True)
    (earlier / "result.json").write_text("{}")
    refused = runner.invoke(cli, ["train", "sft", "--config", "mini-cpu", "--quick", "--output", str(earlier)])
    assert refused.exit_code != 0 and "already holds a run" in refused.output
    assert (earlier / "result.json").read_text() == "{}"
