"""Quickstart: remember three photos with what was said about them, then ask about a new photo and print the
answer with its provenance (the caption, and which memories it used).

Runs offline on the tiny random-weight models: the pipeline is real, the answer text is meaningless. For real
answers: --model Qwen/Qwen3-VL-2B-Instruct --embedder ViT-B-32/laion2b_s34b_b79k.

    python examples/quickstart.py [--home DIR] [--model tiny] [--embedder tiny]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path

from covip.sdk import Assistant, CagConfig, GenerationConfig
from covip.sdk.demo import DEMO_CONCEPTS, draw_concept  # drawn stand-ins for photos: a dog, a person, a bike

MEMORIES = {  # concept -> what the user said about its photo
    "Bori": "User: This is Bori, my white jindo, at the Han river. She chased pigeons all afternoon.",
    "Mom": "User: Mom in her red coat at Busan station, waving goodbye.",
    "blue bike": "User: My new blue bike, bought in March for the river path to work.",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="memory home (default: a new temporary folder)")
    parser.add_argument("--model", default="tiny", help="'tiny', a hub id, a HF dir or a GGUF export dir")
    parser.add_argument("--embedder", default="tiny", help="'tiny' or an open_clip spec")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="covip-quickstart-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # nothing is left behind
    home = args.home or work / "home"

    # One Assistant = the memory (SQLite + vector index in `home`) + the embedder + the VLM, loaded once.
    with Assistant.open(home=home, model=args.model, embedder=args.embedder) as bot:
        if bot.meaningless:  # random weights never stop talking: keep the tiny model's output short
            bot.cag.config = CagConfig(caption=GenerationConfig(max_new_tokens=16),
                                       answer=GenerationConfig(max_new_tokens=16))
        bot.memory.add_user("ana", exist_ok=True)

        # 1. Remember three photos, each with its dialogue and the concept it shows.
        for concept in DEMO_CONCEPTS:
            photo = work / f"{concept.name.replace(' ', '_')}.png"
            draw_concept(concept, 0).save(photo)
            bot.remember("ana", photo, MEMORIES[concept.name], concepts=[concept.name])
        print(f"remembered {len(bot.memory.photos('ana'))} photos for ana in {home}")

        # 2. Ask about a new photo (another picture of Bori). CAG: caption it from ana's memories, then answer.
        new_photo = work / "new.png"
        draw_concept(DEMO_CONCEPTS[0], 7).save(new_photo)
        reply = bot.ask("ana", new_photo, "Who is this, and where did I last see her?")

        # 3. The answer and what it is built on.
        print(f"answer:  {reply.answer}")
        print(f"caption: {reply.caption}  ({'from the cache' if reply.caption_cached else 'generated'})")
        print("memories used:")
        for item in reply.memories:
            print(f"  photo {item.photo.id}  {', '.join(item.concepts)}  similarity {item.score:.2f}  "
                  f"\"{item.dialogue}\"")
        print(f"time: {reply.timings['total_s']:.2f} s")
        if bot.meaningless:
            print("(tiny random-weight models: the text above is meaningless; pass --model/--embedder for real ones)")


if __name__ == "__main__":
    main()
