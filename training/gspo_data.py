"""covip Samples -> the ``datasets.Dataset`` trl's GRPOTrainer trains on.

One row per sample:

* ``prompt``: the conversational prompt built by :mod:`covip.sdk.prompts` (the only place prompts are
  made): :func:`~covip.sdk.prompts.caption_messages` with the query header drawn by a seeded rng (as the
  authors do in training), :func:`~covip.sdk.prompts.recognition_messages` or
  :func:`~covip.sdk.prompts.verification_messages`. Each image part is left as a bare ``{"type": "image"}``
  placeholder: trl 1.16 fills the placeholders, in order, from the row's ``images`` column
  (``prepare_multimodal_messages``), then the processor renders the chat template with the pixels.
* ``images``: the sample's image files in prompt order (context images, then the query image last),
  a ``List(Image())`` column, so trl receives decoded PIL images.
* the columns :class:`~covip.training.rewards.CoViPReward` reads: ``sample_type``, ``present``,
  ``pos_qas`` / ``neg_qas`` (question, options A-D, ``answer`` = the letter the judge must give),
  ``answer`` (verification: yes/no; recognition: the indices as text; caption: null); plus ``sample_id``.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covip.sdk import prompts
from covip.sdk.errors import DataError, InputError
from covip.training.data.schema import MCQA, Sample, read_jsonl
from covip.training.gspo_config import DataSection

if TYPE_CHECKING:
    from covip.training.sft_data import World

__all__ = [
    "DATASET_COLUMNS",
    "sample_messages",
    "placeholder_messages",
    "sample_row",
    "build_dataset",
    "train_path",
    "training_world",
    "load_training_samples",
]

log = logging.getLogger(__name__)

DATASET_COLUMNS = ("prompt", "images", "sample_id", "sample_type", "present", "pos_qas", "neg_qas", "answer")


def sample_messages(sample: Sample, *, rng: random.Random | None = None,
                    verification_question: str = "Is {name} also in the second image?",
                    default_name: str = "the object", pack: prompts.PromptPack | None = None) -> list[dict[str, Any]]:
    """The chat for one sample, from :mod:`covip.sdk.prompts` (image parts carry the image paths) in the
    wording of ``pack`` (covip's by default).

    ``rng`` draws the caption prompt's query header (training); None uses the inference header.
    """
    images = list(sample.images)
    if sample.sample_type == "caption":
        context = [prompts.ContextEntry(dialogue=d, image=img) for d, img in zip(sample.dialogues, images[:-1])]
        return prompts.caption_messages(context, images[-1], rng=rng, pack=pack)
    if sample.sample_type == "recognition":
        return prompts.recognition_messages(images[:-1], images[-1], pack=pack)
    if sample.sample_type == "verification":
        name = sample.concept_names[0] if sample.concept_names else default_name
        return prompts.verification_messages(images[0], images[1], name, verification_question.format(name=name),
                                             pack=pack)
    raise DataError(f"sample {sample.id!r}: unknown sample_type {sample.sample_type!r}",
                    sample_id=sample.id, field="sample_type")


def placeholder_messages(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(messages with every image part replaced by a bare ``{"type": "image"}`` placeholder, the images in order).

    Text parts keep only ``type`` and ``text`` so every row has the same Arrow struct.
    """
    out, images = [], []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        else:
            parts = []
            for part in content:
                if part.get("type") == "image":
                    images.append(part.get("image"))
                    parts.append({"type": "image", "text": None})
                else:
                    parts.append({"type": "text", "text": part.get("text", "")})
        out.append({"role": msg["role"], "content": parts})
    return out, images


def _qa(qa: MCQA) -> dict[str, Any]:
    return {"id": qa.id, "question": qa.question, "options": dict(qa.options), "answer": qa.correct}


def sample_row(sample: Sample, *, rng: random.Random | None = None,
               verification_question: str = "Is {name} also in the second image?",
               default_name: str = "the object", pack: prompts.PromptPack | None = None) -> dict[str, Any]:
    """The dataset row of one sample (see the module doc)."""
    messages = sample_messages(sample, rng=rng, verification_question=verification_question,
                               default_name=default_name, pack=pack)
    prompt, images = placeholder_messages(messages)
    if [str(p) for p in images] != [str(p) for p in sample.images]:
        raise DataError(f"sample {sample.id!r}: the prompt shows {len(images)} images in another order than the "
                        f"sample's {len(sample.images)}", sample_id=sample.id, field="images")
    if sample.sample_type == "verification":
        answer = str(sample.answer)
    elif sample.sample_type == "recognition":
        answer = json.dumps(list(sample.answer or ()))
    else:
        answer = None
    present = list(sample.present) if sample.present is not None else (
        list(sample.answer) if sample.sample_type == "recognition" else [])
    return {
        "prompt": prompt,
        "images": [str(p) for p in images],
        "sample_id": sample.id,
        "sample_type": sample.sample_type,
        "present": present,
        "pos_qas": [_qa(q) for q in sample.pos_qas],
        "neg_qas": [_qa(q) for q in sample.neg_qas],
        "answer": answer,
    }


def _features() -> Any:
    import datasets

    text = datasets.Value("string")
    qa = {"id": text, "question": text, "options": {k: text for k in "ABCD"}, "answer": text}
    return datasets.Features({
        "prompt": datasets.List({"role": text, "content": datasets.List({"type": text, "text": text})}),
        "images": datasets.List(datasets.Image()),
        "sample_id": text,
        "sample_type": text,
        "present": datasets.List(datasets.Value("int64")),
        "pos_qas": datasets.List(qa),
        "neg_qas": datasets.List(qa),
        "answer": text,
    })


def build_dataset(samples: Sequence[Sample], *, seed: int = 0,
                  verification_question: str = "Is {name} also in the second image?",
                  default_name: str = "the object", pack: prompts.PromptPack | None = None,
                  world: World | None = None, invented_names: float = 0.0) -> Any:
    """A ``datasets.Dataset`` of :func:`sample_row` rows; ``seed`` fixes the caption query-header draws.

    ``world`` (the synthetic world the samples come from): every caption sample gets fresh identities and
    questions (:func:`covip.training.sft_data.fresh_caption_sample`, drawn with ``seed`` from their own rng, so
    the header draws stay those without it; ``invented_names`` as there). Image paths must be absolute or
    relative to the working directory (see :func:`load_training_samples`, which resolves them under the data's
    image root).
    """
    import datasets

    if not samples:
        raise InputError("no training samples: the dataset is empty")
    rng = random.Random(f"covip-gspo-headers:{seed}")
    if world is not None:
        from covip.training.sft_data import check_training_concepts, fresh_caption_sample

        check_training_concepts(samples, world)
        fresh_rng = random.Random(f"covip-gspo-identities:{seed}")
        samples = [fresh_caption_sample(s, world, fresh_rng, invented=invented_names)[0]
                   if s.sample_type == "caption" else s for s in samples]
    rows = [sample_row(s, rng=rng, verification_question=verification_question, default_name=default_name,
                       pack=pack) for s in samples]
    return datasets.Dataset.from_list(rows, features=_features())


def train_path(data: DataSection, output_dir: str | Path) -> Path:
    """The training JSONL path of a config (``<output_dir>/synth/train.jsonl`` when data.train is null)."""
    if data.train:
        return Path(data.train).expanduser()
    if not data.synthesize_if_missing:
        raise InputError("config key 'data.train' is null: give a Sample JSONL path (covip data synth writes one) "
                         "or set data.synthesize_if_missing: true")
    return Path(output_dir).expanduser() / "synth" / "train.jsonl"


def training_world(data: DataSection, output_dir: str | Path) -> World | None:
    """The synthetic world behind the training samples when ``data.fresh_identities`` asks for it (its
    ``concepts.json`` beside the training JSONL), else None."""
    if not data.fresh_identities:
        return None
    from covip.training.sft_data import CONCEPTS_FILE, load_world

    root = train_path(data, output_dir).parent
    if not (root / CONCEPTS_FILE).is_file():
        raise InputError(f"data.fresh_identities needs the synthetic world's {CONCEPTS_FILE} beside data.train "
                         f"({root / CONCEPTS_FILE} is missing): train on a `covip data synth` folder's train.jsonl, "
                         "or set data.fresh_identities: false")
    return load_world(root)


def load_training_samples(data: DataSection, output_dir: str | Path, *, progress: bool | None = None) -> list[Sample]:
    """Read (or first synthesize) the training samples of a config, with image paths resolved and checked.

    Filters to ``data.sample_types``, drops samples without what their reward needs (a caption sample with
    no questions), and subsamples ``data.max_samples`` with ``data.seed`` (keeping file order).
    """
    path = train_path(data, output_dir)
    if not path.is_file():
        if not data.synthesize_if_missing:
            raise InputError(f"the training data {path} does not exist; run `covip data synth --out {path.parent}` "
                             "or set data.synthesize_if_missing: true")
        from covip.training.data.synth import SynthConfig, synthesize

        try:
            synth_config = SynthConfig(**data.synth)
        except TypeError as exc:
            raise InputError(f"config key 'data.synth': {exc}") from None
        log.info("synthesizing training data into %s", path.parent)
        report = synthesize(synth_config, path.parent, progress=progress)
        path = Path(report.out_dir) / path.name
        if not path.is_file():
            raise InputError(f"the synthetic dataset in {report.out_dir} has no {path.name}; set data.train to "
                             "<folder>/train.jsonl")
    root = Path(data.image_root).expanduser() if data.image_root else path.parent
    samples = read_jsonl(path, image_root=root, check_images=True)
    wanted = [s for s in samples if s.sample_type in data.sample_types]
    usable = [s for s in wanted if s.is_labelled]
    if len(usable) < len(wanted):
        log.warning("%d of %d samples carry no label for their reward and are skipped", len(wanted) - len(usable),
                    len(wanted))
    if not usable:
        raise InputError(f"{path} has no usable samples of the types {data.sample_types}")
    if data.max_samples is not None and len(usable) > data.max_samples:
        keep = sorted(random.Random(f"covip-gspo-subsample:{data.seed}").sample(range(len(usable)), data.max_samples))
        usable = [usable[i] for i in keep]
    return usable
