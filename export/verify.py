"""``covip export verify``: does an export answer what the HF model answers?

The reference (:func:`hf_reference`) runs the HF checkpoint in float32 on fixed prompts (a text-only one
and an image one) and records its greedy tokens and the logits at every generated position. Each export
file is then run *teacher-forced* on the same prompt and the same tokens, and compared position by
position:

* ``prompt_match``: the export tokenized the prompt to the same ids (image tokens included);
* ``top1_agreement``: share of positions whose arg-max equals the HF token. 1.0 means the export's own
  greedy decoding produces exactly the HF tokens (the two are the same thing, by induction);
* ``max_abs_diff``: the largest logit difference over those positions.

f32/f16/fp32 files must reproduce the HF greedy tokens on every prompt (``parity_ok``), except at *near
ties*: a position where the HF model's own margin between its token and the export's pick, and the export's
margin the other way, are both at most ``tie_tol`` logits (default 0.02) is a rounding coin-flip, not a
conversion error; such positions are counted and shown (``greedy_equal`` stays strict). Quantized files
must agree on at least ``min_top1`` of the positions (default 0.5) and report their size ratio against the
unquantized file of the same kind.

Both sides see the same pixels: the image is generated at a size that is a multiple of the model's
patch * merge size and inside the HF image processor's min/max pixels, so neither side resizes it; the
GGUF side runs with the image-token limits the export recorded (its manifest's ``vision``), so a model whose
processor allows fewer image tokens than libmtmd's default (8 for Qwen-VL) is checked at its own layout.

Other export kinds plug in with :func:`register_verifier` (``kind`` = the manifest's kind, e.g. "onnx");
their function gets the manifest, the :class:`HfReference` and :class:`VerifyOptions` and returns
:class:`FileCheck` objects, usually built with :func:`check_case`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk.errors import ExportError

__all__ = [
    "PromptCase",
    "CaseReference",
    "HfReference",
    "CaseCheck",
    "FileCheck",
    "VerifyOptions",
    "VerifyReport",
    "default_cases",
    "test_image",
    "hf_reference",
    "check_case",
    "register_verifier",
    "verifiers",
    "verify_export",
    "PARITY_QUANTS",
]

PARITY_QUANTS = ("f32", "f16", "fp32")


# ----------------------------------------------------------------------------- prompts and reference


@dataclass
class PromptCase:
    """One prompt: a user text, with an image or not."""

    name: str
    text: str
    image: Any = None  # PIL.Image.Image or None

    def messages(self) -> list[dict[str, Any]]:
        """The prompt in the SDK's engine message format."""
        if self.image is None:
            return [{"role": "user", "content": self.text}]
        return [{"role": "user", "content": [{"type": "image", "image": self.image},
                                             {"type": "text", "text": self.text}]}]


def test_image(size: int, seed: int = 7) -> Any:
    """A deterministic RGB test picture (coloured blocks on a gradient) of ``size`` x ``size`` pixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 255 // max(1, size - 1), y * 255 // max(1, size - 1),
                    (x + y) * 127 // max(1, size - 1)], axis=-1).astype(np.uint8)
    for _ in range(6):
        x0, y0 = rng.integers(0, size - size // 4, 2)
        w, h = rng.integers(size // 8, size // 3, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    return Image.fromarray(img, "RGB")


def _vision_factor(model_dir: Path) -> int:
    import json

    cfg = json.loads((model_dir / "config.json").read_text())
    vc = cfg.get("vision_config") or {}
    return int(vc.get("patch_size", 14)) * int(vc.get("spatial_merge_size", 2))


def default_cases(model_dir: str | os.PathLike[str]) -> list[PromptCase]:
    """A text-only prompt and an image prompt (image side = 3 x patch x merge, 96 px for Qwen3-VL, or the
    nearest square side the processor's min/max pixels allow: 64 px for the ``mini`` preset)."""
    from covip.export.merge import read_pixel_limits

    factor = _vision_factor(Path(model_dir))
    px = read_pixel_limits(model_dir)
    lo, hi = (px.min_pixels or 0, px.max_pixels or 9 * factor**2) if px else (0, 9 * factor**2)
    side = 3
    while side > 1 and (side * factor) ** 2 > hi:
        side -= 1
    while (side * factor) ** 2 < lo:
        side += 1
    size = side * factor
    return [PromptCase("text", "Describe my blue mug in one sentence."),
            PromptCase("image", "What is in this picture?", test_image(size))]


@dataclass
class CaseReference:
    """The HF model's answer to one :class:`PromptCase`: prompt ids, greedy tokens and their logits."""

    case: PromptCase
    prompt_ids: list[int]
    tokens: list[int]
    logits: Any  # numpy float32 [len(tokens), vocab]: logits[i] predicts tokens[i]
    image_token_id: int | None = None


@dataclass
class HfReference:
    """:func:`hf_reference`'s result: one :class:`CaseReference` per prompt, plus the model it came from."""

    model_dir: Path
    cases: list[CaseReference]
    weight_bytes: int
    max_new_tokens: int


def hf_reference(model_dir: str | os.PathLike[str], *, cases: Sequence[PromptCase] | None = None,
                 max_new_tokens: int = 16) -> HfReference:
    """Run the HF checkpoint (float32, CPU) greedily on ``cases`` (default :func:`default_cases`)."""
    from covip.sdk.support import quiet_progress, require

    torch = require("torch", feature="export verification", extra="export")
    tf = require("transformers", feature="export verification", extra="export")
    d = Path(model_dir)
    cases = list(cases) if cases is not None else default_cases(d)
    try:
        processor = tf.AutoProcessor.from_pretrained(str(d))
        with quiet_progress(tf):
            model = tf.AutoModelForImageTextToText.from_pretrained(str(d), dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot load the reference model {d} ({type(exc).__name__}: {str(exc)[:300]})") from exc
    tok = processor.tokenizer
    eos = {i for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if isinstance(i, int)}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    eos.update([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []))
    eos.discard(getattr(tok, "unk_token_id", None))
    image_token_id = getattr(model.config, "image_token_id", None)
    gcfg = tf.GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(eos),
                               pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else min(eos),
                               output_logits=True, return_dict_in_generate=True)
    out: list[CaseReference] = []
    for case in cases:
        content: list[dict[str, Any]] = ([{"type": "image"}] if case.image is not None else []) + \
            [{"type": "text", "text": case.text}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if case.image is not None:
            kwargs["images"] = [case.image]
        inputs = processor(**kwargs)
        with torch.no_grad():
            res = model.generate(**inputs, generation_config=gcfg)
        prompt = inputs["input_ids"][0].tolist()
        tokens = res.sequences[0, len(prompt):].tolist()
        logits = torch.stack([step[0] for step in res.logits]).float().numpy()
        out.append(CaseReference(case=case, prompt_ids=prompt, tokens=tokens[:len(logits)], logits=logits,
                                 image_token_id=image_token_id))
    weight_bytes = sum(p.stat().st_size for p in d.glob("*.safetensors"))
    del model
    return HfReference(model_dir=d, cases=out, weight_bytes=weight_bytes, max_new_tokens=max_new_tokens)


# ----------------------------------------------------------------------------- checks


@dataclass
class CaseCheck:
    """One file on one prompt, compared with the HF reference."""

    case: str
    prompt_tokens: int
    prompt_match: bool
    positions: int
    top1_agree: int
    max_abs_diff: float
    first_mismatch: int | None = None  # position of the first arg-max that differs from the HF token
    near_ties: int = 0  # mismatches where both margins are <= tie_tol (rounding coin-flips)
    note: str = ""

    @property
    def greedy_equal(self) -> bool:
        """Strict: the export's greedy decoding gives exactly the HF tokens."""
        return self.prompt_match and self.top1_agree == self.positions

    @property
    def parity(self) -> bool:
        """Greedy tokens equal except at near ties."""
        return self.prompt_match and self.top1_agree + self.near_ties == self.positions


@dataclass
class FileCheck:
    """One export file against the HF reference, over every prompt."""

    path: str
    kind: str
    quant: str
    bytes: int
    size_ratio: float | None
    cases: list[CaseCheck] = field(default_factory=list)
    min_top1: float = 0.5
    error: str | None = None
    companion: str | None = None  # e.g. the mmproj the text GGUF was run with

    @property
    def parity_required(self) -> bool:
        return self.quant in PARITY_QUANTS

    @property
    def top1_agreement(self) -> float:
        n = sum(c.positions for c in self.cases)
        return sum(c.top1_agree for c in self.cases) / n if n else 0.0

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.cases), default=math.nan)

    @property
    def greedy_equal(self) -> bool:
        return bool(self.cases) and all(c.greedy_equal for c in self.cases)

    @property
    def near_ties(self) -> int:
        return sum(c.near_ties for c in self.cases)

    @property
    def passed(self) -> bool:
        if self.error is not None or not self.cases:
            return False
        if self.parity_required:
            return all(c.parity for c in self.cases)
        return all(c.prompt_match for c in self.cases) and self.top1_agreement >= self.min_top1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cases"] = [dict(asdict(c), greedy_equal=c.greedy_equal, parity=c.parity) for c in self.cases]
        d.update(parity_required=self.parity_required, top1_agreement=self.top1_agreement,
                 max_abs_diff=self.max_abs_diff, greedy_equal=self.greedy_equal, near_ties=self.near_ties,
                 passed=self.passed)
        return d


def check_case(ref: CaseReference, logits: Any, prompt_ids: Sequence[int] | None = None, *,
               tie_tol: float = 0.02, note: str = "") -> CaseCheck:
    """Compare teacher-forced ``logits`` ([n, vocab], row i predicts ``ref.tokens[i]``) with the reference.

    ``prompt_ids``: the export's prompt token ids (image tokens expanded), or None when unknown (then only
    their count is not checked)."""
    import numpy as np

    lg = np.asarray(logits, dtype=np.float32)
    n = min(len(ref.tokens), lg.shape[0] if lg.ndim == 2 else 0)
    vocab = min(lg.shape[1], ref.logits.shape[1]) if n else 0
    agree, ties, first = 0, 0, None
    diff = 0.0
    for i in range(n):
        row, hf = lg[i, :vocab], ref.logits[i, :vocab]
        pick, want = int(row.argmax()), ref.tokens[i]
        if pick == want:
            agree += 1
        else:
            first = i if first is None else first
            if want < vocab and hf[want] - hf[pick] <= tie_tol and row[pick] - row[want] <= tie_tol:
                ties += 1
        diff = max(diff, float(np.max(np.abs(row - hf))))
    if n < len(ref.tokens) and first is None:
        first = n
    prompt_match = prompt_ids is None or list(prompt_ids) == list(ref.prompt_ids)
    if prompt_ids is not None and not prompt_match:
        extra = f"prompt differs: {len(prompt_ids)} tokens vs HF {len(ref.prompt_ids)}"
        note = f"{note}; {extra}" if note else extra
    return CaseCheck(case=ref.case.name, prompt_tokens=len(ref.prompt_ids) if prompt_ids is None else len(prompt_ids),
                     prompt_match=prompt_match, positions=len(ref.tokens), top1_agree=agree, max_abs_diff=diff,
                     first_mismatch=first, near_ties=ties, note=note)


@dataclass
class VerifyOptions:
    max_new_tokens: int = 16
    min_top1: float = 0.5
    quants: tuple[str, ...] | None = None  # only files of these quants (None = all)
    n_ctx: int = 4096
    tie_tol: float = 0.02


@dataclass
class VerifyReport:
    """Every file's :class:`FileCheck`; ``parity_ok`` (f32/f16/fp32 files) and ``passed`` (all files)."""

    export_dir: str
    against: str
    files: list[FileCheck] = field(default_factory=list)
    reference_tokens: dict[str, list[int]] = field(default_factory=dict)

    @property
    def parity_ok(self) -> bool:
        return all(f.passed for f in self.files if f.parity_required) and any(f.parity_required for f in self.files)

    @property
    def passed(self) -> bool:
        return bool(self.files) and all(f.passed for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"export_dir": self.export_dir, "against": self.against, "parity_ok": self.parity_ok,
                "passed": self.passed, "reference_tokens": self.reference_tokens,
                "files": [f.to_dict() for f in self.files]}

    def summary(self) -> str:
        lines = []
        for f in self.files:
            status = "ok" if f.passed else "FAIL"
            what = ("greedy tokens equal" if f.greedy_equal else
                    f"greedy tokens equal up to {f.near_ties} near tie(s)" if f.passed and f.parity_required
                    else "greedy tokens DIFFER")
            ratio = f", size x{f.size_ratio:.2f}" if f.size_ratio is not None else ""
            lines.append(f"{status:4s} {f.path} [{f.kind} {f.quant}{ratio}]: {what}, top-1 agreement "
                         f"{f.top1_agreement:.2%}, max |logit diff| {f.max_abs_diff:.3g}"
                         + (" (parity required)" if f.parity_required else f" (needs >= {f.min_top1:.0%})"))
            if f.error:
                lines.append(f"     error: {f.error}")
            for c in f.cases:
                if not c.greedy_equal or c.note:
                    lines.append(f"     {c.case}: {c.top1_agree}/{c.positions} agree"
                                 + (f", first mismatch at {c.first_mismatch}" if c.first_mismatch is not None else "")
                                 + (f", {c.near_ties} near tie(s)" if c.near_ties else "")
                                 + (f"; {c.note}" if c.note else ""))
        if any(f.parity_required for f in self.files) is False:
            lines.append("no f32/f16/fp32 file in the export: parity could not be checked")
        return "\n".join(lines)


Verifier = Callable[[Any, HfReference, VerifyOptions], list[FileCheck]]
_VERIFIERS: dict[str, Verifier] = {}


def register_verifier(kind: str, fn: Verifier) -> None:
    """Add (or replace) the verifier of an export kind ('gguf', 'onnx', ...)."""
    _VERIFIERS[kind] = fn


def verifiers() -> dict[str, Verifier]:
    """The registered verifiers by kind (the ONNX one is registered when ``covip.export.onnx`` imports)."""
    if "onnx" not in _VERIFIERS:
        try:  # the ONNX exporter registers itself on import
            import covip.export.onnx  # noqa: F401
        except ImportError:
            pass
    return dict(_VERIFIERS)


def _size_ratio(manifest: Any, entry: Any) -> float | None:
    """Bytes relative to the largest unquantized (f32/f16/fp32) file of the same kind, if there is one."""
    same = [f.bytes for f in manifest.files if f.kind == entry.kind and f.quant in PARITY_QUANTS]
    return entry.bytes / max(same) if same else None


# ----------------------------------------------------------------------------- GGUF


def _llama_teacher_forced(engine: Any, case: CaseReference) -> tuple[list[int], Any]:
    """(prompt ids with image tokens expanded, logits [n, vocab]) of a LlamaCppEngine fed the HF tokens.

    Uses the engine's own prompt path (chat template, libmtmd tokenization, prefill) so what is checked is
    what the SDK runs."""
    import numpy as np

    from covip.sdk.engines.base import check_messages
    from covip.sdk.support import Media

    llama = engine._llama
    engine.reset()
    msgs = check_messages(case.case.messages())
    text, images = engine._render(msgs)
    chunks, bitmaps = None, []
    try:
        if images or engine._mctx is not None:
            items, chunks, bitmaps = engine._tokenize_multimodal(text, images)
        else:
            items = list(engine._tokenize(text, add_special=True))
        if len(items) + len(case.tokens) >= engine.n_ctx:
            raise ExportError(f"the verification prompt does not fit the context ({engine.n_ctx})")
        engine._prefill(items, 0, chunks)
    finally:
        if chunks is not None:
            engine._mtmd.mtmd_input_chunks_free(chunks)
        for bm in bitmaps:
            engine._mtmd.mtmd_bitmap_free(bm)
    n_vocab = int(llama.llama_vocab_n_tokens(engine._vocab))

    def read() -> Any:
        ptr = llama.llama_get_logits_ith(engine._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    rows = [read()]
    for tok in case.tokens[:-1]:
        pos = engine._next_pos()
        engine._decode_tokens([tok], pos, logits_last=True)
        engine._cache_pos.append(pos)
        engine._cache_items.append(tok)
        rows.append(read())
    engine.reset()
    image_id = case.image_token_id
    prompt: list[int] = []
    for it in items:
        if isinstance(it, Media):
            prompt.extend([image_id if image_id is not None else -1] * it.n_tokens)
        else:
            prompt.append(int(it))
    return prompt, np.stack(rows)


def verify_gguf(manifest: Any, ref: HfReference, opts: VerifyOptions) -> list[FileCheck]:
    """Each text GGUF (with the export's mmproj) against the HF reference."""
    from covip.sdk.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig
    from covip.sdk.errors import CovipError

    mm = manifest.gguf_mmproj()
    checks: list[FileCheck] = []
    for entry in manifest.files_of("gguf-text"):
        if opts.quants and entry.quant not in opts.quants:
            continue
        fc = FileCheck(path=entry.path, kind=entry.kind, quant=entry.quant, bytes=entry.bytes,
                       size_ratio=_size_ratio(manifest, entry), min_top1=opts.min_top1,
                       companion=mm.path if mm is not None else None)
        try:
            cfg = LlamaCppEngineConfig(model_path=manifest.path_of(entry),
                                       mmproj_path=manifest.path_of(mm) if mm is not None else None,
                                       n_ctx=opts.n_ctx, meaningless=manifest.meaningless,
                                       **(manifest.vision or {}))
            with LlamaCppEngine(cfg) as engine:
                for case in ref.cases:
                    if case.case.image is not None and mm is None:
                        continue
                    prompt, logits = _llama_teacher_forced(engine, case)
                    note = ""
                    if case.case.image is not None and mm is not None and mm.quant not in PARITY_QUANTS:
                        note = f"mmproj is {mm.quant}"
                    fc.cases.append(check_case(case, logits, prompt, tie_tol=opts.tie_tol, note=note))
        except CovipError as exc:
            fc.error = str(exc)
        checks.append(fc)
    return checks


register_verifier("gguf", verify_gguf)


def verify_export(export_dir: str | os.PathLike[str], against: str | os.PathLike[str], *,
                  max_new_tokens: int = 16, min_top1: float = 0.5, tie_tol: float = 0.02,
                  quants: Sequence[str] | None = None,
                  kinds: Sequence[str] | None = None, reference: HfReference | None = None,
                  progress: bool = True) -> VerifyReport:
    """Check every file of an export directory against the HF model ``against`` (a checkpoint directory,
    adapter, GSPO run dir, 'tiny' or hub id: resolved like ``covip export gguf``'s input)."""
    import tempfile

    from covip.sdk.export_manifest import read_manifest

    manifest = read_manifest(export_dir, verify="sha256")
    present = []
    if manifest.files_of("gguf-text"):
        present.append("gguf")
    if any(f.kind.startswith("onnx-") for f in manifest.files):
        present.append("onnx")
    wanted = [k for k in present if kinds is None or k in kinds]
    if not wanted:
        raise ExportError(f"{export_dir} has no files of kind {', '.join(kinds or present) or '(none)'} to verify")
    opts = VerifyOptions(max_new_tokens=max_new_tokens, min_top1=min_top1, tie_tol=tie_tol,
                         quants=tuple(q.lower() for q in quants) if quants else None)
    found = verifiers()
    missing = [k for k in wanted if k not in found]
    if missing:
        raise ExportError(f"no verifier for {', '.join(missing)} exports is installed in this covip")
    with tempfile.TemporaryDirectory(prefix="covip-verify-") as tmp:
        if reference is None:
            from covip.export.merge import resolve_checkpoint

            ck = resolve_checkpoint(against, work_dir=tmp)
            reference = hf_reference(ck.path, max_new_tokens=max_new_tokens)
        report = VerifyReport(export_dir=str(Path(export_dir)), against=str(against),
                              reference_tokens={c.case.name: c.tokens for c in reference.cases})
        from covip.sdk.progress import progress_bar

        for kind in progress_bar(wanted, desc="covip export verify", unit="export", enabled=bool(progress),
                                 leave=False):
            report.files.extend(found[kind](manifest, reference, opts))
    return report
