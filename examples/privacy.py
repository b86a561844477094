"""Privacy: export a user's memory to a bundle, forget the user, show that nothing of them is left in the
memory's files (every file under the home is searched for their dialogue text and photo bytes), then import
the bundle back. Last, an encrypted home (``covip init --encrypt``): the same search finds nothing in it even
while she is remembered, and its bundles are encrypted too.

    python examples/privacy.py [--home DIR]
"""

from __future__ import annotations

import argparse
import atexit
import io
import shutil
import tempfile
import zipfile
from pathlib import Path

from covip.sdk import Memory
from covip.sdk.demo import DEMO_CONCEPTS, draw_concept

SECRET = "Bori's vet is Dr. Kim behind the Mapo fish market"  # something a user would not want left behind


def leftovers(home: Path, needles: list[bytes]) -> list[str]:
    """Files under ``home`` that still contain any of ``needles`` (the database, its WAL, indexes, photos)."""
    return [str(p.relative_to(home)) for p in sorted(home.rglob("*"))
            if p.is_file() and any(n in p.read_bytes() for n in needles)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="memory home (default: a new temporary folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="covip-privacy-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # nothing is left behind
    home = args.home or work / "home"

    buf = io.BytesIO()
    draw_concept(DEMO_CONCEPTS[0], 0).save(buf, "PNG")
    photo = buf.getvalue()
    with Memory.open(home, embedder="tiny") as mem:
        mem.add_user("ana", exist_ok=True)
        mem.remember("ana", photo, f"User: {SECRET}.", concepts=["Bori"])
        needles = [SECRET.encode(), photo[-4096:]]  # the dialogue text and the stored photo's bytes
        print(f"ana's memory: {len(mem.photos('ana'))} photo; files holding her data: {leftovers(home, needles)}")

        # 1. Export: one zip with her concepts, photos, dialogues and vectors (to take to another device).
        bundle = mem.export_user("ana", work / "ana.covip.zip")
        print(f"exported to {bundle.name} ({bundle.stat().st_size} bytes)")

        # 2. Forget her: rows, vectors, index entries, cached captions and photo files; freed database pages
        #    are zeroed and the write-ahead log is truncated, so the text is gone from the disk too.
        report = mem.forget_user("ana")
        print(f"forgot ana: {report.photos} photo, {report.episodes} dialogue, {report.vectors} vector, "
              f"{report.files} file; WAL scrubbed: {report.scrubbed}")
        left = leftovers(home, needles)
        print(f"files under the home still holding her dialogue or photo: {left or 'none'}")
        print(f"users left: {[u.name for u in mem.users()]}")

        # 3. Import the bundle back (everything is checked before anything is written).
        counts = mem.import_bundle(bundle)
        print(f"imported back: {counts}")
        print(f"ana's dialogue again: {mem.history('ana')[0].episode.text}")
        print("verify:", "ok" if mem.verify().ok else mem.verify().errors)

    # 4. Encryption at rest: a home opened with a key (a passphrase, or 32 random bytes) keeps its database,
    #    photos, vectors, index files and cached captions encrypted (needs pip install 'covip[encrypt]').
    #    Later opens need the key: key=..., $COVIP_PASSPHRASE, or the OS keyring.
    secure = work / "encrypted-home"
    with Memory.open(secure, embedder="tiny", key="correct horse battery staple") as mem:
        mem.add_user("ana")
        mem.remember("ana", photo, f"User: {SECRET}.", concepts=["Bori"])
        mem.flush()
        left = leftovers(secure, needles)
        print(f"encrypted home, ana remembered: files holding her dialogue or photo: {left or 'none'}")
        sealed = mem.export_user("ana", work / "ana-encrypted.covip.zip")
        print(f"its bundle is encrypted: {not zipfile.is_zipfile(sealed)} "
              "(export_user(..., plain=True) writes a plain zip)")


if __name__ == "__main__":
    main()
