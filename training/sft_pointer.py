"""Attention-pointer supervision for SFT: an auxiliary loss that shows three attention heads where to look
while the retrieval circuit forms (``trainer.pointer_loss`` > 0; training only, inference is unchanged).

Why: to name a held-out concept in a new photo, the model must match the query photo against the context
photos and copy the name that follows the matching one: an induction-style chain of attention steps (Olsson
et al., "In-context learning and induction heads", 2022). From random weights on two CPU cores that chain
forms after a long loss plateau (750-1,500 steps when it forms at at all; training/README.md measures it),
because each step gets a useful gradient only once the others work. Supervising the attention pattern of
one head per step gives every step its own dense signal; the answer itself is still learned from the
ordinary completion loss. The supervision needs only what a caption row already holds (which context item
carries which name and facts, and which of them the answer says), so it uses no label the evaluation hides.

Pointers of one caption row (``layer``/``head`` from :data:`HEADS`):

* ``bind``: the first token of context item i's name, at its first mention after image i, attends to
  image i's tokens (the name's position learns what its photo looks like);
* ``look``: each answer position that predicts a context name attends to the query image's tokens;
* ``copy``: that position attends to the name's first token in its context item (the match); and each
  answer position that predicts a remembered fact (place, time, event, action) stated verbatim in a context
  item attends to the fact's first token there.

Pointers of one recognition row (concept images numbered from 0 by headers *before* them, answer
``\\boxed{[i, ...]}``; one query, or several in follow-up turns):

* ``label``: every token of concept image i attends to the digit i of its header;
* ``match``: every token of a query image attends to the images of the concepts its answer names;
* ``read``: each answer position that predicts one of those digits attends to that query image.

Here the match compares image tokens with image tokens, one attention step deep; in the caption chain it
compares what two other heads copied, and in the research loop that step did not form in 600 steps while
the recognition chain formed in 300 (training/README.md).

The loss is the mean over pointers of ``-log`` (the attention mass the head puts on the target tokens,
averaged over the pointer's source positions). Rows of another layout (verification, descriptions) get none.

The pointers shape where the heads look, not what they carry. :func:`probe_loss` (``trainer.probe_loss``)
supervises that too, with the logit lens (nostalgebraist, "interpreting GPT: the logit lens", 2020): after
each pointer's layer, the residual stream at its source positions, read through the model's own final norm
and (tied) LM head, should name the digit the chain carries there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["HEADS", "KINDS", "SPANS_COLUMN", "WEIGHTS_KEY", "PointerCollator", "pointer_targets",
           "recognition_pointers", "pointer_loss", "probe_loss", "AttentionTap"]

HEADS: Mapping[str, tuple[int, int]] = {"bind": (0, 0), "look": (0, 1), "copy": (1, 0),
                                        "label": (0, 0), "match": (1, 0), "read": (2, 0)}
"""(decoder layer, attention head) supervised for each pointer kind."""
KINDS: Mapping[str, tuple[str, ...]] = {"caption": ("bind", "look", "copy"), "recognition": ("label", "match", "read")}
"""The pointer kinds of each sample type's rows."""
WEIGHTS_KEY = "label_weights"
"""The batch key of per-token answer-loss weights (:class:`PointerCollator` with a format weight below 1)."""
SPANS_COLUMN = "context_spans"
"""The dataset column pointer supervision reads: per context item (in order) its name, then the fact values
its dialogue states verbatim; [] for rows without context items."""

Pointer = tuple[str, list[int], list[int]]  # (kind, positions that attend, positions they should attend to)
_BOX = re.compile(r"\\boxed\{\[([0-9,\s]*)\]")


def _runs(ids: Sequence[int], token: int) -> list[list[int]]:
    """Positions of ``token`` grouped into maximal runs (one run per image)."""
    runs: list[list[int]] = []
    for pos, tok in enumerate(ids):
        if tok == token:
            if runs and runs[-1][-1] == pos - 1:
                runs[-1].append(pos)
            else:
                runs.append([pos])
    return runs


def _find(ids: Sequence[int], pattern: Sequence[int], start: int, stop: int) -> int | None:
    """First position p in [start, stop) where ``pattern`` starts, else None."""
    n = len(pattern)
    for p in range(start, max(start, stop - n + 1)):
        if list(ids[p:p + n]) == list(pattern):
            return p
    return None


def pointer_targets(ids: Sequence[int], labels: Sequence[int], spans: Sequence[Sequence[str]], tokenizer: Any,
                    image_token_id: int) -> list[Pointer]:
    """The pointers of one row (see the module doc); ``ids``/``labels`` are the collated row (-100 = no
    label), ``spans`` its context items' [name, *facts] in order. Returns [] when the row does not have the
    layout (one image per context item plus the query image, each name found after its image); a fact not
    found verbatim (e.g. capitalized at a sentence start) gets no pointer."""
    ids, labels = list(ids), list(labels)
    runs = _runs(ids, image_token_id)
    if not spans or len(runs) != len(spans) + 1 or any(not item for item in spans):
        return []
    answer_start = next((p for p, lab in enumerate(labels) if lab != -100), None)
    if answer_start is None or answer_start <= runs[-1][-1]:
        return []
    pointers: list[Pointer] = []
    sources: list[tuple[int, int, list[int]]] = []  # (item, source position, pattern) of each span
    for i, item in enumerate(spans):
        stop = runs[i + 1][0]
        for j, text in enumerate(item):
            pattern = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            pos = _find(ids, pattern, runs[i][-1] + 1, stop)
            if pos is None:
                if j == 0:  # the name must be there: this is not the layout the pointers are for
                    return []
                continue
            if j == 0:
                pointers.append(("bind", [pos], list(runs[i])))
            sources.append((j, pos, pattern))
    for j, source, pattern in sources:
        pos = answer_start
        while (hit := _find(ids, pattern, pos, len(ids))) is not None:
            if labels[hit] != -100:  # the answer says it: the position before it predicts it
                if j == 0:
                    pointers.append(("look", [hit - 1], list(runs[-1])))
                pointers.append(("copy", [hit - 1], [source]))
            pos = hit + 1
    return pointers


def recognition_pointers(ids: Sequence[int], labels: Sequence[int], tokenizer: Any,
                         image_token_id: int) -> list[Pointer]:
    """The pointers of one recognition row (see the module doc); [] when the row is not one: no labelled
    ``\\boxed{[...]}`` after a query image, a header digit missing, or more than ten concept images."""
    ids, labels = list(ids), list(labels)
    runs = _runs(ids, image_token_id)
    answer_start = next((p for p, lab in enumerate(labels) if lab != -100), None)
    if answer_start is None:
        return []
    n_context = sum(run[-1] < answer_start for run in runs) - 1
    if not 1 <= n_context <= 10:
        return []
    digits = [tokenizer(str(i), add_special_tokens=False)["input_ids"] for i in range(n_context)]
    if any(len(d) != 1 for d in digits):
        return []
    digits_ids = [d[0] for d in digits]
    pointers: list[Pointer] = []
    for i in range(n_context):
        start = runs[i - 1][-1] + 1 if i else 0
        header = [p for p in range(start, runs[i][0]) if ids[p] == digits_ids[i]]
        if not header:
            return []
        pointers.append(("label", list(runs[i]), [header[-1]]))
    for k, query in enumerate(runs[n_context:], start=n_context):
        stop = runs[k + 1][0] if k + 1 < len(runs) else len(ids)
        answer = [p for p in range(query[-1] + 1, stop) if labels[p] != -100]
        if not answer:
            continue
        pieces = [tokenizer.decode([ids[p]]) for p in answer]
        text = "".join(pieces)
        box = _BOX.search(text)
        if box is None:
            continue
        offsets, at = [], 0
        for piece in pieces:
            offsets.append(at)
            at += len(piece)
        present: set[int] = set()
        for j, pos in enumerate(answer):
            if box.start(1) <= offsets[j] < box.end(1) and ids[pos] in digits_ids:
                present.add(digits_ids.index(ids[pos]))
                pointers.append(("read", [pos - 1], list(query)))
        if present:
            pointers.append(("match", list(query), [p for i in sorted(present) for p in runs[i]]))
    return pointers


class PointerCollator:
    """Wraps trl's collator: the batch it returns gains ``pointer_targets`` (one list per row), computed from
    the collated ids and labels: caption pointers from each example's :data:`SPANS_COLUMN`, else recognition
    pointers. With ``format_weight`` < 1 it also gains :data:`WEIGHTS_KEY`: per labelled token, 1 for the box
    digits of a recognition answer and ``format_weight`` for its other tokens (1 elsewhere)."""

    def __init__(self, base: Any, tokenizer: Any, image_token_id: int, format_weight: float = 1.0) -> None:
        self.base, self.tokenizer, self.image_token_id = base, tokenizer, image_token_id
        self.format_weight = float(format_weight)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        spans = [[list(item) for item in ex.get(SPANS_COLUMN) or []] for ex in examples]
        batch = self.base([{k: v for k, v in ex.items() if k != SPANS_COLUMN} for ex in examples])
        targets = []
        weights = batch["labels"].new_ones(batch["labels"].shape, dtype=_float()) if self.format_weight != 1 else None
        for b in range(len(examples)):
            ids, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
            found = pointer_targets(ids, labels, spans[b], self.tokenizer, self.image_token_id) if spans[b] else []
            if not found:
                found = recognition_pointers(ids, labels, self.tokenizer, self.image_token_id)
                digits = [src[0] + 1 for kind, src, _ in found if kind == "read"]
                if weights is not None and digits:  # the format tokens of this recognition answer weigh less
                    weights[b][batch["labels"][b] != -100] = self.format_weight
                    weights[b][digits] = 1.0
            targets.append(found)
        batch["pointer_targets"] = targets
        if weights is not None:
            batch[WEIGHTS_KEY] = weights
        return batch


def _float() -> Any:
    import torch

    return torch.float32


class AttentionTap:
    """Forward hooks that keep the attention weights of the supervised layers during a training forward
    (the text model must run eager attention, which returns them). Use as a context manager."""

    def __init__(self, model: Any) -> None:
        self.layers = _decoder_layers(model)
        self.weights: dict[int, Any] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> AttentionTap:
        for layer in sorted({lay for lay, _ in HEADS.values() if lay < len(self.layers)}):
            def hook(_m: Any, _inp: Any, out: Any, layer: int = layer) -> None:
                self.weights[layer] = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            self._hooks.append(self.layers[layer].self_attn.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def _decoder_layers(model: Any) -> Any:
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None:  # a peft wrapper around the VLM
        lm = model.get_base_model().model.language_model
    return lm.layers


def _text_parts(model: Any) -> tuple[Any, Any]:
    """(final norm of the text model, LM head) of ``model`` or of the VLM inside a peft wrapper."""
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None:
        inner = model.get_base_model().model
        lm = inner.language_model
    return lm.norm, model.get_output_embeddings()


def probe_loss(model: Any, hidden_states: Sequence[Any], input_ids: Any,
               targets: Sequence[Sequence[Pointer]]) -> Any:
    """Logit-lens supervision of the recognition chain's values (``trainer.probe_loss``): the residual stream
    after the layer of each pointer, read through the model's own final norm and LM head restricted to the
    row's header digits, should name the digit the chain carries there: a concept photo's tokens after the
    ``label`` layer its header digit, a query photo's tokens after the ``match`` layer the digits of the
    concepts it shows, the answer position after the ``read`` layer the digit it predicts. Mean of ``-log``
    (probability of the right digits among the row's) over the pointers (None when the batch has no
    recognition pointers). ``hidden_states``: the model's ``output_hidden_states`` (embeddings first)."""
    import torch

    norm, head = _text_parts(model)
    terms = []
    for b, row in enumerate(targets):
        labels = [(src, int(input_ids[b, dst[0]])) for kind, src, dst in row if kind == "label"]
        if not labels:
            continue
        digits = sorted({d for _, d in labels})
        digit_at = {p: digits.index(d) for src, d in labels for p in src}
        weight = head.weight[digits]  # the row's candidates: its header digits
        for kind, src, dst in row:
            if kind == "label":
                wanted = [digit_at[src[0]]]
            elif kind == "match":
                wanted = sorted({digit_at[p] for p in dst if p in digit_at})
            elif kind == "read" and int(input_ids[b, src[0] + 1]) in digits:
                wanted = [digits.index(int(input_ids[b, src[0] + 1]))]
            else:
                continue
            if not wanted:
                continue
            h = norm(hidden_states[HEADS[kind][0] + 1][b, src])
            logp = torch.log_softmax((h @ weight.T).float(), dim=-1)
            terms.append(-torch.logsumexp(logp[:, wanted], dim=-1).mean())
    if not terms:
        return None
    return torch.stack(terms).mean()


def pointer_loss(weights: Mapping[int, Any], targets: Sequence[Sequence[Pointer]]) -> Any:
    """Mean of -log(attention mass on the target tokens) over every pointer of the batch (None when the
    batch has none). ``weights[layer]``: (batch, heads, query positions, key positions)."""
    import torch

    terms = []
    for b, row in enumerate(targets):
        for kind, src, dst in row:
            layer, head = HEADS[kind]
            att = weights.get(layer)
            if att is None:
                raise RuntimeError("pointer supervision needs the attention weights; the text model must run "
                                   "eager attention (covip sets it when trainer.pointer_loss > 0)")
            mass = att[b, head][src][:, dst].sum(-1)
            terms.append(-torch.log(mass.clamp(min=1e-6)).mean())
    if not terms:
        return None
    return torch.stack(terms).mean()
