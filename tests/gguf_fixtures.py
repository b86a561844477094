"""Test helper: convert a tiny HF model to GGUF (+ mmproj) with llama.cpp's own converter.

The converter (``convert_hf_to_gguf.py`` with its ``conversion/`` package and ``gguf-py/``) is not in any
wheel; it ships in the llama-cpp-python source distribution. :func:`converter_dir` fetches that sdist once
with ``pip download`` (for the installed llama-cpp-python version) into ``~/.cache/covip/llama-cpp-sdist``
and unpacks only the converter. Conversions are cached too: a model directory's name carries its build
hash, so ``<cache>/gguf/<dir name>-llama-<version>/`` is reused while both stay the same.

The export issue will own real conversion; this module is only for tests.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

__all__ = ["covip_cache", "converter_dir", "convert_tiny_to_gguf", "ConverterUnavailable"]

_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
_TINY_MARKER = "covip_tiny.json"


class ConverterUnavailable(RuntimeError):
    """The llama.cpp converter cannot be fetched (offline, no pip); tests needing it should skip."""


def covip_cache() -> Path:
    """``$COVIP_CACHE`` or ``~/.cache/covip``."""
    return Path(os.environ.get("COVIP_CACHE") or "~/.cache/covip").expanduser()


def _llama_version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def converter_dir() -> Path:
    """The unpacked ``vendor/llama.cpp`` converter of the installed llama-cpp-python (fetched once)."""
    version = _llama_version()
    root = Path(os.environ.get("COVIP_LLAMA_SDIST_DIR") or Path("~/.cache/covip/llama-cpp-sdist")).expanduser()
    target = root / f"llama.cpp-{version}"
    if (target / "convert_hf_to_gguf.py").is_file() and (target / "gguf-py").is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tarball = root / f"llama_cpp_python-{version}.tar.gz"
    if not tarball.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={version}", "-d", str(root)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not tarball.is_file():
            raise ConverterUnavailable(
                f"could not download the llama-cpp-python {version} sdist (for llama.cpp's converter): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}"
            )
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        with tarfile.open(tarball) as tf:
            members = []
            for m in tf.getmembers():
                if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                    continue
                rel = m.name[len(prefix):]
                if rel and any(rel == k or rel.startswith(k) for k in _KEEP):
                    m.name = rel
                    members.append(m)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - Pythons without extraction filters
                tf.extractall(tmp, members=members)
        if not (tmp / "convert_hf_to_gguf.py").is_file():
            raise ConverterUnavailable(f"{tarball} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _converter_env(conv: Path) -> dict[str, str]:
    """PYTHONPATH with the converter's own gguf-py (newer than the wheel, as the converter expects) and,
    when sentencepiece is not installed, a stub: Qwen's set_vocab imports it before noticing that there
    is no tokenizer.model, then falls back to the BPE tokenizer."""
    paths = [str(conv / "gguf-py")]
    if importlib.util.find_spec("sentencepiece") is None:
        stub = conv / "_stubs"
        stub.mkdir(exist_ok=True)
        (stub / "sentencepiece.py").write_text(
            "class SentencePieceProcessor:  # stub for the converter: only imported, never used\n"
            "    def __init__(self, *a, **k):\n"
            "        raise ImportError('sentencepiece is not installed')\n"
        )
        paths.append(str(stub))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("NO_LOCAL_GGUF", None)
    return env


def _run_converter(conv: Path, args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(conv / "convert_hf_to_gguf.py"), *args],
                          capture_output=True, text=True, env=_converter_env(conv), cwd=str(conv))
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def convert_tiny_to_gguf(hf_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                         *, outtype: str = "f32") -> tuple[Path, Path]:
    """Convert an HF VLM directory to ``(text GGUF, mmproj GGUF)``; reuses an earlier conversion.

    A ``covip_tiny.json`` marker in ``hf_dir`` is copied next to the GGUFs and the GGUF's
    ``general.name`` becomes ``covip-<tiny name>``, so the llama.cpp engine knows the model is meaningless.
    """
    hf = Path(hf_dir)
    if out_dir is None:
        out_dir = covip_cache() / "gguf" / f"{hf.name}-llama-{_llama_version()}"
    out = Path(out_dir)
    text_path = out / f"{hf.name}-{outtype}.gguf"
    mmproj_path = out / f"mmproj-{hf.name}-{outtype}.gguf"
    if text_path.is_file() and mmproj_path.is_file():
        return text_path, mmproj_path
    conv = converter_dir()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gguf-", dir=out))
    try:
        marker = hf / _TINY_MARKER
        name_args: list[str] = []
        if marker.is_file():
            name = json.loads(marker.read_text()).get("name", hf.name)
            name_args = ["--model-name", name if name.startswith("covip-") else f"covip-{name}"]
            shutil.copy2(marker, out / _TINY_MARKER)
        _run_converter(conv, [str(hf), "--outtype", outtype, "--outfile", str(tmp / text_path.name), *name_args])
        _run_converter(conv, [str(hf), "--outtype", outtype, "--mmproj", "--outfile", str(tmp / mmproj_path.name)])
        os.replace(tmp / mmproj_path.name, mmproj_path)
        os.replace(tmp / text_path.name, text_path)  # last: its presence means the pair is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return text_path, mmproj_path
