"""Shared pieces of the evaluation commands: resumable JSONL records, run metadata, engine and judge specs.

* :class:`JsonlStore`: an append-only JSONL file of records keyed by an id (captions, answers). Every
  record is flushed and fsynced as it is written, so an interrupted run keeps what it finished; reopening
  the file reads the finished records back (a torn last line from a crash is dropped and the file is
  rewritten without it) and the run skips them.
* :func:`run_meta`: machine, package versions and date, recorded in every result JSON.
* :func:`parse_options`: ``KEY=VALUE`` strings (CLI ``--engine-opt`` / ``--judge-opt``) to a dict, values
  read as JSON when they parse (numbers, true/false, null), else kept as text.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from covip.sdk.errors import InputError
from covip.training.data import schema
from covip.training.data.schema import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["JsonlStore", "run_meta", "parse_options", "write_json", "read_jsonl_records"]

_VERSION_PACKAGES = ("covip", "torch", "transformers", "llama-cpp-python", "numpy", "faiss-cpu", "open_clip_torch",
                     "openai", "matplotlib")


def read_jsonl_records(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(records, bad lines) of a JSONL file; lines that are not JSON objects are counted and skipped."""
    records, bad = [], 0
    with Path(path).open("r", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


class JsonlStore:
    """Records keyed by ``key`` in an append-only JSONL file (see the module doc)."""

    def __init__(self, path: str | Path, *, key: str = "id", expect: Mapping[str, Any] | None = None) -> None:
        """Open (creating) ``path``; ``expect`` fields must match in every stored record (else InputError)."""
        self.path = Path(path)
        self.key = key
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path.is_file():
            records, bad = read_jsonl_records(self.path)
            for rec in records:
                if key not in rec:
                    bad += 1
                    continue
                for field, want in (expect or {}).items():
                    if rec.get(field) != want:
                        raise InputError(
                            f"{self.path} holds records made with {field}={rec.get(field)!r}, not {want!r}; "
                            "use another --out folder or delete the file to start over")
                self.records[str(rec[key])] = rec
            if bad:
                log.warning("%s: dropped %d unreadable line(s) (an interrupted write) and kept %d records",
                            self.path, bad, len(self.records))
                self._rewrite()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()

    def _rewrite(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                                             for r in self.records.values()))

    def __contains__(self, key: object) -> bool:
        return str(key) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(str(key))

    def add(self, record: Mapping[str, Any]) -> None:
        """Append one record (durably: flush + fsync)."""
        rec = dict(record)
        line = json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            self.records[str(rec[self.key])] = rec


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically, keys in the order the report built them."""
    return schema.write_json(path, data, sort_keys=False)


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records one per line, atomically."""
    return atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False, sort_keys=True) + "\n"
                                           for r in records))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_meta() -> dict[str, Any]:
    """Machine, versions and date of a run (the same keys the benchmark JSONs carry)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for pkg in _VERSION_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        import psutil

        ram = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a test/bench extra
        ram = None
    return {"date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": sys.version.split()[0], "cpu_model": _cpu_model(),
            "cpu_count_logical": os.cpu_count(), "ram_total_gb": ram, "versions": versions}


def parse_options(pairs: Iterable[str], what: str = "option") -> dict[str, Any]:
    """``["device=cpu", "n_ctx=4096"]`` -> ``{"device": "cpu", "n_ctx": 4096}`` (JSON values when they parse)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"{what} {pair!r} must look like KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
