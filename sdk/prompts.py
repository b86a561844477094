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

Prompt packs. Every piece of text the layouts use (instructions, headers and their numbering base, the
query headers and their odds, vision ids, the downstream questions, the judges' prompts) comes from a
:class:`PromptPack`; :data:`DEFAULT_PACK` is covip's own wording, pinned by golden tests. The released CoViP
checkpoint was trained on the authors' exact text, which covip does not ship: a user who has it writes a
pack file (TOML or JSON, any subset of the fields) and loads it with :func:`load_pack`. A pack's
:meth:`~PromptPack.tag` (the prompt version, plus the pack's name and hash for any other pack) goes into the
caption cache key and the evaluation reports.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
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
    "Exchange",
    "caption_messages",
    "answer_messages",
    "direct_messages",
    "PERSONALIZATION_PROMPT",
    "paper_answer_messages",
    "paper_direct_messages",
    "recognition_messages",
    "recognition_followup_messages",
    "verification_messages",
    "describe_messages",
    "dialogue_header",
    "concept_header",
    "render_text",
    "judge_messages",
    "lar_judge_messages",
    "PromptPack",
    "DEFAULT_PACK",
    "load_pack",
    "DOWNSTREAM_QUESTIONS",
    "PAPER_DOWNSTREAM_QUESTIONS",
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
RECOGNITION_FOLLOWUP = "Which of the concepts above appear in this query image? Answer in the same way.\n"

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

DOWNSTREAM_QUESTIONS = {
    "lsd": "Where did I last see the one in the new image? Give the place inside \\boxed{}.",
    "lar": "What was I doing the last time I told you about the one in the new image?",
    "itr": "What do you see in the new image?",
}
"""covip's questions of the downstream tasks (a record's own question wins)."""
PAPER_DOWNSTREAM_QUESTIONS = {
    "lsd": "Where did I last see the one in the new image? Reason step by step, then write the place as "
           "//boxed{place}.",
    "lar": "What was I doing the last time I told you about my most recent experience with the one in the new "
           "image?",
    "itr": "Where did I last see the one in the new image?",
}
"""The questions of ``--protocol paper``: what the authors' downstream scripts ask (LSD wants the place in
``//boxed{}``, which their scorer reads; ITR asks the LSD question without a box), in our words."""

JUDGE_SYSTEM = (
    "You grade what a photo description says. You get one description and one multiple-choice "
    "question. Use only facts that the description states; do not guess and do not use outside "
    "knowledge. When the description does not give the answer, choose D."
)
JUDGE_USER = (
    "Description:\n{caption}\n\n"
    "Question: {question}\n"
    "{options}\n\n"
    "Reply with the letter of your choice inside \\boxed{{}}, for example \\boxed{{B}}."
)
JUDGE_PAPER_USER = (
    "Read the description, then answer the multiple-choice question about it using only what the "
    "description says; do not bring in outside knowledge. Choose A, B or C only when the description "
    "clearly supports it; otherwise choose D.\n\n"
    "Description:\n{caption}\n\n"
    "Question: {question}\n"
    "{options}\n\n"
    "Think it over in a few sentences, then finish with a line of the form Answer: \\boxed{{X}}, where X is "
    "a single letter."
)
LAR_JUDGE_SYSTEM = (
    "You check a personal assistant's answer against a reference answer. Judge the meaning, not the wording: "
    "an answer that states the same activity as the reference, in any words, is correct; an answer that "
    "states a different activity, several activities as guesses, or none, is wrong."
)
LAR_JUDGE_USER = ("Question: {question}\nReference answer: {reference}\nAssistant's answer: {answer}\n\n"
                  "Is the assistant's answer correct? Reply with \\boxed{{Correct}} or \\boxed{{Wrong}}.")
LAR_JUDGE_PAPER_USER = (
    "You are an impartial grader. Decide whether a personal assistant's response to the user's question is "
    "Correct or Wrong compared with what the user actually said.\n"
    "Correct: the response carries the core information of what the user said; other words, a paraphrase "
    "or extra detail are fine.\n"
    "Wrong: the core information is missing or contradicted, or the response is vague or beside the point.\n"
    "Ignore style and length. Reply with one word: Correct or Wrong.\n\n"
    "Question: {question}\nWhat the user said: \"{reference}\"\nResponse: {answer}"
)

_PACK_FORMATS = {  # template fields and the placeholders each must keep
    "dialogue_header": ("{i}",), "concept_header": ("{i}",), "query_header": ("{header}",),
    "caption_photo": ("{caption}",), "verification_template": ("{name}", "{question}"),
    "judge_user": ("{caption}", "{question}", "{options}"), "judge_paper_user": ("{caption}", "{question}", "{options}"),
    "lar_judge_user": ("{question}", "{reference}", "{answer}"),
    "lar_judge_paper_user": ("{question}", "{reference}", "{answer}"),
}


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class PromptPack:
    """Every piece of prompt text the layouts use; :data:`DEFAULT_PACK` is covip's wording (see module doc)."""

    name: str = field(default="covip", metadata=_h("The pack's name (recorded with its hash)."))
    caption_instruction: str = field(default=CAPTION_INSTRUCTION, metadata=_h("Personalized captioning."))
    recognition_instruction: str = field(default=RECOGNITION_INSTRUCTION, metadata=_h("Recognition (0-based)."))
    recognition_followup: str = field(default=RECOGNITION_FOLLOWUP, metadata=_h(
        "A further recognition question about the same concept images (the user's next turn, before its image)."))
    verification_template: str = field(default=VERIFICATION_TEMPLATE, metadata=_h("Yes/no; {name}, {question}."))
    describe_instruction: str = field(default=DESCRIBE_INSTRUCTION, metadata=_h("Plain description of one photo."))
    personalization_prompt: str = field(default=PERSONALIZATION_PROMPT, metadata=_h(
        "System prompt of the paper layout's ITR answers and LAR/ITR direct answers."))
    dialogue_header: str = field(default="===== Dialogue {i} =====\n", metadata=_h("Context item header; {i}."))
    dialogue_numbering: int = field(default=1, metadata=_h("Number of the first context item (the authors' "
                                                             "evaluation scripts differ: 0 or 1)."))
    concept_header: str = field(default="===== Concept {i} =====\n", metadata=_h(
        "Recognition concept header; {i} is 0-based, the numbers the answer uses."))
    query_header: str = field(default="===== {header} =====\n", metadata=_h("Query image header; {header}."))
    query_headers: tuple[str, ...] = field(default=QUERY_HEADERS, metadata=_h("Headers training draws from."))
    query_header_weights: tuple[int, ...] = field(default=QUERY_HEADER_WEIGHTS, metadata=_h("Their odds."))
    inference_query_header: str = field(default=INFERENCE_QUERY_HEADER, metadata=_h("The header at inference."))
    vision_id: str = field(default="", metadata=_h(
        "Text before every image, e.g. 'Picture {k}: ' (Qwen's add_vision_id); empty = none."))
    vision_id_numbering: int = field(default=1, metadata=_h("Number of the first image for vision_id."))
    caption_photo: str = field(default="[Photo: {caption}]\n", metadata=_h(
        "Caption-only mode: the text standing in for a context photo; {caption}."))
    questions: Mapping[str, str] = field(default_factory=lambda: dict(DOWNSTREAM_QUESTIONS), metadata=_h(
        "Downstream questions by task (lsd, lar, itr)."))
    paper_questions: Mapping[str, str] = field(default_factory=lambda: dict(PAPER_DOWNSTREAM_QUESTIONS),
                                               metadata=_h("The same for --protocol paper."))
    judge_system: str = field(default=JUDGE_SYSTEM, metadata=_h("Strict CapEval judge: system turn."))
    judge_user: str = field(default=JUDGE_USER, metadata=_h("Strict judge: {caption}, {question}, {options}."))
    judge_paper_user: str = field(default=JUDGE_PAPER_USER, metadata=_h("Paper-protocol judge (one user turn)."))
    lar_judge_system: str = field(default=LAR_JUDGE_SYSTEM, metadata=_h("Strict LAR judge: system turn."))
    lar_judge_user: str = field(default=LAR_JUDGE_USER, metadata=_h("Strict LAR judge; {question}, {reference}, "
                                                                    "{answer}."))
    lar_judge_paper_user: str = field(default=LAR_JUDGE_PAPER_USER, metadata=_h("Paper-protocol LAR judge."))

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "str" and not isinstance(value, str):
                raise InputError(f"prompt pack {self.name!r}: {f.name} must be text, got {type(value).__name__}")
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"prompt pack {self.name!r}: {f.name} must be an integer, got {value!r}")
        for name, needs in _PACK_FORMATS.items():
            missing = [n for n in needs if n not in getattr(self, name)]
            if missing:
                raise InputError(f"prompt pack {self.name!r}: {name} must contain {', '.join(missing)}")
        headers = tuple(str(h) for h in self.query_headers)
        weights = tuple(self.query_header_weights)
        if not headers or len(weights) != len(headers) or any(not isinstance(w, int) or w < 0 for w in weights) \
                or not sum(weights):
            raise InputError(f"prompt pack {self.name!r}: query_headers and query_header_weights need one "
                             "non-negative integer weight per header, not all zero")
        object.__setattr__(self, "query_headers", headers)
        object.__setattr__(self, "query_header_weights", weights)
        for key in ("questions", "paper_questions"):
            qs = dict(getattr(self, key))
            bad = sorted(set(qs) - {"lsd", "lar", "itr"})
            if bad or not all(isinstance(v, str) and v.strip() for v in qs.values()):
                raise InputError(f"prompt pack {self.name!r}: {key} maps lsd/lar/itr to non-empty questions "
                                 f"(unknown: {bad})")
            defaults = DOWNSTREAM_QUESTIONS if key == "questions" else PAPER_DOWNSTREAM_QUESTIONS
            object.__setattr__(self, key, {**defaults, **qs})

    @property
    def hash(self) -> str:
        """sha256 of every piece of text and number (not the name): two packs with one hash prompt alike."""
        body = {k: v for k, v in asdict(self).items() if k != "name"}
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def tag(self) -> str:
        """The prompt version for caches and reports: :data:`PROMPT_VERSION` for covip's own text, plus the
        pack's name and hash for any other."""
        if self.hash == _DEFAULT_HASH:
            return PROMPT_VERSION
        return f"{PROMPT_VERSION}+{self.name}:{self.hash[:16]}"

    def describe(self) -> dict[str, str]:
        """``{"name", "hash", "tag"}`` for result files."""
        return {"name": self.name, "hash": self.hash, "tag": self.tag()}


DEFAULT_PACK = PromptPack()
_DEFAULT_HASH = DEFAULT_PACK.hash
_MAX_PACK_BYTES = 1 << 20


def load_pack(source: str | Path | Mapping[str, Any] | PromptPack | None) -> PromptPack:
    """A pack from a TOML/JSON file (any subset of :class:`PromptPack`'s fields; the rest covip's), a mapping,
    a pack, or None (covip's). Unknown keys and wrong types are refused with the field named."""
    if source is None:
        return DEFAULT_PACK
    if isinstance(source, PromptPack):
        return source
    if isinstance(source, Mapping):
        data, origin = dict(source), "the prompt pack"
    else:
        path = Path(source).expanduser()
        origin = str(path)
        try:
            if path.stat().st_size > _MAX_PACK_BYTES:
                raise InputError(f"{path}: a prompt pack is text of at most 1 MiB")
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read the prompt pack {path} ({exc.strerror or exc})") from None
        try:
            if path.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(raw.decode("utf-8"))
            else:
                data = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'} "
                             f"prompt pack ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: a prompt pack is a table of fields, got {type(data).__name__}")
        data.setdefault("name", path.stem)
    known = {f.name for f in fields(PromptPack)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{origin}: unknown prompt pack field(s) {unknown}; known: {sorted(known)}")
    try:
        return replace(DEFAULT_PACK, **data)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{origin}: {exc}") from None


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


def _pack(pack: PromptPack | None) -> PromptPack:
    if pack is None:
        return DEFAULT_PACK
    if not isinstance(pack, PromptPack):
        raise InputError(f"pack must be a PromptPack (see covip.sdk.prompts.load_pack), not {type(pack).__name__}")
    return pack


def _vision_ids(messages: list[dict], pack: PromptPack) -> list[dict]:
    """Put the pack's vision id (e.g. 'Picture 1: ') before every image, numbered across the chat."""
    if not pack.vision_id:
        return messages
    k = pack.vision_id_numbering
    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    parts.append(_text(pack.vision_id.format(k=k)))
                    k += 1
                parts.append(part)
            msg = {**msg, "content": parts}
        out.append(msg)
    return out


def dialogue_header(i: int, pack: PromptPack | None = None) -> str:
    """Header of the i-th context dialogue (numbered from the pack's ``dialogue_numbering``, 1 by default)."""
    return _pack(pack).dialogue_header.format(i=i)


def concept_header(i: int, pack: PromptPack | None = None) -> str:
    """Header of the i-th (0-based) concept in the recognition prompt."""
    return _pack(pack).concept_header.format(i=i)


def _query_header(header: str | None, rng: random.Random | None, pack: PromptPack) -> str:
    if header is None:
        header = rng.choices(pack.query_headers, weights=pack.query_header_weights)[0] if rng is not None \
            else pack.inference_query_header
    if header not in (*pack.query_headers, pack.inference_query_header):
        raise InputError(f"query header must be one of {pack.query_headers}, not {header!r}")
    return pack.query_header.format(header=header)


def _context_parts(context: Sequence[ContextEntry], pack: PromptPack) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for i, item in enumerate(context):
        if not isinstance(item, ContextEntry):
            raise InputError(f"context item {i + 1} must be a ContextEntry, not {type(item).__name__}")
        parts.append(_text(dialogue_header(i + pack.dialogue_numbering, pack)))
        if item.image is not None:
            parts.append(_image(item.image))
        elif item.caption is not None:
            parts.append(_text(pack.caption_photo.format(caption=item.caption.strip())))
        else:
            raise InputError(f"context item {i + 1} has neither an image nor a caption")
        parts.append(_text(f"{item.dialogue.strip()}\n\n"))
    return parts


def _check_question(question: Any) -> str:
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; ask something about the photo")
    return question.strip()


def _caption_turn(context: Sequence[ContextEntry], query_image: Any, header: str | None, rng: random.Random | None,
                  instruction: str | None, pack: PromptPack) -> dict:
    if query_image is None:
        raise InputError("caption_messages needs the query image")
    parts = _context_parts(context, pack)
    parts += [_text(_query_header(header, rng, pack)), _image(query_image),
              _text(pack.caption_instruction if instruction is None else instruction)]
    return {"role": "user", "content": parts}


def caption_messages(context: Sequence[ContextEntry], query_image: Any, *, header: str | None = None,
                     rng: random.Random | None = None, instruction: str | None = None,
                     pack: PromptPack | None = None) -> list[dict]:
    """The personalized-captioning chat: context dialogues, the query image, the captioning instruction.

    Inference uses the "New Image" header; training passes ``rng`` to draw the header like the authors.
    """
    pack = _pack(pack)
    return _vision_ids([_caption_turn(context, query_image, header, rng, instruction, pack)], pack)


Exchange = tuple[str, str]
"""One earlier exchange of a conversation about the same photo: (the user's question, the assistant's answer)."""


def _turns(history: Sequence[Exchange]) -> list[dict]:
    """Earlier exchanges as chat turns, oldest first (kept as given: the engine's KV cache of the previous
    turn is reused only when the same text comes back)."""
    out: list[dict] = []
    for question, answer in history:
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return out


def _user_system(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def answer_messages(context: Sequence[ContextEntry], query_image: Any, caption: str, question: str, *,
                    history: Sequence[Exchange] = (), system: str | None = None,
                    pack: PromptPack | None = None) -> list[dict]:
    """The CAG answer pass: [the app's system turn], the caption chat, the caption as the assistant's turn,
    the earlier exchanges about this photo, then the question (each follow-up extends the previous prompt)."""
    question = _check_question(question)
    pack = _pack(pack)
    return _vision_ids([*_user_system(system), _caption_turn(context, query_image, None, None, None, pack),
                        {"role": "assistant", "content": caption}, *_turns(history),
                        {"role": "user", "content": question}], pack)


def direct_messages(context: Sequence[ContextEntry], query_image: Any, question: str, *,
                    history: Sequence[Exchange] = (), system: str | None = None,
                    pack: PromptPack | None = None) -> list[dict]:
    """Without CAG: [the app's system turn], the context dialogues, the query image and the first question in
    one turn, then the earlier answers and follow-ups, then the question."""
    question = _check_question(question)
    pack = _pack(pack)
    first, rest = (history[0][0], history) if history else (question, ())
    parts = _context_parts(context, pack)
    parts += [_text(_query_header(None, None, pack)), _image(query_image), _text(first)]
    turns = [{"role": "user", "content": parts}]
    if rest:
        turns.append({"role": "assistant", "content": rest[0][1]})
        turns += _turns(rest[1:])
        turns.append({"role": "user", "content": question})
    return _vision_ids([*_user_system(system), *turns], pack)


def _paper_block(context: Sequence[ContextEntry], query_image: Any, pack: PromptPack) -> list[dict[str, Any]]:
    if query_image is None:
        raise InputError("the paper layout needs the query image")
    return [*_context_parts(context, pack), _text(_query_header(None, None, pack)), _image(query_image)]


_SYSTEMS = ("caption", "personalization", "none")


def _system(system: str, pack: PromptPack, app_system: str | None = None) -> list[dict]:
    if system not in _SYSTEMS:
        raise InputError(f"system must be one of {_SYSTEMS}, got {system!r}")
    text = {"caption": pack.caption_instruction, "personalization": pack.personalization_prompt}.get(system)
    text = "\n\n".join(t for t in (text, app_system) if t)  # one system turn: many templates allow no second
    return [{"role": "system", "content": text}] if text else []


def paper_answer_messages(context: Sequence[ContextEntry], query_image: Any, caption: str, question: str, *,
                          system: str = "caption", history: Sequence[Exchange] = (), app_system: str | None = None,
                          pack: PromptPack | None = None) -> list[dict]:
    """The paper's CAG answer pass: a system turn (``"caption"``: the captioning instruction,
    ``"personalization"``: the personalization prompt, ``"none"``) with the app's own system text after it,
    context + query image, caption, the earlier exchanges, question."""
    question = _check_question(question)
    pack = _pack(pack)
    return _vision_ids([*_system(system, pack, app_system),
                        {"role": "user", "content": _paper_block(context, query_image, pack)},
                        {"role": "assistant", "content": caption}, *_turns(history),
                        {"role": "user", "content": question}], pack)


def paper_direct_messages(context: Sequence[ContextEntry], query_image: Any, question: str, *,
                          system: str = "none", pack: PromptPack | None = None) -> list[dict]:
    """The paper's answer without CAG: an optional system turn, then context, query image and question."""
    question = _check_question(question)
    pack = _pack(pack)
    return _vision_ids([*_system(system, pack), {"role": "user", "content": [
        *_paper_block(context, query_image, pack), _text(question)]}], pack)


def recognition_messages(concept_images: Sequence[Any], query_image: Any, *,
                         pack: PromptPack | None = None) -> list[dict]:
    """Which of these concepts (0-based) appear in the query image? Answered as ``\\boxed{[...]}``."""
    if not concept_images:
        raise InputError("recognition needs at least one concept image")
    pack = _pack(pack)
    parts: list[dict[str, Any]] = []
    for i, img in enumerate(concept_images):
        parts += [_text(concept_header(i, pack)), _image(img)]
    parts += [_text(pack.recognition_instruction), _image(query_image)]
    return _vision_ids([{"role": "user", "content": parts}], pack)


def recognition_followup_messages(query_image: Any, *, image_number: int, pack: PromptPack | None = None) -> list[dict]:
    """The next user turn after a recognition answer: the same question about another query image.

    Appended to a recognition chat (after the assistant's answer) it asks about one more photo against the
    same concept images; SFT uses it to train several answers per forward pass of one context.
    ``image_number`` is the image's position in the whole chat (0-based), for packs that number images.
    """
    pack = _pack(pack)
    parts = [_text(pack.recognition_followup)]
    if pack.vision_id:
        parts.append(_text(pack.vision_id.format(k=pack.vision_id_numbering + image_number)))
    return [{"role": "user", "content": [*parts, _image(query_image)]}]


def verification_messages(reference_image: Any, query_image: Any, name: str, question: str, *,
                          pack: PromptPack | None = None) -> list[dict]:
    """Yes/no: is the object named ``name`` in image 1 also in image 2?"""
    pack = _pack(pack)
    text = pack.verification_template.format(name=name, question=question.strip())
    return _vision_ids([{"role": "user", "content": [_image(reference_image), _image(query_image), _text(text)]}],
                       pack)


def describe_messages(image: Any, *, pack: PromptPack | None = None) -> list[dict]:
    """A plain, non-personal description of one photo (the stand-in caption of caption-only memories)."""
    pack = _pack(pack)
    return _vision_ids([{"role": "user", "content": [_image(image), _text(pack.describe_instruction)]}], pack)


def judge_messages(caption: str, question: str, options: Mapping[str, str], *, style: str = "strict",
                   pack: PromptPack | None = None) -> list[dict[str, str]]:
    """The CapEval judge's chat for one question about one caption (``options``: letter -> text, in order).
    ``strict``: a system turn with the rules, answered by a lone boxed letter; ``paper``: one user turn,
    brief reasoning allowed, as the authors' judge is asked."""
    pack = _pack(pack)
    body = dict(caption=caption.strip() or "(empty)", question=question.strip(),
                options="\n".join(f"{k}. {v}" for k, v in options.items()))
    if style == "paper":
        return [{"role": "user", "content": pack.judge_paper_user.format(**body)}]
    if style != "strict":
        raise InputError(f"judge style must be 'strict' or 'paper', got {style!r}")
    return [{"role": "system", "content": pack.judge_system}, {"role": "user", "content": pack.judge_user.format(**body)}]


def lar_judge_messages(question: str, reference: str, answer: str, *, style: str = "strict",
                       pack: PromptPack | None = None) -> list[dict[str, str]]:
    """The LAR judge's chat: is ``answer`` the same action as ``reference``? ``strict`` wants
    ``\\boxed{Correct}``/``\\boxed{Wrong}``; ``paper`` one word, as the authors' judge."""
    pack = _pack(pack)
    body = dict(question=question.strip(), reference=reference.strip(), answer=answer.strip() or "(empty)")
    if style == "paper":
        return [{"role": "user", "content": pack.lar_judge_paper_user.format(**body)}]
    if style != "strict":
        raise InputError(f"judge style must be 'strict' or 'paper', got {style!r}")
    return [{"role": "system", "content": pack.lar_judge_system},
            {"role": "user", "content": pack.lar_judge_user.format(**body)}]


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
