"""Bring your own model: open a GGUF + mmproj export directory (llama.cpp), a Hugging Face model id or a
local save_pretrained directory (transformers), and stream an answer from it.

Without an argument it uses the offline tiny model (random weights: meaningless text). A model you name that
cannot be opened (e.g. a hub id on an offline machine) stops the script with the reason and exit status 1.

    python examples/bring_your_own_model.py ./export/qwen3-vl-2b-gguf     # covip export's GGUF + mmproj
    python examples/bring_your_own_model.py Qwen/Qwen3-VL-2B-Instruct     # downloaded on first use
    python examples/bring_your_own_model.py                              # tiny, offline
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from covip.sdk import Answer, Assistant, AssistantConfig, CovipError, make_engine
from covip.sdk.demo import DEMO_CONCEPTS, draw_concept
from covip.sdk.engines.factory import describe_model_spec


def open_engine(spec: str):
    """The engine for ``spec`` (its back end is picked from the spec); exit 1 with the reason when it fails."""
    print(f"opening {spec} with the {describe_model_spec(spec)} back end")
    try:
        return make_engine(spec)  # options like n_ctx=, device=, dtype= go here as keywords
    except (CovipError, OSError) as exc:
        raise SystemExit(f"could not open {spec}: {exc}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="tiny", help="GGUF export dir, hub id, HF dir, or 'tiny'")
    parser.add_argument("--embedder", default="tiny", help="'tiny' or e.g. ViT-B-32/laion2b_s34b_b79k")
    parser.add_argument("--home", type=Path, help="memory home (default: a new temporary folder)")
    args = parser.parse_args()
    engine = open_engine(args.model)
    with tempfile.TemporaryDirectory(prefix="covip-byom-") as tmp:  # removed at the end, photos and all
        try:
            run(engine, Path(tmp), args.home or Path(tmp) / "home", args.embedder)
        finally:
            engine.close()


def run(engine, work: Path, home: Path, embedder: str) -> None:
    """Remember one photo, then stream an answer about a new one."""
    print(f"model: {engine.model_id}")
    config = AssistantConfig(home=home, embedder=embedder)  # a random-weight model's output is capped at 32 tokens
    with Assistant(config, engine=engine) as bot:  # an engine you pass in stays yours to close
        bot.memory.add_user("ana", exist_ok=True)
        draw_concept(DEMO_CONCEPTS[0], 0).save(work / "bori.png")
        bot.remember("ana", work / "bori.png", "User: This is Bori at the Han river.", concepts=["Bori"])
        draw_concept(DEMO_CONCEPTS[0], 7).save(work / "new.png")

        print("answer: ", end="", flush=True)
        for piece in bot.ask_stream("ana", work / "new.png", "Who is this?"):  # text pieces, then the Answer
            if isinstance(piece, Answer):
                reply = piece
            else:
                print(piece, end="", flush=True)
        print(f"\nmemories used: {[', '.join(m.concepts) for m in reply.memories]}")
        t = reply.timings
        print(f"prefill {t['answer_prefill_s']:.3f} s, decode {t['answer_decode_s']:.3f} s, "
              f"{reply.tokens['answer_cached']} prompt tokens reused from the caption pass's KV cache")


if __name__ == "__main__":
    main()
