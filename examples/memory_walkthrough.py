"""A walk through covip's on-device memory: remember photos with dialogues, recall, share, export, forget.

Runs offline on the `tiny` embedder (random weights: its similarities are meaningless, so we search with
the same photo we stored). With real CLIP weights, `Memory.open(home, embedder="ViT-B-32/laion2b_s34b_b79k")`.

    python examples/memory_walkthrough.py [--home DIR]
"""

from __future__ import annotations

import argparse
import atexit
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from covip.sdk import Memory


def make_photo(path: Path, colour: tuple[int, int, int], shape: str) -> Path:
    """Draw a small stand-in photo (a coloured blob on a background) so the example needs no files."""
    img = Image.new("RGB", (160, 120), (235, 230, 220))
    draw = ImageDraw.Draw(img)
    (draw.ellipse if shape == "round" else draw.rectangle)([40, 20, 120, 100], fill=colour)
    noise = np.random.default_rng(sum(colour)).integers(0, 12, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(np.asarray(img, dtype=np.uint8) + noise).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="memory home (default: a fresh temporary directory)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="covip-walkthrough-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # nothing is left behind
    home = args.home or work / "home"

    bori = make_photo(work / "bori.png", (250, 250, 245), "round")
    mom = make_photo(work / "mom.png", (180, 60, 90), "square")
    bike = make_photo(work / "bike.png", (30, 90, 200), "square")

    with Memory.open(home, embedder="tiny") as mem:
        mem.add_user("ana", exist_ok=True)
        known = {c.name for c in mem.concepts("ana")}
        for name, kind, notes in (("Bori", "pet", "white jindo dog"), ("Mom", "person", "")):
            if name not in known:
                mem.add_concept("ana", name, kind=kind, notes=notes)
        mem.remember("ana", bori, "User: This is Bori at the Han river, she chased pigeons all afternoon.\n"
                     "Assistant: Bori sounds full of energy!", concepts=["Bori"], taken_at="2024-05-04T15:00",
                     place="Han river")
        mem.remember("ana", mom, "User: Mom's birthday dinner, she finally tried the jjamppong.",
                     concepts=["Mom"], taken_at="2024-06-10T19:30", place="Mapo")
        mem.remember("ana", bike, "User: My new blue bike, bought it for the river path.", concepts=["blue bike"],
                     taken_at="2024-07-01")
        print(f"memory home: {home}")
        print("concepts:", ", ".join(f"{c.name} ({c.kind}, {c.photo_count} photo)" for c in mem.concepts("ana")))

        print("\nrecall with a photo of Bori:")
        for hit in mem.search("ana", image=bori, k=2):
            ep = hit.episodes[0]
            print(f"  {hit.score:.3f}  {', '.join(hit.concepts):10s} {ep.place or '-':10s} {ep.dialogue[0].text[:60]}")

        print("\nhistory of Bori:", [h.episode.dialogue[0].text[:40] for h in mem.history("ana", concept="Bori")])

        bundle = mem.export_user("ana", work / "ana-memory.zip")
        print(f"\nexported ana's memory to {bundle} ({bundle.stat().st_size} bytes)")

        report = mem.forget_concept("ana", "Mom")
        print(f"forgot Mom: {report.photos} photo, {report.episodes} dialogue, {report.vectors} vector, "
              f"{report.files} file; WAL scrubbed: {report.scrubbed}")
        print("verify:", "ok" if mem.verify().ok else mem.verify().errors)


if __name__ == "__main__":
    main()
