"""``covip bench``: run the benchmark scripts in ``benchmarks/`` and regenerate ``benchmarks/RESULTS.md``.

The runner and the report are :mod:`covip.sdk.bench`; this module only adds the command.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["bench", "register"]


@click.command("bench")
@click.option("--quick", is_flag=True, help="Each script's short mode (all together under 10 minutes on 2 cores); "
                                            "results and their report go to <benchmarks>/results/quick, so the "
                                            "committed results and RESULTS.md stay as they are unless --out says "
                                            "otherwise.")
@click.option("--only", multiple=True, metavar="NAME", help="Run only this benchmark (repeatable), e.g. memory_scale.")
@click.option("--dir", "bench_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The benchmarks folder (default: ./benchmarks, or the one of this covip checkout).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where results JSON/PNG go (default: <benchmarks>/results; with --quick "
                   "<benchmarks>/results/quick).")
@click.option("--report-only", is_flag=True, help="Run nothing: regenerate RESULTS.md from the JSON files.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=None,
              help="Seconds one script may run (default: 900 quick, 7200 full).")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The report to regenerate (default: <benchmarks>/RESULTS.md, or <out>/RESULTS.md with --out).")
@click.option("--list", "list_only", is_flag=True, help="List the benchmark scripts and whether they have --quick.")
def bench(quick: bool, only: tuple[str, ...], bench_dir: Path | None, out_dir: Path | None, report_only: bool,
          timeout_s: float | None, md_path: Path | None, list_only: bool) -> None:
    """Run the performance benchmarks in benchmarks/ and regenerate benchmarks/RESULTS.md from their JSON.

    \b
    Example:
      covip bench --quick
      covip bench --only memory_scale
      covip bench --report-only
    """
    from covip.sdk import bench as b

    root = b.find_bench_dir(bench_dir)
    if out_dir is None and quick:  # a quick run never overwrites the full results a checkout reports
        out_dir = root / "results" / "quick"
    out = out_dir or root / "results"
    if list_only:
        for name, path in b.discover(root).items():
            click.echo(f"{name:<20} {'--quick' if '--quick' in b.script_options(path) else 'no quick mode'}")
        return
    failed = []
    if not report_only:
        runs = b.run_benchmarks(root, out=out, quick=quick, only=only,
                                timeout_s=timeout_s or (900.0 if quick else 7200.0), echo=click.echo)
        failed = [r.name for r in runs if r.returncode not in (0, None)]
    md = b.write_results_md(out, md_path or (out_dir / b.RESULTS_MD if out_dir else root / b.RESULTS_MD))
    click.echo(f"regenerated {md} from {out}/*.json")
    if failed:
        raise click.ClickException(f"benchmark(s) failed: {failed} (logs in {out / 'logs'})")


def register(group: click.Group) -> None:
    """Add the ``bench`` command to ``group`` (the ``covip`` CLI)."""
    group.add_command(bench)
