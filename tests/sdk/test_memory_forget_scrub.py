"""After forgetting, the dialogue text and image bytes are in no file under the home (raw-byte grep)."""

from __future__ import annotations

from pathlib import Path

import pytest

from covip.sdk import Memory


def all_home_bytes(home: Path) -> dict[str, bytes]:
    """Raw bytes of every file under the home: database, WAL, shm, index files, photos, sidecars."""
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


def files_containing(home: Path, needle: bytes) -> list[str]:
    return [name for name, data in all_home_bytes(home).items() if needle in data]


def image_needles(path: Path) -> list[bytes]:
    """Three 48-byte slices of the encoded image (start of data, middle, end): none may survive."""
    data = path.read_bytes()
    n = len(data)
    return [data[n // 4:n // 4 + 48], data[n // 2:n // 2 + 48], data[-64:-16]]


@pytest.mark.parametrize("how", ["photo", "concept", "user"])
def test_forgotten_text_and_image_leave_no_bytes_behind(home, tiny_embedder, photo_factory, how) -> None:
    secret_text = "zebra-umbrella-7731 lives at 42 Secret Lane"
    secret_photo = photo_factory(11)
    with Memory.open(home, embedder=tiny_embedder) as mem:
        mem.add_user("ana")
        mem.add_user("ben")
        # enough unrelated data that the forgotten rows sit among others on shared pages
        for i in range(30):
            mem.remember("ana", photo_factory(100 + i), f"User: ordinary day {i} " + "filler " * 20,
                         concepts=["Mom"])
        mem.remember("ben", photo_factory(200), "User: ben's own memory", concepts=["Toto"])
        mem.remember("ana", secret_photo, f"User: {secret_text}\nAssistant: I will remember {secret_text}",
                     concepts=["Secret"], place="Secret Lane")
        mem.flush()
        needle = secret_text.encode()
        # the test can fail: before forgetting, the secrets are on disk
        assert files_containing(home, needle)
        assert all(files_containing(home, n) for n in image_needles(secret_photo))

        if how == "photo":
            report = mem.forget_photo("ana", secret_photo)
        elif how == "concept":
            report = mem.forget_concept("ana", "Secret")
        else:
            report = mem.forget_user("ana")
        assert report.scrubbed and report.photos >= 1

        assert files_containing(home, needle) == []
        assert files_containing(home, b"Secret Lane") == []
        for n in image_needles(secret_photo):
            assert files_containing(home, n) == []
        if how == "user":
            assert files_containing(home, b"ordinary day 3") == []
        else:
            assert files_containing(home, b"ordinary day 3")  # the rest is still there
        assert files_containing(home, b"ben's own memory")
        assert mem.verify().ok
    # and still nothing after close (close checkpoints nothing back in)
    assert files_containing(home, needle) == []
