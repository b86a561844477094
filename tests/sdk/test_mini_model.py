"""The installed `mini` model's record (covip.sdk.models.mini) and the demo's naming rule (covip.sdk.demo_mini)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from covip.sdk.demo_mini import named_concept, spells_name
from covip.sdk.errors import NotFoundError
from covip.sdk.models.mini import (
    MINI_MODEL_FORMAT,
    MINI_MODEL_KIND,
    MINI_MODEL_MARKER,
    find_mini_model,
    mini_model_dir,
)


def _install(cache: Path, **record) -> Path:
    """A hand-made install folder (the training package's installer is tested in tests/training)."""
    folder = mini_model_dir(cache)
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    (folder / "prompt_pack.toml").write_text('name = "p"\n')
    (folder / "demo").mkdir()
    for f in ("00-memory.png", "00-new.png"):
        (folder / "demo" / f).write_bytes(b"png")
    base = {"kind": MINI_MODEL_KIND, "format": MINI_MODEL_FORMAT, "model": "model", "prompt_pack": "prompt_pack.toml",
            "demo": [{"name": "Bori", "kind": "pet", "dialogue": "User: Bori at the river.",
                      "memory_photo": "demo/00-memory.png", "new_photo": "demo/00-new.png"}]}
    base.update(record)
    (folder / MINI_MODEL_MARKER).write_text(json.dumps(base))
    return folder


def test_missing_install_names_the_command_that_builds_it(tmp_path):
    with pytest.raises(NotFoundError, match="covip repro mini") as err:
        find_mini_model(tmp_path)
    assert "install-mini" in str(err.value) and str(mini_model_dir(tmp_path)) in str(err.value)


def test_a_good_record_resolves_inside_the_install_folder(tmp_path):
    folder = _install(tmp_path)
    found = find_mini_model(tmp_path)
    assert found.model_dir == folder / "model" and found.prompt_pack == folder / "prompt_pack.toml"
    assert [c.name for c in found.concepts] == ["Bori"] and found.concepts[0].new_photo.is_file()


@pytest.mark.parametrize("record, why", [
    ({"model": "../../etc"}, "not a file inside"),
    ({"model": "/etc"}, "not a file inside"),
    ({"prompt_pack": "../prompt_pack.toml"}, "not a file inside"),
    ({"demo": [{"name": "Bori", "kind": "pet", "dialogue": "d", "memory_photo": "../../../root/.ssh/id_rsa",
                "new_photo": "demo/00-new.png"}]}, "not a file inside"),
    ({"demo": [{"name": "Bori", "kind": "pet", "dialogue": "d", "memory_photo": "demo/gone.png",
                "new_photo": "demo/00-new.png"}]}, "missing"),
    ({"demo": []}, "no demo concepts"),
    ({"demo": [{"name": "x"}] * 10**4}, "no demo concepts"),
    ({"demo": ["Bori"]}, "malformed"),
    ({"kind": "covip-mini-embedder"}, "not a mini model record"),
    ({"format": 99}, "format 99"),
])
def test_a_tampered_record_is_refused_with_the_way_out(tmp_path, record, why):
    _install(tmp_path, **record)
    with pytest.raises(NotFoundError, match=why) as err:
        find_mini_model(tmp_path)
    assert "covip repro mini" in str(err.value)


def test_a_garbled_record_is_refused(tmp_path):
    folder = _install(tmp_path)
    (folder / MINI_MODEL_MARKER).write_text("{not json")
    with pytest.raises(NotFoundError, match="cannot be read"):
        find_mini_model(tmp_path)


def _items(*names):
    return [SimpleNamespace(concepts=(n,)) for n in names]


def test_named_concept_follows_the_box_to_the_memory_it_points_at():
    items = _items("Frank", "Frank-Ziggy", "Button")
    known = ["Frank", "Frank-Ziggy", "Button"]
    # the box wins over a name the copy got wrong: the model pointed at Frank-Ziggy's memory
    assert named_concept("Answer: \\boxed{[1]} Meet Button!", items, known) == "Frank-Ziggy"
    assert named_concept("Answer: \\boxed{[2]} hi", items, known, numbering=1) == "Frank-Ziggy"
    assert named_concept("Answer: \\boxed{[7]} Frank", items, known) is None  # no such memory: names nobody
    assert named_concept("That is Frank-Ziggy by the river", items, known) == "Frank-Ziggy"  # longest name
    assert named_concept("That is Frank by the river", items, known) == "Frank"
    assert named_concept("nobody I know", items, known) is None


def test_spells_name_matches_whole_names_only():
    assert spells_name("Meet Frank-Ziggy!", "Frank-Ziggy")
    assert not spells_name("Meet Frank-Ziggy!", "Frank")
    assert not spells_name("Frankly", "Frank")
    assert not spells_name("", "Frank")
