"""Bring your own model: open a GGUF + mmproj export directory (llama.cpp), a Hugging Face model id or a
local save_pretrained directory (transformers), and stream an answer from it.

Without an argument, or when the model cannot be opened (e.g. a hub id on an offline machine), it falls
back to the offline tiny model (random weights: meaningless text).

    python examples/bring_your_own_model.py ./export/qwen3-vl-2b-gguf     # covip export's GGUF + mmproj
    python examples/bring_your_own_model.py Qwen/Qwen3-VL-2B-Instruct     # downloaded on first use
    python examples/bring_your_own_model.py                              # tiny, offline
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from covip.sdk import Answer, Assistant, AssistantConfig, CovipError, GenerationConfig, make_engine
from covip.sdk.demo import DEMO_CONCEPTS, draw_concept
from covip.sdk.engines.factory import describe_model_spec


def open_engine(spec: str):
    """The engine for ``spec`` (its back end is picked from the spec), or the tiny model when it fails."""
    print(f"opening {spec} with the {describe_model_spec(spec)} back end")
    try:
        return make_engine(spec)  # options like n_ctx=, device=, dtype= go here as keywords
    except (CovipError, OSError) as exc:
        print(f"could not open {spec}: {exc}\nfalling back to the offline tiny model")
        return make_engine("tiny")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="tiny", help="GGUF export dir, hub id, HF dir, or 'tiny'")
    parser.add_argument("--embedder", default="tiny", help="'tiny' or e.g. ViT-B-32/laion2b_s34b_b79k")
    parser.add_argument("--home", type=Path, help="memory home (default: a new temporary folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="covip-byom-"))

    engine = open_engine(args.model)
    print(f"model: {engine.model_id}")
    config = AssistantConfig(home=args.home or work / "home", embedder=args.embedder)
    if getattr(engine, "meaningless", False):  # random weights never stop: keep it short
        config.cag.caption = GenerationConfig(max_new_tokens=16)
        config.cag.answer = GenerationConfig(max_new_tokens=16)
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
    engine.close()


if __name__ == "__main__":
    main()
