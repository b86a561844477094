"""``covip export``: GGUF export (``gguf``), parity checks (``verify``) and, when installed, ONNX (``onnx``).

:func:`register` adds the ``export`` group to the ``covip`` CLI (entry point group ``covip.cli``). Importing
this module imports click only; torch, transformers and llama-cpp-python load when a command runs.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import click

__all__ = ["export", "register"]

log = logging.getLogger(__name__)


@click.group("export")
def export() -> None:
    """Export a tuned model for laptops: GGUF (llama.cpp) or ONNX, quantized and parity-checked.

    MODEL is a GSPO run folder (covip train gspo --output DIR), its merged/ or adapter/ folder, any
    LoRA adapter folder (base from adapter_config.json or --base), a merged HF checkpoint folder, 'tiny',
    or a hub id. The export folder holds covip_export.json; give that folder to `covip init --model`.

    \b
    Example:
      covip export gguf runs/tiny --out exports/tiny --quant f16,q8_0,q4_k_m
      covip export verify exports/tiny --against runs/tiny
    """


@export.command("gguf")
@click.argument("model")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Export folder to create (built in a temporary folder, renamed into place at the end).")
@click.option("--quant", "quants", default="f16,q8_0", show_default=True, metavar="LIST",
              help="Text-model quants, comma-separated: f32, f16, q8_0, q4_0, q4_k_m. q4_k_m needs row sizes "
                   "that are multiples of 256 and is skipped (with the reason) on models where they are not.")
@click.option("--outtype", type=click.Choice(["f32", "f16"]), default=None,
              help="What the converter writes and the quants are made from (default f32; f16 halves the "
                   "temporary disk use of large models).")
@click.option("--mmproj-type", type=click.Choice(["f32", "f16", "q8_0"]), default="f16", show_default=True,
              help="Type of the vision projector GGUF.")
@click.option("--base", default=None, metavar="MODEL",
              help="Base model of a LoRA adapter (default: base_model_name_or_path in adapter_config.json).")
@click.option("--converter-dir", type=click.Path(path_type=Path), default=None,
              help="Offline: a folder from `pip download --no-deps --no-binary :all: llama-cpp-python==VERSION "
                   "-d DIR` (or the unpacked vendor/llama.cpp).")
@click.option("--no-verify", is_flag=True, help="Skip the parity check against the HF model.")
@click.option("--verify-tokens", type=click.IntRange(min=1), default=16, show_default=True,
              help="Greedy tokens compared per prompt.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder.")
@click.option("--init", "init_home", is_flag=True,
              help="Then make the export the model of the memory home (`covip --home DIR`, else $COVIP_HOME), as "
                   "`covip init --model OUT` does: the home's embedder and memories stay.")
@click.option("--init-quant", metavar="QUANT",
              help="With --init: the quant the home opens (e.g. q8_0); default: the most faithful file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (manifest + verify report) as JSON.")
@click.pass_context
def gguf_cmd(ctx: click.Context, model: str, out_dir: Path, quants: str, outtype: str | None, mmproj_type: str,
             base: str | None, converter_dir: Path | None, no_verify: bool, verify_tokens: int, overwrite: bool,
             init_home: bool, init_quant: str | None, as_json: bool) -> None:
    """Convert MODEL to GGUF (text model per quant + mmproj) with llama.cpp's own converter.

    The converter is the one in the llama-cpp-python sdist of the installed version, fetched once with pip
    into the covip cache. Then the f32/f16 file must reproduce the HF model's greedy tokens on a text and
    an image prompt, or the export fails and writes nothing.

    \b
    Example:
      covip export gguf runs/tiny --out exports/tiny --quant f32,q8_0,q4_0
      covip export gguf Qwen/Qwen3-VL-2B-Instruct --out exports/qwen3vl-2b --quant f16,q8_0,q4_k_m
      covip export gguf runs/tiny --out exports/tiny --quant q8_0 --init     # and answer with it from now on
    """
    from covip.export.gguf import export_gguf

    if init_quant is not None and not init_home:
        raise click.UsageError("--init-quant goes with --init")
    if init_quant is not None and init_quant not in [q.strip() for q in quants.split(",")]:
        raise click.UsageError(f"--init-quant {init_quant} is not among the exported quants ({quants}); add it to "
                               "--quant")
    result = export_gguf(model, out_dir, quants=quants, outtype=outtype, mmproj_type=mmproj_type, base=base,
                         converter=converter_dir, verify=not no_verify, verify_tokens=verify_tokens,
                         overwrite=overwrite, progress=not as_json)
    home = _init_home(ctx, result.out_dir, init_quant, result.manifest) if init_home else None
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "home": None if home is None else str(home)}, indent=1,
                              default=str))
        return
    m = result.manifest
    click.echo(f"exported {model} to {result.out_dir} (llama-cpp-python {m.llama_cpp_version})"
               + ("  [tiny model: meaningless weights]" if m.meaningless else ""))
    for f in m.files:
        click.echo(f"  {f.path:28s} {f.kind:12s} {f.quant:7s} {f.bytes / 2**20:9.1f} MiB")
    for q, why in result.skipped.items():
        click.echo(f"  skipped {q}: {why}")
    for note in result.notes:
        click.echo(f"  note: {note}")
    if result.verify is not None:
        click.echo("verify:")
        for line in result.verify.summary().splitlines():
            click.echo(f"  {line}")


def _init_home(ctx: click.Context, out_dir: Path, quant: str | None, manifest: object) -> Path:
    """Make ``out_dir`` the home's model (and ``quant`` its file), keeping the rest of its config.json."""
    from covip.sdk.cli.common import CliState
    from covip.sdk.config import read_settings, write_settings

    state = ctx.find_object(CliState) or CliState()
    home = state.home_dir
    have = manifest.gguf_quants()  # type: ignore[attr-defined]
    if quant is not None and quant not in have:  # e.g. q4_k_m skipped on a model with narrow rows
        raise click.UsageError(f"the export has no {quant!r} file (it has {', '.join(have)}); the home is unchanged")
    settings = read_settings(home)
    settings["model"] = str(Path(out_dir).resolve())
    if quant is None:
        settings.pop("quant", None)
    else:
        settings["quant"] = quant
    write_settings(home, settings)
    click.echo(f"the memory in {home} now answers with {out_dir} ({quant or 'its most faithful file'})"
               + ("" if settings.get("embedder") else "; choose its embedder with `covip init --force --embedder ...`"),
               err=True)
    return home


@export.command("verify")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--against", required=True, metavar="MODEL",
              help="The HF model the export was made from (checkpoint/adapter/GSPO run folder, 'tiny', hub id).")
@click.option("--tokens", "max_new_tokens", type=click.IntRange(min=1), default=16, show_default=True,
              help="Greedy tokens compared per prompt.")
@click.option("--min-top1", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Top-1 agreement quantized files need to pass.")
@click.option("--tie-tol", type=click.FloatRange(min=0), default=0.02, show_default=True,
              help="A differing token is a near tie (tolerated for f32/f16) when both models' margins between "
                   "the two tokens are at most this many logits.")
@click.option("--quant", "quants", default=None, metavar="LIST", help="Only files of these quants.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(export_dir: Path, against: str, max_new_tokens: int, min_top1: float, tie_tol: float,
               quants: str | None, as_json: bool) -> None:
    """Compare an export with the HF model: same prompts, same pixels, teacher-forced greedy tokens.

    f32/f16/fp32 files must produce the HF greedy tokens (text and image prompt; differences only at near
    ties, see --tie-tol, are shown and tolerated); quantized files
    report their top-1 agreement, max logit difference and size ratio. Exit code 1 when a check fails.

    \b
    Example:
      covip export verify exports/tiny --against runs/tiny --json
    """
    from covip.export.verify import verify_export

    report = verify_export(export_dir, against, max_new_tokens=max_new_tokens, min_top1=min_top1, tie_tol=tie_tol,
                           quants=[q.strip() for q in quants.split(",") if q.strip()] if quants else None,
                           progress=not as_json)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        click.echo(report.summary())
        click.echo("parity: " + ("ok" if report.parity_ok else "FAILED") + "; all checks: "
                   + ("passed" if report.passed else "FAILED"))
    if not report.passed:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    """Add the ``export`` group to ``group`` (the ``covip`` CLI), with ``onnx`` when that module exists."""
    try:
        onnx_cli = importlib.import_module("covip.export.onnx_cli")
    except ModuleNotFoundError as exc:
        if exc.name != "covip.export.onnx_cli":
            log.debug("covip export onnx not available: %s", exc)
        onnx_cli = None
    if onnx_cli is not None and "onnx" not in export.commands:
        onnx_cli.register_onnx(export)
    group.add_command(export)
