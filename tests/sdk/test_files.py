"""``path_inside``: the one check every record that names its files relative to itself goes through (an
installed mini model, a synthetic world) before a file is read or copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from covip.sdk.files import path_inside


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "install"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("someone else's")
    os.symlink(tmp_path / "secret.txt", root / "photos" / "link-out.png")
    os.symlink(root / "photos" / "a.png", root / "link-in.png")
    return root


def test_names_inside_the_folder_resolve(folder: Path) -> None:
    assert path_inside(folder, "photos/a.png") == (folder / "photos" / "a.png").resolve()
    assert path_inside(folder, "photos/../photos/a.png") == (folder / "photos" / "a.png").resolve()
    assert path_inside(folder, "link-in.png") == (folder / "photos" / "a.png").resolve()
    # a name that does not exist yet is inside all the same; callers check that it exists
    assert path_inside(folder, "photos/new.png") == (folder / "photos" / "new.png").resolve()


@pytest.mark.parametrize("name", ["../secret.txt", "photos/../../secret.txt", "photos/link-out.png",
                                  "/etc/passwd", "", ".", "photos/..", None, 7, ["photos/a.png"], b"photos/a.png"])
def test_names_that_leave_the_folder_or_are_not_paths_are_refused(folder: Path, name: object) -> None:
    assert path_inside(folder, name) is None
