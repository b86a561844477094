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

Pointers of one caption-by-index row (``data.caption_style: indexed``: the recognition box of the dialogue
that shows the concept, then what the user said there, verbatim): the recognition pointers above, with the
dialogue headers' numbers as the digits, and

* ``tag``: every token of each dialogue's text attends to the digit of its header (the head ``label`` uses);
* ``prev``: every token of a user's line attends to the token before it (the previous-token half of an
  induction head: a token's key learns what preceded it);
* ``carry``: each answer position after the box attends to the box digit (which dialogue to copy from);
* ``recall``: each answer position that predicts a token copied from that dialogue attends to the token
  there (an induction step whose keys the ``tag`` and ``prev`` heads marked with the dialogue's number and
  the preceding token). ``prev`` and ``recall`` pair their i-th source with their i-th target.

Here the match compares image tokens with image tokens, one attention step deep; in the caption chain it
compares what two other heads copied, and in the research loop that step did not form in 600 steps while
the recognition chain formed in 300 (training/README.md).

The loss is the mean over pointers of ``-log`` (the attention mass the head puts on the target tokens,
averaged over the pointer's source positions). Rows of another layout (verification, descriptions) get none.

The pointers shape where the heads look, not what they carry. :func:`probe_loss` (``trainer.probe_loss``)
supervises that too, with the logit lens (nostalgebraist, "interpreting GPT: the logit lens", 2020): after
each pointer's layer, the residual stream at its source positions, read through the model's own final norm
and (tied) LM head, should name the digit the chain carries there. :func:`value_loss` (``trainer.value_probe``)
does the same for the copy: the ``recall`` head's own output should name the token it attends to. Measured
without it (training/README.md): the head put 0.95 of its attention on the right first name token of held-out
captions, yet its output ranked that token first among the dialogue's words in 2% of them, and the caption
named the concept from the model's prior over names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["HEADS", "KINDS", "SPANS_COLUMN", "WEIGHTS_KEY", "PointerCollator", "pointer_targets",
           "recognition_pointers", "pointer_loss", "probe_loss", "value_loss", "AttentionTap", "PAIRED"]

HEADS: Mapping[str, tuple[int, int]] = {"bind": (0, 0), "look": (0, 1), "copy": (1, 0),
                                        "label": (0, 0), "match": (1, 0), "read": (2, 0),
                                        "tag": (0, 0), "prev": (0, 2), "carry": (2, 2), "recall": (3, 0)}
"""(decoder layer, attention head) supervised for each pointer kind."""
KINDS: Mapping[str, tuple[str, ...]] = {"caption": ("bind", "look", "copy"), "recognition": ("label", "match", "read"),
                                        "indexed_caption": ("label", "match", "read", "tag", "prev", "carry", "recall")}
"""The pointer kinds of each sample type's rows (``indexed_caption``: caption rows of ``data.caption_style:
indexed``)."""
PAIRED = frozenset({"prev", "recall"})
"""Pointer kinds whose i-th source attends to their i-th target (the others: every source to all targets)."""
WEIGHTS_KEY = "label_weights"
"""The batch key of per-token answer-loss weights (:class:`PointerCollator` with a format weight below 1)."""
SPANS_COLUMN = "context_spans"
"""The dataset column pointer supervision reads: per context item (in order) its name, then the fact values
its dialogue states verbatim; [] for rows without context items."""

NAMES_COLUMN = "context_names"
"""The dataset column of a caption-by-index row's context concept names (as the row's dialogues spell them),
read by :class:`PointerCollator` to weigh a copied name; [] for other rows."""

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


def _hits(ids: Sequence[int], pattern: Sequence[int], start: int) -> Iterator[int]:
    """Every position from ``start`` on where ``pattern`` starts (overlapping ones too); none for an empty one."""
    pos = start
    while pattern and (hit := _find(ids, pattern, pos, len(ids))) is not None:
        yield hit
        pos = hit + 1


def _spelled(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` as it follows a space in running text (how names and facts appear in rows)."""
    return tokenizer(" " + text, add_special_tokens=False)["input_ids"]


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
            pattern = _spelled(tokenizer, text)
            pos = _find(ids, pattern, runs[i][-1] + 1, stop)
            if pos is None:
                if j == 0:  # the name must be there: this is not the layout the pointers are for
                    return []
                continue
            if j == 0:
                pointers.append(("bind", [pos], list(runs[i])))
            sources.append((j, pos, pattern))
    for j, source, pattern in sources:
        for hit in _hits(ids, pattern, answer_start):
            if labels[hit] != -100:  # the answer says it: the position before it predicts it
                if j == 0:
                    pointers.append(("look", [hit - 1], list(runs[-1])))
                pointers.append(("copy", [hit - 1], [source]))
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
    if not 1 <= n_context <= 9:
        return []
    found = _header_digits(ids, runs, n_context, tokenizer)
    if found is None:
        return []
    digits_ids, headers = found
    pointers: list[Pointer] = [("label", list(runs[i]), [headers[i]]) for i in range(n_context)]
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
            box_end = answer[next(j for j in range(len(answer)) if offsets[j] + len(pieces[j]) >= box.end(1))]
            pointers += _recall_pointers(ids, labels, runs, headers, sorted(present), box_end, stop, tokenizer)
    return pointers


def _header_digits(ids: Sequence[int], runs: Sequence[Sequence[int]], n_context: int,
                   tokenizer: Any) -> tuple[list[int], list[int]] | None:
    """(digit token ids, header digit positions) of the ``n_context`` context images, numbered from 0 (concept
    headers, or a pack's ``dialogue_numbering: 0``) or from 1 (covip's dialogue headers); None when a header
    number is missing or not one token."""
    for base in (0, 1):
        digits = [tokenizer(str(i + base), add_special_tokens=False)["input_ids"] for i in range(n_context)]
        if any(len(d) != 1 for d in digits):
            continue
        digits_ids = [d[0] for d in digits]
        headers = []
        for i in range(n_context):
            start = runs[i - 1][-1] + 1 if i else 0
            header = [p for p in range(max(start, runs[i][0] - 8), runs[i][0]) if ids[p] == digits_ids[i]]
            if not header:
                break
            headers.append(header[-1])
        if len(headers) == n_context:
            return digits_ids, headers
    return None


def _recall_pointers(ids: Sequence[int], labels: Sequence[int], runs: Sequence[Sequence[int]],
                     headers: Sequence[int], present: Sequence[int], box_end: int, stop: int,
                     tokenizer: Any) -> list[Pointer]:
    """``tag``/``prev``/``carry``/``recall`` pointers of a caption-by-index answer (module doc): the labelled tokens
    after the box (from ``box_end`` + 1 to ``stop``) aligned with the text of the present dialogues, each
    token to the source that continues the previous one, else to the first occurrence whose previous token
    matches too. [] when nothing after the box comes from a dialogue (a recognition answer)."""
    fence = tokenizer("=====", add_special_tokens=False)["input_ids"][0]
    regions: dict[int, range] = {}
    for i in range(len(headers)):
        start = runs[i][-1] + 2  # after the image's end marker
        end = next((p for p in range(start, runs[i + 1][0]) if ids[p] == fence), runs[i + 1][0])
        regions[i] = range(start, end)
    said = _user_lines(ids, [p for i in present for p in regions[i]], tokenizer)
    sources = [p for i in present for p in regions[i] if p in said]
    copyable = set(sources)
    srcs: list[int] = []
    dsts: list[int] = []
    previous: int | None = None
    for p in range(box_end + 1, stop):
        if labels[p] == -100:
            continue
        src = None
        if previous is not None and previous + 1 in copyable and ids[previous + 1] == ids[p]:
            src = previous + 1  # the copy goes on
        else:
            later = [q for q in sources if previous is None or q > previous] + sources
            src = next((q for q in later if ids[q] == ids[p] and ids[q - 1] == ids[p - 1]), None)
            if src is None:
                src = next((q for q in later if ids[q] == ids[p]), None)
        if src is None:
            continue
        srcs.append(p - 1)
        dsts.append(src)
        previous = src
    if not srcs:
        return []
    digit_positions = [p for p in range(box_end - 4, box_end + 1) if labels[p] != -100
                       and ids[p] in {ids[headers[i]] for i in present}]
    pointers: list[Pointer] = [("tag", list(regions[i]), [headers[i]]) for i in regions if regions[i]]
    lines = sorted(_user_lines(ids, [p for i in regions for p in regions[i]], tokenizer))
    pointers.append(("prev", lines, [q - 1 for q in lines]))
    if digit_positions:
        pointers.append(("carry", list(srcs), digit_positions))
    pointers.append(("recall", srcs, dsts))
    return pointers


def _user_lines(ids: Sequence[int], positions: Sequence[int], tokenizer: Any) -> set[int]:
    """The positions among ``positions`` inside a ``User:`` line of a dialogue (after the colon, up to the
    line's end): what a caption by index copies."""
    user = tokenizer("User:", add_special_tokens=False)["input_ids"]
    inside, out = False, set()
    for p in positions:
        if list(ids[p - len(user) + 1:p + 1]) == user:
            inside = True
            continue
        if inside and "\n" in tokenizer.decode([ids[p]]):
            inside = False
        if inside:
            out.add(p)
    return out


class PointerCollator:
    """Wraps trl's collator: the batch it returns gains ``pointer_targets`` (one list per row), computed from
    the collated ids and labels: caption pointers from each example's :data:`SPANS_COLUMN`, else recognition
    pointers. With ``format_weight`` < 1 it also gains :data:`WEIGHTS_KEY`: per labelled token, 1 for the box
    digits of a recognition answer and ``format_weight`` for its other tokens (1 elsewhere); every token of a
    caption by index's text after the box weighs ``format_weight`` too (with the row's answer loss summed per
    row, a 60-token copy at weight 1 would outweigh its pointer terms sixtyfold, and the heads did not learn
    where to look: training/README.md). ``name_weight`` (not None): the tokens of a context concept's name
    (:data:`NAMES_COLUMN`) inside that copy weigh this instead, the one part only the context can give."""

    def __init__(self, base: Any, tokenizer: Any, image_token_id: int, format_weight: float = 1.0, *,
                 name_weight: float | None = None) -> None:
        self.base, self.tokenizer, self.image_token_id = base, tokenizer, image_token_id
        self.format_weight = float(format_weight)
        self.name_weight = None if name_weight is None else float(name_weight)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        spans = [[list(item) for item in ex.get(SPANS_COLUMN) or []] for ex in examples]
        names = [[str(n) for n in ex.get(NAMES_COLUMN) or []] for ex in examples]
        batch = self.base([{k: v for k, v in ex.items() if k not in (SPANS_COLUMN, NAMES_COLUMN)} for ex in examples])
        targets = []
        weights = batch["labels"].new_ones(batch["labels"].shape, dtype=_float()) if self.format_weight != 1 else None
        for b in range(len(examples)):
            ids, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
            found = pointer_targets(ids, labels, spans[b], self.tokenizer, self.image_token_id) if spans[b] else []
            if not found:
                found = recognition_pointers(ids, labels, self.tokenizer, self.image_token_id)
                digits = [src[0] + 1 for kind, src, _ in found if kind == "read"]
                if weights is not None and digits:  # the format tokens of this answer weigh less
                    weights[b][batch["labels"][b] != -100] = self.format_weight
                    weights[b][digits] = 1.0  # the box digits
                    copied = [p + 1 for kind, src, _ in found if kind == "recall" for p in src]
                    if copied:  # a caption by index: what it says after the box, its end included
                        after = (batch["labels"][b] != -100).nonzero().squeeze(-1)
                        weights[b][after[after >= min(copied)]] = self.format_weight
                        if self.name_weight is not None:
                            for p in self._name_positions(ids, labels, names[b], min(copied)):
                                weights[b][p] = self.name_weight
            targets.append(found)
        batch["pointer_targets"] = targets
        if weights is not None:
            batch[WEIGHTS_KEY] = weights
        return batch

    def _name_positions(self, ids: Sequence[int], labels: Sequence[int], names: Sequence[str],
                        start: int) -> list[int]:
        """Labelled positions from ``start`` on that spell one of ``names`` (each as it follows a space)."""
        out: list[int] = []
        for name in names:
            pattern = _spelled(self.tokenizer, name)
            out += [p for hit in _hits(ids, pattern, start) for p in range(hit, hit + len(pattern)) if labels[p] != -100]
        return out


def _float() -> Any:
    import torch

    return torch.float32


class AttentionTap:
    """Forward hooks that keep the attention weights of the supervised layers during a training forward
    (the text model must run eager attention, which returns them). With ``values``, also the input of the
    ``recall`` layer's output projection (every head's output, before they are mixed) in ``head_inputs``,
    and the residual stream the final norm reads in ``stream``, for :func:`value_loss`. Use as a context
    manager."""

    def __init__(self, model: Any, *, values: bool = False) -> None:
        self.layers = _decoder_layers(model)
        self.norm = _text_parts(model)[0]
        self.weights: dict[int, Any] = {}
        self.head_inputs: dict[int, Any] = {}
        self.stream: Any = None
        self.values = values
        self._hooks: list[Any] = []

    def __enter__(self) -> AttentionTap:
        for layer in sorted({lay for lay, _ in HEADS.values() if lay < len(self.layers)}):
            def hook(_m: Any, _inp: Any, out: Any, layer: int = layer) -> None:
                self.weights[layer] = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            self._hooks.append(self.layers[layer].self_attn.register_forward_hook(hook))
        layer = HEADS["recall"][0]
        if self.values and layer < len(self.layers):
            def keep(_m: Any, args: Any, layer: int = layer) -> None:
                self.head_inputs[layer] = args[0]
            self._hooks.append(self.layers[layer].self_attn.o_proj.register_forward_pre_hook(keep))

            def keep_stream(_m: Any, args: Any) -> None:
                self.stream = args[0]
            self._hooks.append(self.norm.register_forward_pre_hook(keep_stream))
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


def _head_rows(lm_head: Any, candidate_lists: Iterable[Sequence[int]]) -> Callable[[Sequence[int]], Any]:
    """``rows(tokens)``: those tokens' LM head rows, from one read of every candidate of the batch
    (``candidate_lists``). Reading the (vocabulary, hidden) head per term made the backward write a zero tensor
    of the whole head per term."""
    import torch

    vocab = sorted({t for candidates in candidate_lists for t in candidates})
    where = {t: i for i, t in enumerate(vocab)}
    table = lm_head.weight[torch.as_tensor(vocab, device=lm_head.weight.device)]

    def rows(tokens: Sequence[int]) -> Any:
        return table[torch.as_tensor([where[t] for t in tokens], device=table.device)]

    return rows


def probe_loss(model: Any, hidden_states: Sequence[Any], input_ids: Any,
               targets: Sequence[Sequence[Pointer]]) -> Any:
    """Logit-lens supervision of the recognition chain's values (``trainer.probe_loss``): the residual stream
    after the layer of each pointer, read through the model's own final norm and LM head restricted to the
    row's header digits, should name the digit the chain carries there: a concept photo's tokens after the
    ``label`` layer its header digit, a query photo's tokens after the ``match`` layer the digits of the
    concepts it shows, the answer position after the ``read`` layer the digit it predicts; in a caption by
    index, a dialogue's text after the ``tag`` layer its header digit, the answer after the box, after the
    ``carry`` layer, the box digit, and a user line's tokens after the ``prev`` layer the token before them
    (among the row's dialogue words: what an induction key is made of). Mean of ``-log``
    (probability of the right digits among the row's) over the pointers (None when the batch has no
    recognition pointers). ``hidden_states``: the model's ``output_hidden_states`` (embeddings first).

    The source positions of all terms of one layer are gathered in one indexing step and normed once, and the
    LM head rows of all candidates are read once: indexing the (batch, sequence, hidden) stream or the
    (vocabulary, hidden) head per term made the backward write a zero tensor of the whole of it per term,
    a third of a caption step's time on 2 CPU cores."""
    import torch

    norm, head = _text_parts(model)
    specs: list[tuple[int, int, list[int], list[int], Any]] = []  # (layer, row, sources, candidates, wanted)
    for b, row in enumerate(targets):
        labels = [(src, int(input_ids[b, dst[0]])) for kind, src, dst in row if kind == "label"]
        if not labels:
            continue
        digits = sorted({d for _, d in labels})
        digit_at = {p: digits.index(d) for src, d in labels for p in src}
        for kind, src, dst in row:
            if kind == "label":
                wanted: Any = [digit_at[src[0]]]
            elif kind == "match":
                wanted = sorted({digit_at[p] for p in dst if p in digit_at})
            elif kind == "read" and int(input_ids[b, src[0] + 1]) in digits:
                wanted = [digits.index(int(input_ids[b, src[0] + 1]))]
            elif kind in ("tag", "carry") and dst and int(input_ids[b, dst[0]]) in digits:
                wanted = [digits.index(int(input_ids[b, dst[0]]))]
            elif kind == "prev" and src:  # each token should carry the token before it, among the row's words
                ids_row = input_ids[b]
                words = sorted({int(t) for t in ids_row[src].tolist()} | {int(t) for t in ids_row[dst].tolist()})
                specs.append((HEADS[kind][0], b, list(src), words,
                              ("each", [words.index(int(t)) for t in ids_row[dst].tolist()])))
                continue
            else:
                continue
            if wanted:
                specs.append((HEADS[kind][0], b, list(src), digits, wanted))
    if not specs:
        return None
    rows_of = _head_rows(head, (spec[3] for spec in specs))
    terms = []
    for layer in sorted({spec[0] for spec in specs}):
        mine = [spec for spec in specs if spec[0] == layer]
        rows = torch.as_tensor([spec[1] for spec in mine for _ in spec[2]], device=input_ids.device)
        cols = torch.as_tensor([p for spec in mine for p in spec[2]], device=input_ids.device)
        states = norm(hidden_states[layer + 1][rows, cols])
        for (_, _, _, candidates, wanted), h in zip(mine, states.split([len(spec[2]) for spec in mine])):
            logp = torch.log_softmax((h @ rows_of(candidates).T).float(), dim=-1)
            if isinstance(wanted, tuple):  # prev: position i should name its own wanted token
                index = torch.as_tensor(wanted[1], device=logp.device)
                terms.append(-logp.gather(1, index[:, None]).mean())
            else:
                terms.append(-torch.logsumexp(logp[:, wanted], dim=-1).mean())
    return torch.stack(terms).mean()


def value_loss(model: Any, head_inputs: Mapping[int, Any], input_ids: Any,
               targets: Sequence[Sequence[Pointer]], *, stream: Any = None) -> Any:
    """Supervision of what the copy head carries (``trainer.value_probe``): at each ``recall`` source
    position, the recall head's own contribution to the residual stream (its slice of the output
    projection's input, through the projection), read through the final norm and LM head restricted to the
    row's dialogue words (the tokens the ``prev`` pointer covers), should name the token the pointer
    attends to. Mean ``-log`` probability over the copied tokens of the batch (None when it has none).
    ``head_inputs``: :class:`AttentionTap` ``head_inputs`` (taken with ``values=True``).

    With ``stream`` (:class:`AttentionTap` ``stream``; ``trainer.value_probe_scale: stream``) the head's
    contribution is scaled as the final norm scales it inside the whole residual stream (by the stream's RMS
    there, held fixed), and read over the whole vocabulary: its direct effect on the model's own logits
    (direct logit attribution) must name the token against every other, the prior's names included. The
    head-scaled reading is blind to the contribution's size, and measured on the mini model the head's
    direct effect was ~0.1 nats where the output's best wrong name led the right one by ~0.4
    (training/README.md)."""
    import torch

    layer, head = HEADS["recall"]
    x = head_inputs.get(layer)
    if x is None:
        return None
    specs: list[tuple[int, list[int], list[int], list[int]]] = []  # (row, sources, wanted tokens, candidates)
    for b, row in enumerate(targets):
        recall = [(src, dst) for kind, src, dst in row if kind == "recall"]
        words = {t for kind, src, _ in row if kind == "prev" for t in input_ids[b, src].tolist()}
        for src, dst in recall:
            wanted = [int(t) for t in input_ids[b, dst].tolist()]
            candidates = sorted(words | set(wanted))
            specs.append((b, list(src), wanted, candidates))
    specs = [spec for spec in specs if spec[1]]
    if not specs:
        return None
    norm, lm_head = _text_parts(model)
    projection = _decoder_layers(model)[layer].self_attn.o_proj
    width = x.shape[-1] // model.config.text_config.num_attention_heads
    rows = torch.as_tensor([spec[0] for spec in specs for _ in spec[1]], device=x.device)
    cols = torch.as_tensor([p for spec in specs for p in spec[1]], device=x.device)
    own = torch.zeros_like(x[rows, cols])
    own[:, head * width:(head + 1) * width] = x[rows, cols, head * width:(head + 1) * width]
    out = projection(own)
    if getattr(projection, "bias", None) is not None:
        out = out - projection.bias
    if stream is not None:  # the head's share of the real logits, over the whole vocabulary
        r = stream[rows, cols].detach().float()
        scale = torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + getattr(norm, "variance_epsilon", 1e-6))
        logits = lm_head(norm.weight * out * scale.to(out.dtype)).float()
        wanted = torch.as_tensor([t for spec in specs for t in spec[2]], device=logits.device)
        return torch.nn.functional.cross_entropy(logits, wanted)
    states = norm(out)
    rows_of = _head_rows(lm_head, (spec[3] for spec in specs))
    terms = []
    for (_, _, wanted, candidates), h in zip(specs, states.split([len(spec[1]) for spec in specs])):
        logp = torch.log_softmax((h @ rows_of(candidates).T).float(), dim=-1)
        index = torch.as_tensor([candidates.index(t) for t in wanted], device=logp.device)
        terms.append(-logp.gather(1, index[:, None]).squeeze(1))
    return torch.cat(terms).mean()


def pointer_loss(weights: Mapping[int, Any], targets: Sequence[Sequence[Pointer]],
                 by_kind: dict[str, list[float]] | None = None) -> Any:
    """Mean of -log(attention mass on the target tokens) over every pointer of the batch, a ``recall``
    pointer counting once per copied token (None when the batch has none). ``weights[layer]``: (batch, heads,
    query positions, key positions). ``by_kind``, when given, collects each pointer's term under its kind
    (for the training log).

    Every (row, head, source, target) weight of one layer is read in one indexing step and summed per source
    position with ``index_add``: reading them pointer by pointer made the backward write a zero tensor of the
    whole attention map per pointer (measured: half of a caption step on 2 CPU cores)."""
    import torch

    # per layer: the flat coordinates of every weight read, and which source position (element) it adds to
    reads: dict[int, tuple[list[int], list[int], list[int], list[int], list[int]]] = {}
    pointers: list[tuple[str, int, int]] = []  # (kind, first element, elements)
    n = 0
    for b, row in enumerate(targets):
        for kind, src, dst in row:
            layer, head = HEADS[kind]
            if weights.get(layer) is None:
                raise RuntimeError("pointer supervision needs the attention weights; the text model must run "
                                   "eager attention (covip sets it when trainer.pointer_loss > 0)")
            if not src:
                continue
            rb, rh, rq, rk, re_ = reads.setdefault(layer, ([], [], [], [], []))
            if kind in PAIRED:  # the i-th source to the i-th target
                if len(src) != len(dst):
                    raise ValueError(f"a {kind!r} pointer pairs {len(src)} sources with {len(dst)} targets")
                pairs = [(q, k, n + i) for i, (q, k) in enumerate(zip(src, dst))]
            else:
                pairs = [(q, k, n + i) for i, q in enumerate(src) for k in dst]
            for q, k, e in pairs:
                rb.append(b)
                rh.append(head)
                rq.append(q)
                rk.append(k)
                re_.append(e)
            pointers.append((kind, n, len(src)))
            n += len(src)
    if not pointers:
        return None
    first = next(iter(weights[layer] for layer in reads))
    mass = torch.zeros(n, dtype=first.dtype, device=first.device)
    for layer, (rb, rh, rq, rk, re_) in reads.items():
        att = weights[layer]
        index = torch.as_tensor([rb, rh, rq, rk], device=att.device)
        mass = mass.index_add(0, torch.as_tensor(re_, device=att.device), att[index[0], index[1], index[2], index[3]])
    term = -torch.log(mass.clamp(min=1e-6))
    # one term per pointer; a recall pointer is one term per copied token (the copy is the answer)
    scale = torch.empty(n, dtype=term.dtype)
    count = 0
    for kind, at, size in pointers:
        scale[at:at + size] = 1.0 if kind == "recall" else 1.0 / size
        count += size if kind == "recall" else 1
    loss = (term * scale.to(term.device)).sum() / count
    if by_kind is not None:
        values = term.detach().tolist()
        for kind, at, size in pointers:
            by_kind.setdefault(kind, []).append(sum(values[at:at + size]) / size)
    return loss
