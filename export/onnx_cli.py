"""``covip export onnx``: the click command (added to the ``export`` group by :func:`register_onnx`).

Importing this module imports click only; torch, transformers and onnx load when an export starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["onnx_command", "register_onnx"]


@click.command("onnx")
@click.argument("model")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Export directory to write (must be empty or new unless --overwrite).")
@click.option("--int8", is_flag=True, help="Also write int8 graphs (onnxruntime dynamic quantization).")
@click.option("--int4", is_flag=True,
              help="Also write a 4-bit weight-only decoder (MatMulNBits; skipped with a reason if unsupported).")
@click.option("--image-size", type=click.IntRange(min=1), default=None, metavar="PX",
              help="Fixed square input side of the vision graph, a multiple of patch x merge (96 for the tiny "
                   "Qwen3-VL). Default: the largest side <= 448 the model's processor keeps as is. Photos of "
                   "other sizes are stretched to it at run time.")
@click.option("--base", default=None, help="Base model of a LoRA adapter (default: the adapter's own record).")
@click.option("--no-verify", is_flag=True, help="Skip the parity check against the HF model.")
@click.option("--verify-tokens", type=click.IntRange(min=1), default=16, show_default=True,
              help="Greedy tokens compared per verification prompt.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (files, verification) as JSON.")
def onnx_command(model: str, out_dir: Path, int8: bool, int4: bool, image_size: int | None, base: str | None,
                 no_verify: bool, verify_tokens: int, overwrite: bool, as_json: bool) -> None:
    """Export MODEL to ONNX: vision encoder (fixed image size), token embeddings and a decoder with KV cache.

    MODEL is a merged HF checkpoint, a LoRA adapter, a GSPO run directory, 'tiny' or a hub id. The fp32
    graphs must reproduce the HF model's greedy tokens on a text and an image prompt, or the export fails
    (exit code 1) and nothing is written.

    \b
    Example:
      covip export onnx runs/tiny/merged --out exports/tiny-onnx --int8 --image-size 96
    """
    from covip.export.onnx import export_onnx

    result = export_onnx(model, out_dir, int8=int8, int4=int4, image_size=image_size, base=base,
                         verify=not no_verify, verify_tokens=verify_tokens, overwrite=overwrite,
                         progress=not as_json)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1, sort_keys=True))
        return
    image = (result.manifest.onnx or {}).get("image", {})
    click.echo(f"wrote {result.out_dir} (vision input {image.get('width')}x{image.get('height')}, "
               f"{image.get('tokens_per_image')} tokens per image)")
    for f in result.manifest.files:
        click.echo(f"  {f.path:22s} {f.kind:13s} {f.quant:5s} {f.bytes / 1e6:9.2f} MB")
    for quant, why in result.skipped.items():
        click.echo(f"  skipped {quant}: {why}")
    if result.verify is not None:
        click.echo(result.verify.summary())


def register_onnx(export_group: click.Group) -> None:
    """Add ``onnx`` to the ``covip export`` group."""
    export_group.add_command(onnx_command)
