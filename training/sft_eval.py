"""Held-out evaluation of a model on the synthetic world's test split (concepts it never trained on).

* :func:`generate_answers`: greedy answers to covip Samples, batched, with the prompts of
  :mod:`covip.sdk.prompts` (the inference layout: the caption prompt's ``New Image`` header).
* :func:`score_recognition`: r_vis (set F1 of the first ``\\boxed{...}``) per sample, plus two chance
  levels computed on the same samples, so "above chance" is measured rather than assumed:

  - ``constant``: the best image-blind answer, one fixed index set given to every sample, picked with
    hindsight (the highest mean F1 any constant answer reaches on these very labels: an optimistic bar);
  - ``permutation``: the model's own answers shuffled across samples (same answer formats and set sizes,
    no link to the images), repeated; ``p_value`` is the share of shuffles that score at least the real
    mean F1 (with the +1 correction), i.e. how likely chance alone would give the model's score.

* :func:`score_verification`: yes/no accuracy; :func:`score_captions`: CapEval Acc+ / Acc- from the
  lexical judge (valid for the world's templated questions).
* :func:`evaluate_heldout`: all of the above for one model, as a JSON-able dict.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

from covip.sdk.errors import InputError
from covip.training.data.schema import Sample
from covip.training.gspo_data import placeholder_messages, sample_messages
from covip.training.rewards import parse_index_set, recognition_reward, verification_reward

__all__ = [
    "generate_answers",
    "score_recognition",
    "score_verification",
    "score_captions",
    "score_descriptions",
    "evaluate_heldout",
]

log = logging.getLogger(__name__)


def generate_answers(model: Any, processor: Any, samples: Sequence[Sample | list[dict]], *, max_new_tokens: int,
                     batch_size: int = 16, progress: bool | None = None, desc: str = "answers",
                     pack: Any = None) -> list[str]:
    """Greedy answers (special tokens dropped) to ``samples`` (Samples, worded by ``pack``, or ready chats)."""
    import torch
    from PIL import Image

    from covip.sdk.progress import progress_bar

    tok = processor.tokenizer
    stops = [t for t in (tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id) if t is not None]
    was_training = model.training
    model.eval()
    out: list[str] = []
    bar = progress_bar(total=len(samples), desc=desc, unit="sample", enabled=progress)
    try:
        for start in range(0, len(samples), max(1, batch_size)):
            chunk = samples[start:start + max(1, batch_size)]
            texts, images = [], []
            for s in chunk:
                messages, paths = placeholder_messages(s if isinstance(s, list) else sample_messages(s, pack=pack))
                texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
                loaded = []
                for p in paths:
                    with Image.open(p) as im:
                        loaded.append(im.convert("RGB"))
                images.append(loaded)
            inputs = processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
            inputs = inputs.to(model.device)
            with torch.inference_mode():
                ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                     pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _set_f1(pred: set[int] | None, gold: set[int]) -> float:
    if not pred:
        return 0.0
    hits = len(pred & gold)
    return 0.0 if hits == 0 else 2.0 * hits / (len(pred) + len(gold))


def score_recognition(answers: Sequence[str], samples: Sequence[Sample], *, permutations: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """Set F1 per sample, its mean, and the chance levels of the module doc."""
    if len(answers) != len(samples) or not samples:
        raise InputError(f"{len(answers)} answers for {len(samples)} recognition samples")
    golds = [set(int(i) for i in (s.answer or ())) for s in samples]
    scores = [recognition_reward(a, s.answer or ()) for a, s in zip(answers, samples)]
    preds = [parse_index_set(a) for a in answers]
    n_ctx = max(s.n_context for s in samples)
    best_set, best = (), -1.0
    for k in range(1, n_ctx + 1):
        for combo in itertools.combinations(range(n_ctx), k):
            value = _mean([_set_f1(set(combo), g) for g in golds])
            if value > best + 1e-12:
                best_set, best = combo, value
    observed = _mean(scores)
    rng = random.Random(f"covip-sft-permutation:{seed}")
    order = list(range(len(preds)))
    null = []
    for _ in range(permutations):
        rng.shuffle(order)
        null.append(_mean([_set_f1(preds[j], g) for j, g in zip(order, golds)]))
    null.sort()
    exceed = sum(1 for v in null if v >= observed - 1e-12)
    return {
        "n": len(samples),
        "f1": round(observed, 6),
        "parsed": round(_mean([p is not None for p in preds]), 6),
        "accuracy": round(_mean([p == g for p, g in zip(preds, golds)]), 6),
        "per_sample": [round(x, 6) for x in scores],
        "constant": {"answer": list(best_set), "f1": round(best, 6)},
        "permutation": {"n": permutations, "mean": round(_mean(null), 6),
                        "p99": round(null[min(len(null) - 1, int(0.99 * len(null)))], 6),
                        "p_value": round((exceed + 1) / (permutations + 1), 6)},
    }


def score_verification(answers: Sequence[str], samples: Sequence[Sample]) -> dict[str, Any]:
    """Yes/no accuracy, and the share of the majority answer (the constant-answer chance level)."""
    if len(answers) != len(samples) or not samples:
        raise InputError(f"{len(answers)} answers for {len(samples)} verification samples")
    right = [verification_reward(a, str(s.answer)) for a, s in zip(answers, samples)]
    yes = _mean([str(s.answer) == "yes" for s in samples])
    return {"n": len(samples), "accuracy": round(_mean(right), 6), "constant": round(max(yes, 1 - yes), 6)}


def score_captions(captions: Sequence[str], samples: Sequence[Sample]) -> dict[str, Any]:
    """CapEval Acc+ / Acc- (overall and per bucket of present concepts) with the lexical judge."""
    from covip.training.eval.capeval import CapEvalItem, judge_captions
    from covip.training.eval.scoring import score_records
    from covip.training.judges import make_judge

    if len(captions) != len(samples) or not samples:
        raise InputError(f"{len(captions)} captions for {len(samples)} caption samples")
    items = [CapEvalItem(s.id, tuple(s.present or ()), tuple(s.pos_qas), tuple(s.neg_qas), s) for s in samples]
    records = judge_captions(items, {s.id: c for s, c in zip(samples, captions)}, make_judge("lexical"),
                             progress=False)
    buckets = score_records(records)
    overall = buckets["overall"]
    return {"n": len(samples), "acc_pos": overall.acc_pos, "acc_neg": overall.acc_neg,
            "buckets": {k: v.to_dict() for k, v in buckets.items() if v.n_samples}}


def score_descriptions(answers: Sequence[str], looks: Sequence[Any]) -> dict[str, Any]:
    """Share of descriptions that state the look exactly, and of those that get kind and body colour right."""
    from covip.training.data.targets import describe_target, look_phrase

    if len(answers) != len(looks) or not looks:
        raise InputError(f"{len(answers)} descriptions for {len(looks)} photos")
    exact = [a.strip() == describe_target(look) for a, look in zip(answers, looks)]
    core = [look_phrase(look).split(" with ")[0] in a for a, look in zip(answers, looks)]
    return {"n": len(looks), "exact": round(_mean(exact), 6), "kind_and_colour": round(_mean(core), 6)}


def evaluate_heldout(model: Any, processor: Any, heldout: Mapping[str, Sequence[Sample]], *,
                     max_new_tokens: int = 160, caption_max_new_tokens: int = 200, batch_size: int = 16,
                     permutations: int = 2000, progress: bool | None = None, label: str = "",
                     world: Any = None, pack: Any = None) -> dict[str, Any]:
    """Answer and score every held-out sample type in ``heldout`` (prompts worded by ``pack``, a
    :class:`~covip.sdk.prompts.PromptPack` or None for covip's); examples of the answers are kept.

    ``describe`` (plain descriptions of the samples' one-concept photos) needs the ``world`` for the looks.
    """
    from covip.sdk import prompts

    report: dict[str, Any] = {}
    for stype, samples in heldout.items():
        budget = caption_max_new_tokens if stype == "caption" else max_new_tokens
        desc = f"eval {label} {stype}".replace("  ", " ")
        if stype == "describe":
            from covip.training.sft_data import describe_items

            if world is None:
                raise InputError("evaluating descriptions needs the world (the concepts' looks)")
            items = describe_items(samples, world)
            answers = generate_answers(model, processor, [prompts.describe_messages(p, pack=pack) for p, _ in items],
                                       max_new_tokens=budget, batch_size=batch_size, progress=progress, desc=desc)
            scored = score_descriptions(answers, [look for _, look in items])
            scored["examples"] = [{"image": p, "answer": a} for (p, _), a in list(zip(items, answers))[:3]]
            report[stype] = scored
            continue
        answers = generate_answers(model, processor, samples, max_new_tokens=budget, batch_size=batch_size,
                                   progress=progress, desc=desc, pack=pack)
        if stype == "recognition":
            scored = score_recognition(answers, samples, permutations=permutations)
        elif stype == "verification":
            scored = score_verification(answers, samples)
        elif stype == "caption":
            scored = score_captions(answers, samples)
        else:
            raise InputError(f"cannot evaluate sample type {stype!r}")
        scored["examples"] = [{"id": s.id, "answer": a} for s, a in list(zip(samples, answers))[:3]]
        report[stype] = scored
    return report
