"""llama.cpp's own HF -> GGUF converter, taken from the llama-cpp-python sdist that matches the runtime.

``convert_hf_to_gguf.py`` (with its ``conversion/`` package and its own, newer ``gguf-py/``) ships in no
wheel; it is in the llama-cpp-python source distribution on PyPI, under ``vendor/llama.cpp/``. Using the
one of the *installed* llama-cpp-python version keeps converter and runtime in step (an older runtime
cannot load what a newer converter writes, and the other way round).

:func:`converter_dir` fetches that sdist once with ``pip download --no-deps --no-binary :all:`` into
``<cache>/llama-cpp-sdist/<version>/`` (``<cache>`` = ``$COVIP_CACHE`` or the per-user cache directory,
e.g. ``~/.cache/covip``), and unpacks only the converter next to it. Nothing is copied into this
repository. On a machine without network, download the sdist elsewhere and pass it with
``converter_dir=`` / ``--converter-dir`` (the message of :class:`ConverterUnavailable` says how).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from covip.sdk.errors import ExportError

__all__ = [
    "convert_tiny_to_gguf",
    "ConverterUnavailable",
    "ConversionError",
    "llama_cpp_version",
    "covip_cache",
    "sdist_cache_dir",
    "converter_dir",
    "run_converter",
    "convert_hf_to_gguf",
]

log = logging.getLogger(__name__)

_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
_CONVERTER = "convert_hf_to_gguf.py"

# known converter failures on small or custom models -> what to do about them
_HINTS = (
    ("BPE pre-tokenizer was not recognized",
     "llama.cpp recognizes only known tokenizers by the hash of their pre-tokenizer; use the tokenizer of a "
     "released model (the tiny models use SmolLM2's, which it knows)"),
    ("mrope", "Qwen-VL's rope_parameters.mrope_section must sum to head_dim/2"),
    ("fullatt_block_indexes", "Qwen2.5-VL needs vision depth >= 3 with evenly spaced fullatt_block_indexes"),
    ("is not supported", "this llama.cpp does not know the architecture; a newer llama-cpp-python may"),
)


class ConverterUnavailable(ExportError):
    """llama.cpp's converter cannot be had: no network and no cached sdist. The message says what to do."""


class ConversionError(ExportError):
    """``convert_hf_to_gguf.py`` failed on a model; the message quotes its error (and a hint when known)."""


def llama_cpp_version() -> str:
    """The installed llama-cpp-python version (its converter is the one to use)."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise ExportError("llama-cpp-python is not installed; GGUF export needs it "
                          "(pip install 'covip[export]' llama-cpp-python)") from None


def covip_cache() -> Path:
    """``$COVIP_CACHE`` or the per-user cache directory of covip (e.g. ``~/.cache/covip``)."""
    env = os.environ.get("COVIP_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("covip"))


def sdist_cache_dir(version: str | None = None) -> Path:
    """``<cache>/llama-cpp-sdist/<version>``: the sdist tarball and the unpacked ``llama.cpp/`` converter."""
    return covip_cache() / "llama-cpp-sdist" / (version or llama_cpp_version())


def _tarball_name(version: str) -> str:
    return f"llama_cpp_python-{version}.tar.gz"


def _is_converter(d: Path) -> bool:
    return (d / _CONVERTER).is_file() and (d / "gguf-py").is_dir()


def _offline_message(version: str, cache: Path, detail: str) -> str:
    return (
        f"llama.cpp's converter (from the llama-cpp-python {version} sdist, matching the installed runtime) is "
        f"not cached in {cache} and could not be downloaded ({detail}). On a machine with network run\n"
        f"    pip download --no-deps --no-binary :all: llama-cpp-python=={version} -d DIR\n"
        f"copy DIR here and pass --converter-dir DIR (or converter_dir=DIR), or put "
        f"{_tarball_name(version)} into {cache}"
    )


def _unpack(tarball: Path, target: Path, version: str) -> Path:
    """Unpack only ``vendor/llama.cpp/{convert_hf_to_gguf.py,conversion/,gguf-py/}`` into ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        try:
            with tarfile.open(tarball) as tf:
                members = []
                for m in tf.getmembers():
                    if not (m.isfile() or m.isdir()):
                        continue
                    parts = m.name.split("/", 1)  # llama_cpp_python-<v>/...
                    if len(parts) != 2 or not parts[1].startswith("vendor/llama.cpp/"):
                        continue
                    rel = parts[1][len("vendor/llama.cpp/"):]
                    if rel and any(rel == k or rel.startswith(k) for k in _KEEP):
                        m.name = rel
                        members.append(m)
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Pythons without extraction filters
                    tf.extractall(tmp, members=members)
        except (OSError, tarfile.TarError) as exc:
            raise ConverterUnavailable(f"{tarball} cannot be read as the llama-cpp-python {version} sdist ({exc}); "
                                       "delete it and try again") from exc
        if not _is_converter(tmp):
            raise ConverterUnavailable(f"{tarball} has no vendor/llama.cpp/{_CONVERTER} with gguf-py/; is it the "
                                       f"llama-cpp-python {version} sdist?")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _find_tarball(d: Path, version: str) -> Path | None:
    for p in (d / _tarball_name(version), d / f"llama-cpp-python-{version}.tar.gz"):
        if p.is_file():
            return p
    return None


def converter_dir(converter: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """The directory holding ``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/``.

    ``converter``: an unpacked converter directory, a directory holding the sdist tarball (what
    ``pip download -d DIR`` leaves), or the tarball itself; None uses (and fills) the cache. Raises
    :class:`ConverterUnavailable` with the commands to run when it cannot be had offline.
    """
    version = llama_cpp_version()
    cache = sdist_cache_dir(version)
    if converter is not None:
        given = Path(converter).expanduser()
        if given.is_dir() and _is_converter(given):
            return given
        if given.is_dir() and _is_converter(given / "vendor" / "llama.cpp"):
            return given / "vendor" / "llama.cpp"
        tarball = given if given.is_file() else _find_tarball(given, version) if given.is_dir() else None
        if tarball is None:
            raise ConverterUnavailable(
                f"--converter-dir {given} holds neither {_CONVERTER} with gguf-py/ nor {_tarball_name(version)}; "
                f"make it with: pip download --no-deps --no-binary :all: llama-cpp-python=={version} -d {given}")
        if f"-{version}." not in tarball.name:
            log.warning("%s is not the llama-cpp-python %s sdist; converter and runtime may disagree",
                        tarball.name, version)
        return _unpack(tarball, cache / f"llama.cpp-from-{tarball.stem.replace('.tar', '')}", version)

    target = cache / "llama.cpp"
    if _is_converter(target):
        return target
    tarball = _find_tarball(cache, version)
    legacy = _find_tarball(cache.parent, version)  # tests/gguf_fixtures.py kept it one level up
    if tarball is None and legacy is not None:
        tarball = legacy
    if tarball is None:
        if not download:
            raise ConverterUnavailable(_offline_message(version, cache, "downloads disabled"))
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={version}", "-d", str(cache)]
        log.info("fetching llama.cpp's converter: %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConverterUnavailable(_offline_message(version, cache, str(exc))) from exc
        tarball = _find_tarball(cache, version)
        if proc.returncode != 0 or tarball is None:
            last = (proc.stderr or proc.stdout).strip().splitlines()
            raise ConverterUnavailable(_offline_message(version, cache, "pip: " + (last[-1] if last else "failed")))
    return _unpack(tarball, target, version)


def _converter_env(conv: Path) -> dict[str, str]:
    """The converter's own gguf-py first on PYTHONPATH (newer than the gguf wheel, as it expects). When
    sentencepiece is missing, a stub: Qwen's set_vocab imports it before noticing there is no
    tokenizer.model and falling back to the BPE tokenizer."""
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


def run_converter(conv: Path, args: list[str]) -> None:
    """Run ``convert_hf_to_gguf.py ARGS``; raise :class:`ConversionError` with its error and a hint."""
    cmd = [sys.executable, str(conv / _CONVERTER), *args]
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_converter_env(conv), cwd=str(conv))
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout or "").strip()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        last = lines[-1] if lines else "no output"
        hints = [h for key, h in _HINTS if key in err]
        raise ConversionError(
            f"llama.cpp's converter failed ({_CONVERTER} {' '.join(args)}): {last}"
            + (f"\nhint: {'; '.join(hints)}" if hints else "")
            + f"\n--- converter output (tail) ---\n{err[-2500:]}"
        )


def convert_hf_to_gguf(hf_dir: str | os.PathLike[str], outfile: str | os.PathLike[str], *, outtype: str = "f32",
                       mmproj: bool = False, model_name: str | None = None,
                       converter: str | os.PathLike[str] | Path | None = None) -> Path:
    """Convert an HF checkpoint directory to one GGUF: the text model, or with ``mmproj=True`` the vision
    projector. ``outtype``: f32, f16, bf16 or q8_0 (what the converter writes itself)."""
    if outtype not in ("f32", "f16", "bf16", "q8_0"):
        raise ExportError(f"the converter writes f32, f16, bf16 or q8_0, not {outtype!r}")
    conv = converter if isinstance(converter, Path) and _is_converter(converter) else converter_dir(converter)
    # the converter runs in its own folder (cwd): every path it gets must be absolute
    out = Path(outfile).expanduser().resolve()
    args = [str(Path(hf_dir).expanduser().resolve()), "--outtype", outtype, "--outfile", str(out)]
    if mmproj:
        args.append("--mmproj")
    if model_name:
        args += ["--model-name", model_name]
    run_converter(conv, args)
    if not out.is_file():
        # some converter versions prefix mmproj output names; find what it wrote
        cands = sorted(out.parent.glob(f"*{out.name}"))
        if len(cands) == 1:
            os.replace(cands[0], out)
        else:
            raise ConversionError(f"the converter reported success but wrote no {out}")
    return out


_TINY_MARKER = "covip_tiny.json"


def convert_tiny_to_gguf(hf_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                         *, outtype: str = "f32") -> tuple[Path, Path]:
    """Convert an HF VLM directory to ``(text GGUF, mmproj GGUF)`` with llama.cpp's converter, cached.

    Tests and benchmarks use it on the built-in tiny models: the conversion lands in
    ``<cache>/gguf/<dir name>-llama-<version>/`` (the directory name carries the model's build hash) and is reused.
    A ``covip_tiny.json`` marker in ``hf_dir`` is copied next to the GGUFs and the GGUF's ``general.name``
    becomes ``covip-<tiny name>``, so the llama.cpp engine knows the model is meaningless.
    """
    hf = Path(hf_dir)
    if out_dir is None:
        out_dir = covip_cache() / "gguf" / f"{hf.name}-llama-{llama_cpp_version()}"
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
        name = None
        if marker.is_file():
            name = json.loads(marker.read_text()).get("name", hf.name)
            name = name if name.startswith("covip-") else f"covip-{name}"
            shutil.copy2(marker, out / _TINY_MARKER)
        convert_hf_to_gguf(hf, tmp / text_path.name, outtype=outtype, model_name=name, converter=conv)
        convert_hf_to_gguf(hf, tmp / mmproj_path.name, outtype=outtype, mmproj=True, converter=conv)
        os.replace(tmp / mmproj_path.name, mmproj_path)
        os.replace(tmp / text_path.name, text_path)  # last: its presence means the pair is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return text_path, mmproj_path
