"""Helpers every benchmark script shares: machine description, load average, JSON output, medians.

Scripts run as ``python benchmarks/NAME.py`` (their folder is on ``sys.path``), so they ``import _common``;
``covip bench`` skips files whose name starts with ``_``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/inf as None, floats rounded to 6 places, paths and numpy values as plain JSON."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy arrays and scalars
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 6)
    return str(obj) if isinstance(obj, Path) else obj


_SCALAR = r'(?:-?[\d.eE+-]+|null|true|false|"[^"\n]{0,24}")'


def dumps(data: Any, *, compact_lists: bool = True) -> str:
    """indent=1 JSON; with ``compact_lists`` short lists of scalars stay on one line."""
    text = json.dumps(jsonable(data), indent=1)
    if compact_lists:
        text = re.sub(rf"\[\s*({_SCALAR}(?:,\s*{_SCALAR})*)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m[1]) + "]",
                      text)
    return text


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (plus a newline) atomically: a temp file beside ``path``, then a rename."""
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(text.rstrip("\n") + "\n")
    os.replace(tmp, path)


def write_json(path: Path, data: Any, *, compact_lists: bool = True) -> None:
    """The results as JSON (see :func:`dumps`), written atomically."""
    write_text(path, dumps(data, compact_lists=compact_lists))


def finish_run(results: dict[str, Any], meta: dict[str, Any], start: float, json_path: Path, png_path: Path, *,
               plot: Any, print_table: Any, write: Any = None) -> int:
    """The end every benchmark shares: stamp elapsed time and load, write the JSON (``write``, default
    :func:`write_json`), draw the PNG, print the table."""
    import time

    meta["elapsed_s"] = time.perf_counter() - start
    meta["loadavg_at_end"] = loadavg()
    (write or write_json)(json_path, results)
    plot(results, png_path)
    print_table(results)
    print(f"\nwrote {json_path} and {png_path} in {meta['elapsed_s']:.0f} s")
    return 0


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (None when there are none)."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def quantile(values: Iterable[float | None], q: float) -> float | None:
    """The ``q`` quantile (linear interpolation) of the values that are not None."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    pos = (len(vals) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def machine_info(packages: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """Date, platform, CPU, RAM, the versions of ``packages``, the git commit and the load average (plus
    ``extra``), recorded in every result so a figure can be traced to the machine and code that made it."""
    try:
        cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("model name")), None)
    except OSError:
        cpu_model = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=REPO).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    try:
        ram = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        ram = None
    return {"date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": sys.version.split()[0], "cpu_model": cpu_model,
            "cpu_count_logical": os.cpu_count(), "ram_total_gb": ram,
            "versions": {p: _version(p) for p in packages}, "git_commit": commit, "loadavg_at_start": loadavg(),
            **extra}
