"""The one place the CoViP prompt layout lives; training and inference both build their chats here.

Layouts (the paper's prompt layout; the authors' repository oyt9306/CoViP):

* captioning: per context item i (1-based) a ``===== Dialogue i =====`` header, the item's image, its
  dialogue and a blank line; then the query header (``New Image`` at inference; training draws
  ``Query Image`` / ``Target Image`` / ``New Image`` with odds 1/2, 1/4, 1/4), the query image, the
  captioning instruction;
* recognition: per concept i (0-based, the same numbers the answer uses) a ``===== Concept i =====``
  header and its image; the instruction; the query image; answer ``\\boxed{[0, 2]}``;
* verification (yes/no): image 1, image 2, the question about a named object;
* CAG answer pass: the caption chat, the caption as the assistant's turn, the question as the next user
  turn, so the caption pass is a prefix of the answer pass (an engine can reuse its KV cache);
* the paper's CAG answer pass (:func:`paper_answer_messages`, ``covip eval --protocol paper``): the
  instruction moves into a system turn (the captioning instruction for LSD/LAR, the personalization
  prompt for ITR), the user turn holds only the context and the query image, then the caption as the
  assistant's turn and the question. Only the system turn is shared with the caption pass, so an engine
  re-reads the images for the answer (the paper, "Caption-Augmented Generation"; the authors'
  ``downstream/w_CAG`` scripts).

The wording is our own. :data:`PROMPT_VERSION` changes whenever any rendered text changes; it is part
of the caption cache key, so cached captions never outlive the prompt that made them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from covip.sdk.errors import InputError

__all__ = [
    "PROMPT_VERSION",
    "QUERY_HEADERS",
    "QUERY_HEADER_WEIGHTS",
    "INFERENCE_QUERY_HEADER",
    "CAPTION_INSTRUCTION",
    "RECOGNITION_INSTRUCTION",
    "ContextEntry",
    "caption_messages",
    "answer_messages",
    "direct_messages",
    "PERSONALIZATION_PROMPT",
    "paper_answer_messages",
    "paper_direct_messages",
    "recognition_messages",
    "verification_messages",
    "describe_messages",
    "dialogue_header",
    "concept_header",
    "render_text",
]

PROMPT_VERSION = "covip-prompts-1"
QUERY_HEADERS = ("Query Image", "Target Image", "New Image")
QUERY_HEADER_WEIGHTS = (2, 1, 1)
"""Training draws the query header per fetch with odds 1/2, 1/4, 1/4, as the authors' data loader does."""
INFERENCE_QUERY_HEADER = "New Image"

CAPTION_INSTRUCTION = """\
The dialogues above are your memory of earlier conversations with this user. Each one pairs a photo with \
what the user told you about the people, pets, things or places in it: their names, where and when it \
happened, and what the user was doing.

Describe the new image for this user, weaving in what you remember:
1. When someone or something in the new image matches an entity from your memory, call it by the same \
name and bring back the details you learned about it (where it was, when, what happened).
2. Stay faithful to the new image: say what is actually visible now (the scene, the setting, the light, \
what each entity looks like and is doing) and never let memory override it.
3. Sound natural and warm, like a friend who knows the user's life.
4. Do not copy the earlier dialogues word for word; retell what matters in your own words.
5. Write a single paragraph of prose, not a dialogue or a list.
6. Use only the memories that are relevant: leave out every remembered entity that does not appear in \
the new image, along with its names, places and events."""

RECOGNITION_INSTRUCTION = """\
The images above are concept images, numbered from 0 in the order shown. The image below is the query \
image. It shows up to four of these concepts; the other concepts are distractors that look similar but \
do not appear in it.

Look carefully at every concept image and at the query image, and decide which concepts appear in the \
query image. You may explain your reasoning briefly. Then, on its own line, give the final answer as the \
list of the numbers of the concepts that appear, inside \\boxed{}, for example:
Answer: \\boxed{[0, 2]}
Put only the list of numbers inside \\boxed{}."""

VERIFICATION_TEMPLATE = (
    "You are checking whether an object appears in two photos. The object called {name} is shown in the "
    "first image. {question} Answer yes or no."
)

PERSONALIZATION_PROMPT = """\
You are this user's personal assistant. The dialogues you are shown are your memory of earlier \
conversations with them, each about a photo they shared: who or what was in it, where and when, and what \
they were doing. When the user shows a new image, recognize the people, pets and things you remember, \
call them by their names and use what you remember about them to answer. Follow any request the user \
made in those conversations. Rely only on the memories that concern what the new image shows."""

DESCRIBE_INSTRUCTION = "Describe this photo in two or three factual sentences: who or what is in it, where, and what is happening."


@dataclass(frozen=True)
class ContextEntry:
    """One context item as the prompt shows it: an image (or, in caption-only mode, a caption) + dialogue."""

    dialogue: str
    image: Any = None  # PIL image, path or Photo; None when ``caption`` stands in for it
    caption: str | None = None


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _image(image: Any) -> dict[str, Any]:
    return {"type": "image", "image": image}


def dialogue_header(i: int) -> str:
    """Header of the i-th (1-based) context dialogue."""
    return f"===== Dialogue {i} =====\n"


def concept_header(i: int) -> str:
    """Header of the i-th (0-based) concept in the recognition prompt."""
    return f"===== Concept {i} =====\n"


def _query_header(header: str | None, rng: random.Random | None) -> str:
    if header is None:
        header = rng.choices(QUERY_HEADERS, weights=QUERY_HEADER_WEIGHTS)[0] if rng is not None \
            else INFERENCE_QUERY_HEADER
    if header not in QUERY_HEADERS:
        raise InputError(f"query header must be one of {QUERY_HEADERS}, not {header!r}")
    return f"===== {header} =====\n"


def _context_parts(context: Sequence[ContextEntry]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for i, item in enumerate(context, 1):
        if not isinstance(item, ContextEntry):
            raise InputError(f"context item {i} must be a ContextEntry, not {type(item).__name__}")
        parts.append(_text(dialogue_header(i)))
        if item.image is not None:
            parts.append(_image(item.image))
        elif item.caption is not None:
            parts.append(_text(f"[Photo: {item.caption.strip()}]\n"))
        else:
            raise InputError(f"context item {i} has neither an image nor a caption")
        parts.append(_text(f"{item.dialogue.strip()}\n\n"))
    return parts


def caption_messages(context: Sequence[ContextEntry], query_image: Any, *, header: str | None = None,
                     rng: random.Random | None = None, instruction: str = CAPTION_INSTRUCTION) -> list[dict]:
    """The personalized-captioning chat: context dialogues, the query image, the captioning instruction.

    Inference uses the "New Image" header; training passes ``rng`` to draw the header like the authors.
    """
    if query_image is None:
        raise InputError("caption_messages needs the query image")
    parts = _context_parts(context)
    parts += [_text(_query_header(header, rng)), _image(query_image), _text(instruction)]
    return [{"role": "user", "content": parts}]


def answer_messages(context: Sequence[ContextEntry], query_image: Any, caption: str, question: str) -> list[dict]:
    """The CAG answer pass: the caption chat + the caption as the assistant's turn + the question."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; ask something about the photo")
    return [*caption_messages(context, query_image), {"role": "assistant", "content": caption},
            {"role": "user", "content": question.strip()}]


def direct_messages(context: Sequence[ContextEntry], query_image: Any, question: str) -> list[dict]:
    """Without CAG: the context dialogues, the query image and the question in one turn."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; ask something about the photo")
    parts = _context_parts(context)
    parts += [_text(_query_header(INFERENCE_QUERY_HEADER, None)), _image(query_image), _text(question.strip())]
    return [{"role": "user", "content": parts}]


def _paper_block(context: Sequence[ContextEntry], query_image: Any) -> list[dict[str, Any]]:
    if query_image is None:
        raise InputError("the paper layout needs the query image")
    return [*_context_parts(context), _text(_query_header(INFERENCE_QUERY_HEADER, None)), _image(query_image)]


def _system(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def paper_answer_messages(context: Sequence[ContextEntry], query_image: Any, caption: str, question: str, *,
                          system: str = CAPTION_INSTRUCTION) -> list[dict]:
    """The paper's CAG answer pass: system instruction, context + query image, caption, question."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; ask something about the photo")
    return [*_system(system), {"role": "user", "content": _paper_block(context, query_image)},
            {"role": "assistant", "content": caption}, {"role": "user", "content": question.strip()}]


def paper_direct_messages(context: Sequence[ContextEntry], query_image: Any, question: str, *,
                          system: str | None = None) -> list[dict]:
    """The paper's answer without CAG: an optional system prompt, then context, query image and question."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; ask something about the photo")
    return [*_system(system), {"role": "user", "content": [*_paper_block(context, query_image),
                                                           _text(question.strip())]}]


def recognition_messages(concept_images: Sequence[Any], query_image: Any) -> list[dict]:
    """Which of these concepts (0-based) appear in the query image? Answered as ``\\boxed{[...]}``."""
    if not concept_images:
        raise InputError("recognition needs at least one concept image")
    parts: list[dict[str, Any]] = []
    for i, img in enumerate(concept_images):
        parts += [_text(concept_header(i)), _image(img)]
    parts += [_text(RECOGNITION_INSTRUCTION), _image(query_image)]
    return [{"role": "user", "content": parts}]


def verification_messages(reference_image: Any, query_image: Any, name: str, question: str) -> list[dict]:
    """Yes/no: is the object named ``name`` in image 1 also in image 2?"""
    text = VERIFICATION_TEMPLATE.format(name=name, question=question.strip())
    return [{"role": "user", "content": [_image(reference_image), _image(query_image), _text(text)]}]


def describe_messages(image: Any) -> list[dict]:
    """A plain, non-personal description of one photo (the stand-in caption of caption-only memories)."""
    return [{"role": "user", "content": [_image(image), _text(DESCRIBE_INSTRUCTION)]}]


def render_text(messages: Sequence[dict], image_token: str = "<image>") -> str:
    """The messages as plain text with a placeholder per image (for golden tests, logs and budgets)."""
    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, str):
            body = content
        else:
            body = "".join(p["text"] if p["type"] == "text" else image_token for p in content)
        out.append(f"[{msg['role']}]\n{body}")
    return "\n".join(out)
