"""The trl pieces of the SFT stage: a completion-only loss that is cheap on the CPU, a time budget, and the
training chat template that lets trl's assistant-only loss label every answer of a multi-turn row.

Importing this module imports torch, transformers and trl (:mod:`covip.training.sft` imports it when a
run starts).
"""

from __future__ import annotations

import re
import time
from typing import Any

import torch
from transformers import TrainerCallback, modeling_utils
from trl import SFTTrainer

from covip.training.sft_pointer import WEIGHTS_KEY

__all__ = ["CompletionOnlySFTTrainer", "TimeBudgetCallback", "CurveCallback", "training_chat_template"]

_ROW_MASK = hasattr(modeling_utils, "slice_logits_to_keep")
"""Whether the model's ``logits_to_keep`` takes a (batch, sequence) boolean mask (transformers 5): then only
each row's own labelled positions go through the LM head, not every position labelled in any row of the
batch (half of the 49k-row head's work in a caption batch of the mini recipe, whose answers start at
different positions)."""

_TURN_OPEN = "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
_TURN_CLOSE = "{{- '<|im_end|>\\n' -}}"
_IM_END = "{{- '<|im_end|>' -}}"
_NEWLINE = "{{- '\\n' -}}"


def training_chat_template(template: str | None) -> str:
    """``template`` with transformers' ``{% generation %}`` markers around each assistant turn (its content
    and ``<|im_end|>``), which trl's ``assistant_only_loss`` reads to label every answer of a chat.

    A template that has the markers is returned as is. Otherwise only the ChatML template of covip's built
    models (``covip.sdk.models``) is rewritten; it renders the same text. The markers stay out of the saved
    model: llama.cpp's template engine does not know them.
    """
    from covip.sdk.errors import InputError

    if template and re.search(r"\{%-?\s*generation\s*-?%\}", template):
        return template
    if not template or template.count(_TURN_OPEN) != 1 or template.count(_TURN_CLOSE) != 1:
        raise InputError("data.queries_per_row > 1 needs a chat template with {% generation %} markers around "
                         "assistant turns (trl's assistant_only_loss); covip can add them only to the ChatML "
                         "template of its built models. Set data.queries_per_row: 1 or give the processor such "
                         "a template")
    head, rest = template.split(_TURN_OPEN)
    body, tail = rest.split(_TURN_CLOSE)
    turn = (f"{_TURN_OPEN}{{%- if message['role'] == 'assistant' -%}}{{% generation %}}{body}{_IM_END}"
            f"{{% endgeneration %}}{_NEWLINE}{{%- else -%}}{body}{_TURN_CLOSE}{{%- endif -%}}")
    return head + turn + tail


class CompletionOnlySFTTrainer(SFTTrainer):
    """SFTTrainer whose CPU loss asks the model for the answer positions' logits only.

    trl's fused LM head scores only the labelled positions where Triton runs (CUDA/XPU); elsewhere it scores
    every position of the vocabulary projection, which for long interleaved prompts and a 49k vocabulary
    costs several times the rest of the model. Here the model gets ``logits_to_keep`` = each row's positions
    whose next token carries a label (with transformers 4: those labelled in any row of the batch), and the
    loss is the usual cross-entropy over the labelled tokens (summed, divided by their count, or by
    ``num_items_in_batch`` under gradient accumulation, as trl does). Elsewhere, and when outputs are requested, trl's own loss runs.

    With pointer supervision (``pointer_weight`` > 0) the answer loss is summed over each row's labelled
    tokens and averaged over rows, on any device: a row's pointer terms and its answer then weigh alike,
    whatever the answer's length. With the per-token mean, the one informative token of
    ``Answer: \\boxed{[1]}<|im_end|>`` gets a ninth of the weight, and the retrieval circuit did not form
    (measured: training/README.md). The collator's per-token weights (``trainer.answer_format_weight``)
    scale the format tokens of recognition answers.
    """

    pointer_weight: float = 0.0
    """Weight of :func:`covip.training.sft_pointer.pointer_loss` (set by covip.training.sft; 0 = off)."""
    probe_weight: float = 0.0
    """Weight of :func:`covip.training.sft_pointer.probe_loss` (needs ``pointer_weight`` > 0; 0 = off)."""
    value_weight: float = 0.0
    """Weight of :func:`covip.training.sft_pointer.value_loss` (needs ``pointer_weight`` > 0; 0 = off)."""
    value_scale: str = "head"
    """How ``value_loss`` scales the head's output: ``head`` (its own RMS) or ``stream`` (the residual's)."""

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inputs = dict(inputs)
        targets = inputs.pop("pointer_targets", None)
        self._label_weights = inputs.pop(WEIGHTS_KEY, None)
        if not self.pointer_weight or not targets or not any(targets):
            return self._answer_loss(model, inputs, return_outputs, num_items_in_batch)
        from covip.training.sft_pointer import AttentionTap, pointer_loss, probe_loss, value_loss

        input_ids = inputs["input_ids"]
        self._hidden = None
        with AttentionTap(model, values=bool(self.value_weight)) as tap:
            out = self._answer_loss(model, inputs, return_outputs, num_items_in_batch)
        stream = tap.stream if self.value_scale == "stream" else None
        value = value_loss(model, tap.head_inputs, input_ids, targets, stream=stream) if self.value_weight else None
        tap.head_inputs.clear()
        tap.stream = None
        by_kind: dict[str, list[float]] = {}
        aux = pointer_loss(tap.weights, targets, by_kind)
        tap.weights.clear()
        mode = "train" if model.training else "eval"
        for kind, values in by_kind.items():  # which step of the chain lags (logged as pointer_<kind>)
            self._metrics[mode][f"pointer_{kind}"].append(sum(values) / len(values))
        probe = probe_loss(model, self._hidden, input_ids, targets) if self._hidden is not None else None
        self._hidden = None
        extra = []
        if aux is not None:
            self._metrics[mode]["pointer_loss"].append(aux.item())
            extra.append(self.pointer_weight * aux)
        if probe is not None:
            self._metrics[mode]["probe_loss"].append(probe.item())
            extra.append(self.probe_weight * probe)
        if value is not None:
            self._metrics[mode]["value_loss"].append(value.item())
            extra.append(self.value_weight * value)
        if not extra:
            return out
        if return_outputs:
            loss, outputs = out
            return loss + sum(extra), outputs
        return out + sum(extra)

    def _answer_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool, num_items_in_batch: Any) -> Any:
        per_row = bool(self.pointer_weight)
        if return_outputs or (inputs["input_ids"].device.type != "cpu" and not per_row):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs.pop("labels")[:, 1:]  # the label of position t is the token at t + 1
        probe = bool(self.probe_weight) and model.training
        labelled = labels != -100
        if _ROW_MASK:  # each row's own labelled positions, flattened
            keep = torch.nn.functional.pad(labelled, (0, 1))
            target, valid = labels[labelled], labelled[labelled]
        else:  # the positions labelled in any row, for every row
            keep = labelled.any(dim=0).nonzero().squeeze(-1)
            target = labels[:, keep]
            valid = target != -100
        outputs = model(**inputs, use_cache=False, logits_to_keep=keep, output_hidden_states=probe)
        if probe:
            self._hidden = outputs.hidden_states
        logits = outputs.logits.float().reshape(*target.shape, -1)
        tokens = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                   ignore_index=-100, reduction="none").view_as(target)
        weights = getattr(self, "_label_weights", None)
        if weights is not None and per_row:  # the answer-format weight of pointer supervision
            weights = weights[:, 1:].to(tokens.device)
            tokens = tokens * (weights[labelled] if _ROW_MASK else weights[:, keep])
        loss = tokens.sum()
        if per_row:
            n = labelled.any(dim=1).sum()
        else:
            n = valid.sum() if num_items_in_batch is None else num_items_in_batch
        loss = loss / torch.as_tensor(n, device=loss.device).clamp(min=1)
        with torch.no_grad():
            right = ((logits.argmax(-1) == target) & valid).sum()
            mode = "train" if model.training else "eval"
            self._metrics[mode]["mean_token_accuracy"].append((right / valid.sum().clamp(min=1)).item())
        return loss


class TimeBudgetCallback(TrainerCallback):
    """Stop training once ``max_time_s`` seconds of training have passed (checked after every step)."""

    def __init__(self, max_time_s: float | None) -> None:
        self.max_time_s = max_time_s
        self.started: float | None = None
        self.stopped = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.max_time_s is not None and self.started is not None \
                and time.perf_counter() - self.started >= self.max_time_s:
            control.should_training_stop = True
            self.stopped = True
        return control


class CurveCallback(TrainerCallback):
    """Every ``every_steps`` optimizer steps call ``score()`` (which puts the model back in training mode) and
    hand ``{"step": n, **score()}`` to ``sink``: the held-out learning curve during training."""

    def __init__(self, every_steps: int, score: Any, sink: Any) -> None:
        self.every_steps = int(every_steps)
        self.score = score
        self.sink = sink
        self.points: list[dict[str, Any]] = []

    def _point(self, state: Any) -> None:
        if self.points and self.points[-1]["step"] == state.global_step:
            return
        point = {"step": state.global_step, **self.score()}
        self.points.append(point)
        self.sink(point)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.every_steps and state.global_step % self.every_steps == 0 and state.is_world_process_zero:
            self._point(state)
        return control
