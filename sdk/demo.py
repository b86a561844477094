"""`covip demo`: a small personal memory of drawn photos, then questions about new photos, with and
without Caption-Augmented Generation, showing the memories used, cache hits and timings.

The photos are drawn procedurally (no downloads): a white dog, a person in a red coat, a blue bike.
With the offline `tiny` model the answers are meaningless text; the demo says so. With a real model
(`--model Qwen/Qwen3-VL-2B-Instruct`, a local HF dir, or a GGUF + mmproj export) they are real answers.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from covip.sdk.errors import NotFoundError

log = logging.getLogger(__name__)

__all__ = ["DEMO_USER", "DemoConcept", "DEMO_CONCEPTS", "draw_concept", "build_demo_memory", "run_demo"]

DEMO_USER = "demo"


@dataclass(frozen=True)
class DemoConcept:
    name: str
    kind: str
    colour: tuple[int, int, int]
    shape: str
    memories: tuple[tuple[str, str, str], ...]  # (dialogue, taken_at, place)


DEMO_CONCEPTS = (
    DemoConcept("Bori", "pet", (246, 244, 236), "dog", (
        ("User: This is Bori, my white jindo, at the Han river. She chased pigeons all afternoon.\n"
         "Assistant: Bori looks like she had the best day by the water!", "2024-05-04T15:00", "Han river"),
        ("User: Bori at the vet in Mapo, she was brave about her shots.", "2024-08-19T10:30", "Mapo vet clinic"),
    )),
    DemoConcept("Mom", "person", (196, 40, 52), "person", (
        ("User: Mom at her birthday dinner, she finally tried jjamppong and loved it.", "2024-06-10T19:30",
         "Mapo"),
        ("User: Mom in her red coat at Busan station, waving goodbye.", "2024-11-02T08:15", "Busan station"),
    )),
    DemoConcept("blue bike", "object", (40, 90, 200), "bike", (
        ("User: My new blue bike, bought in March for the river path to work.", "2024-03-16T12:00", "Yeouido"),
    )),
)

QUESTIONS = (
    ("Bori", "Who is this, and where did I last see her?"),
    ("Mom", "Who is in this photo and when did we last meet?"),
)


def draw_concept(concept: DemoConcept, variant: int, size: int = 128) -> Image.Image:
    """Draw one photo of a concept; ``variant`` changes pose, scale, background and light."""
    rng = np.random.default_rng(zlib.crc32(f"{concept.name}/{variant}".encode()))
    bg = tuple(int(c) for c in rng.integers(60, 220, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    d.rectangle([0, int(size * 0.7), size, size], fill=tuple(max(0, c - 40) for c in bg))  # ground
    s = size * float(rng.uniform(0.75, 1.0))
    x0 = float(rng.uniform(0, size - s * 0.9))
    y0 = size * 0.15
    c = concept.colour
    if concept.shape == "dog":
        d.ellipse([x0 + 0.15 * s, y0 + 0.35 * s, x0 + 0.8 * s, y0 + 0.7 * s], fill=c)  # body
        d.ellipse([x0 + 0.6 * s, y0 + 0.15 * s, x0 + 0.9 * s, y0 + 0.45 * s], fill=c)  # head
        d.polygon([(x0 + 0.63 * s, y0 + 0.2 * s), (x0 + 0.68 * s, y0 + 0.05 * s), (x0 + 0.74 * s, y0 + 0.18 * s)],
                  fill=c)
        d.ellipse([x0 + 0.78 * s, y0 + 0.26 * s, x0 + 0.82 * s, y0 + 0.3 * s], fill=(20, 20, 20))
        for lx in (0.25, 0.4, 0.6, 0.72):
            d.rectangle([x0 + lx * s, y0 + 0.6 * s, x0 + (lx + 0.06) * s, y0 + 0.82 * s], fill=c)
    elif concept.shape == "person":
        d.ellipse([x0 + 0.38 * s, y0, x0 + 0.62 * s, y0 + 0.24 * s], fill=(236, 200, 170))  # head
        d.polygon([(x0 + 0.5 * s, y0 + 0.22 * s), (x0 + 0.2 * s, y0 + 0.8 * s), (x0 + 0.8 * s, y0 + 0.8 * s)],
                  fill=c)  # coat
        d.rectangle([x0 + 0.38 * s, y0 - 0.02 * s, x0 + 0.62 * s, y0 + 0.05 * s], fill=(60, 40, 30))  # hair
    else:
        for cx in (0.25, 0.75):
            d.ellipse([x0 + (cx - 0.18) * s, y0 + 0.45 * s, x0 + (cx + 0.18) * s, y0 + 0.81 * s],
                      outline=(30, 30, 30), width=max(2, int(s / 30)))
        d.line([(x0 + 0.25 * s, y0 + 0.63 * s), (x0 + 0.5 * s, y0 + 0.4 * s), (x0 + 0.75 * s, y0 + 0.63 * s)],
               fill=c, width=max(3, int(s / 18)))
        d.line([(x0 + 0.5 * s, y0 + 0.4 * s), (x0 + 0.45 * s, y0 + 0.25 * s)], fill=c, width=max(3, int(s / 18)))
    light = float(rng.uniform(0.8, 1.15))
    arr = np.clip(np.asarray(img, dtype=np.float32) * light + rng.normal(0, 4, (size, size, 3)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def build_demo_memory(assistant: Any, photo_dir: Path, *, user: str = DEMO_USER) -> dict[str, list[Path]]:
    """Remember a few photos per demo concept with their dialogues; returns the photo paths per concept."""
    photo_dir.mkdir(parents=True, exist_ok=True)
    mem = assistant.memory
    mem.add_user(user, exist_ok=True)
    known = {c.name for c in mem.concepts(user)}
    paths: dict[str, list[Path]] = {}
    for concept in DEMO_CONCEPTS:
        if concept.name not in known:
            mem.add_concept(user, concept.name, kind=concept.kind)
        for n, (dialogue, taken_at, place) in enumerate(concept.memories):
            path = photo_dir / f"{concept.name.replace(' ', '_')}-{n}.png"
            draw_concept(concept, n).save(path)
            try:
                mem.find_photo(user, path)
            except NotFoundError:  # a kept --home already holds it: no duplicate dialogue
                mem.remember(user, path, dialogue, [concept.name], taken_at=taken_at, place=place)
            paths.setdefault(concept.name, []).append(path)
    return paths


def run_demo(assistant: Any, photo_dir: Path, *, say: Callable[[str], None], user: str = DEMO_USER,
             stream: Callable[[str], None] | None = None) -> dict:
    """Build the demo memory, then ask about new photos: CAG cold, CAG warm (cached caption), no CAG.
    ``stream``: write each answer's pieces there as they are decoded (a terminal), else answers come whole."""
    if assistant.meaningless:
        say("note: this demo runs the offline 'tiny' models (random weights): the pipeline is real, the "
            "answers and similarities are meaningless. Use --model and --embedder for real ones.")
    build_demo_memory(assistant, photo_dir, user=user)
    say(f"remembered {len(assistant.memory.photos(user))} photos of "
        f"{', '.join(c.name for c in assistant.memory.concepts(user))} for user '{user}'")
    runs = []
    by_name = {c.name: c for c in DEMO_CONCEPTS}
    for name, question in QUESTIONS:
        new_photo = photo_dir / f"new-{name}.png"
        draw_concept(by_name[name], 7).save(new_photo)
        say(f"\nnew photo {new_photo.name}: {question}")
        for label, cag in (("CAG (cold)", True), ("CAG (warm)", True), ("direct", False)):
            t0 = time.perf_counter()
            if stream is None:
                reply = assistant.ask(user, new_photo, question, cag=cag)
            else:
                stream(f"  [{label}] answer: ")
                reply = _streamed(assistant.ask_stream(user, new_photo, question, cag=cag), stream)
            wall = time.perf_counter() - t0
            used = ", ".join(f"{'/'.join(m.concepts) or 'photo'} {m.score:.2f}" for m in reply.memories) or "none"
            say(f"  [{label}] {wall:.2f}s  caption {'cached' if reply.caption_cached else 'generated'}"
                if cag else f"  [{label}] {wall:.2f}s")
            say(f"    memories used: {used}")
            if reply.context.abstained:
                say(f"    ({reply.context.reason})")
            if reply.caption is not None and label == "CAG (cold)":
                say(f"    caption: {reply.caption[:160]}")
            if stream is None:
                say(f"    answer: {reply.answer[:160]}")
            runs.append({"concept": name, "question": question, "mode": label, "wall_s": round(wall, 4),
                         **reply.to_dict()})
    return {"user": user, "meaningless": assistant.meaningless, "runs": runs}


def _streamed(pieces: Any, write: Callable[[str], None]) -> Any:
    """Write an ``ask_stream``'s text pieces as they come; return its final Answer."""
    started = False
    for piece in pieces:
        if not isinstance(piece, str):
            write("\n")
            return piece
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        write(piece)
    raise RuntimeError("ask_stream ended without an answer")  # pragma: no cover - it always yields one
