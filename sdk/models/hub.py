"""Hugging Face Hub checkpoints ahead of time: ``covip pull`` and the Hub cache that ``covip models`` lists.

:func:`pull` downloads a model repository (or the files of it matching ``include`` patterns, e.g. one GGUF
quant and its mmproj) into the Hugging Face cache through ``huggingface_hub.snapshot_download``, the same
cache transformers reads, so a later ``covip ask --model ID`` runs without network. It looks in the cache
first (``local_files_only=True``): a snapshot already there is reported, not fetched again. The id,
revision and patterns are checked before anything touches the network or the file system.

``huggingface_hub`` comes with transformers (``pip install 'covip[torch]'``); the base install lacks it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from covip.sdk._extras import require
from covip.sdk.errors import CovipError, InputError, NotFoundError

__all__ = ["PullResult", "pull", "check_repo_id", "check_revision", "check_patterns", "hub_cache_dir",
           "hub_offline", "repo_folder", "snapshot_files", "MAX_REPO_ID"]

log = logging.getLogger(__name__)

MAX_REPO_ID = 96
"""The Hub's limit on a repository id (``owner/name``), in characters."""
_MAX_REVISION = 200
_MAX_PATTERN = 200
_MAX_PATTERNS = 50
_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_HUB_EXTRA = "torch"  # huggingface_hub comes with transformers


def _shown(value: str, limit: int = 80) -> str:
    """``value`` quoted for an error message, cut short when an attacker sends megabytes."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def check_repo_id(repo_id: Any) -> str:
    """``repo_id`` if it is a Hub model id ``owner/name``; else an InputError saying what is wrong with it."""
    if not isinstance(repo_id, str) or not repo_id:
        raise InputError("give a Hugging Face model id as owner/name, e.g. Qwen/Qwen3-VL-2B-Instruct")
    if len(repo_id) > MAX_REPO_ID:
        raise InputError(f"model id {_shown(repo_id)} is {len(repo_id)} characters long; Hugging Face ids have at "
                         f"most {MAX_REPO_ID} (owner/name)")
    if repo_id.startswith(("/", "~", ".", "\\")) or os.path.isabs(repo_id) or "\\" in repo_id or ":" in repo_id:
        raise InputError(f"{_shown(repo_id)} looks like a path; `covip pull` takes a Hugging Face model id "
                         "(owner/name, e.g. Qwen/Qwen3-VL-2B-Instruct). A local model needs no pull: pass its "
                         "folder to --model")
    if ".." in repo_id or "--" in repo_id:
        raise InputError(f"model id {_shown(repo_id)} contains '..' or '--', which Hugging Face ids never do")
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise InputError(f"model id {_shown(repo_id)} must be owner/name (exactly one '/'), e.g. "
                         "ggml-org/Qwen3-VL-2B-Instruct-GGUF")
    for part in parts:
        if not _PART.fullmatch(part):
            raise InputError(f"model id {_shown(repo_id)}: {_shown(part)} may hold only letters, digits, '.', '_' "
                             "and '-', and must start and end with a letter or digit")
    return repo_id


def check_revision(revision: Any) -> str | None:
    """``revision`` (branch, tag or commit hash) if it is well formed, None for the default branch."""
    if revision is None:
        return None
    if not isinstance(revision, str) or not revision:
        raise InputError("--revision must be a branch, tag or commit hash, e.g. main")
    if (len(revision) > _MAX_REVISION or not _REVISION.fullmatch(revision) or ".." in revision
            or "//" in revision or revision.endswith(("/", "."))):
        raise InputError(f"--revision {_shown(revision)} is not a branch, tag or commit hash (letters, digits, "
                         f"'.', '_', '-', '/'; no '..'; at most {_MAX_REVISION} characters)")
    return revision


def check_patterns(patterns: Sequence[str] | None) -> list[str]:
    """The ``--include`` glob patterns, checked: matched against file paths inside the repository."""
    out: list[str] = []
    for pat in patterns or ():
        if not isinstance(pat, str) or not pat.strip():
            raise InputError("--include needs a glob pattern, e.g. '*Q4_K_M.gguf'")
        if len(pat) > _MAX_PATTERN or not pat.isprintable():
            raise InputError(f"--include {_shown(pat)}: a pattern is at most {_MAX_PATTERN} printable characters")
        if pat.startswith(("/", "\\")) or ".." in pat.split("/"):
            raise InputError(f"--include {_shown(pat)}: patterns match file paths inside the repository "
                             "(e.g. '*.gguf', 'mmproj*'), not paths on this machine")
        out.append(pat)
    if len(out) > _MAX_PATTERNS:
        raise InputError(f"at most {_MAX_PATTERNS} --include patterns, got {len(out)}")
    return out


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder, read from the environment now, as huggingface_hub reads it at import:
    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/...``)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline(hf: ModuleType | None = None) -> bool:
    """Whether Hub access is switched off: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set now or when
    huggingface_hub was imported."""
    if _true("HF_HUB_OFFLINE") or _true("TRANSFORMERS_OFFLINE"):
        return True
    constants = getattr(hf, "constants", None) if hf is not None else None
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def repo_folder(repo_id: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the Hub cache keeps a model repository: ``<cache>/models--owner--name``."""
    root = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    return root / ("models--" + check_repo_id(repo_id).replace("/", "--"))


def snapshot_files(path: Path) -> tuple[int, int]:
    """(files, bytes) of a snapshot folder (its files are links into ``blobs/``; sizes are the blobs')."""
    files = size = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += (Path(root) / name).stat().st_size
                files += 1
            except OSError:  # a dangling link: a blob was deleted by hand
                continue
    return files, size


@dataclass
class PullResult:
    """What :func:`pull` did: the snapshot folder, and whether it was in the cache already."""

    repo_id: str
    revision: str
    path: Path
    commit: str
    files: int
    bytes: int
    already_cached: bool
    include: list[str] = field(default_factory=list)
    seconds: float = 0.0
    has_gguf: bool = False


def pull(repo_id: str, *, revision: str | None = None, include: Sequence[str] | None = None,
         refresh: bool = False, cache_dir: str | os.PathLike[str] | None = None,
         token: str | bool | None = None) -> PullResult:
    """Download ``repo_id`` (or its files matching ``include``) into the Hub cache; see the module doc.

    ``refresh`` asks the Hub even when the cache has a snapshot (for files an earlier ``include`` left
    out, or a branch that moved on). Errors say what failed and what to do: offline and not cached
    (``NotFoundError``), no such repository or revision (``NotFoundError``), gated, bad token or network
    down (``CovipError``).
    """
    repo_id = check_repo_id(repo_id)
    rev = check_revision(revision)
    patterns = check_patterns(include)
    hf = require("huggingface_hub", feature="covip pull (downloading a Hugging Face checkpoint)", extra=_HUB_EXTRA)
    from huggingface_hub import errors as hf_errors

    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    offline = hub_offline(hf)
    what = f"{repo_id} (revision {rev or 'main'}" + (f", files {', '.join(patterns)})" if patterns else ")")
    if refresh and offline:
        raise InputError("--refresh asks the Hugging Face Hub, but HF_HUB_OFFLINE is set: unset it (or drop "
                         "--refresh to use the cache)")
    start = time.perf_counter()
    if not refresh:
        local, incomplete = _local_snapshot(hf, hf_errors, repo_id, rev, patterns, cache)
        if local is not None:
            return _result(repo_id, rev, local, patterns, already=True, seconds=time.perf_counter() - start)
        if offline:
            state = (f"only partly in the Hugging Face cache {cache} ({incomplete})" if incomplete
                     else f"not in the Hugging Face cache {cache}")
            raise NotFoundError(
                f"{what} is {state}, and HF_HUB_OFFLINE=1 keeps covip off the network. Unset HF_HUB_OFFLINE (or "
                f"set it to 0) where the Hub can be reached and run `covip pull {repo_id}` again, or copy the "
                f"folder {repo_folder(repo_id, cache).name} into {cache} from a machine that has it")
    log.info("downloading %s into %s", what, cache)
    try:
        path = hf.snapshot_download(repo_id, revision=rev, allow_patterns=patterns or None, cache_dir=str(cache),
                                    token=token)
    except Exception as exc:  # noqa: BLE001 - every Hub failure becomes a CovipError that says what to do
        _raise_hub_error(exc, hf_errors, repo_id, rev, what, cache)
        raise
    result = _result(repo_id, rev, Path(path), patterns, already=False, seconds=time.perf_counter() - start)
    unmatched = [p for p in patterns if not _matching(hf, result.path, p)]
    if unmatched:
        raise NotFoundError(f"no file of {repo_id} (revision {rev or 'main'}) matches --include {unmatched[0]!r}; "
                            f"see its files at https://huggingface.co/{repo_id}/tree/{rev or 'main'} (patterns are "
                            "globs over paths in the repository, e.g. '*Q4_K_M.gguf', 'mmproj*')")
    return result


def _local_snapshot(hf: ModuleType, hf_errors: ModuleType, repo_id: str, rev: str | None, patterns: list[str],
                    cache: Path) -> tuple[Path | None, str | None]:
    """(the cached snapshot that has every requested file, None) or (None, why the cached one falls short)."""
    incomplete_error = getattr(hf_errors, "IncompleteSnapshotError", None)
    try:
        path = Path(hf.snapshot_download(repo_id, revision=rev, allow_patterns=patterns or None,
                                         cache_dir=str(cache), local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - anything but a usable snapshot means "not cached"
        if incomplete_error is not None and isinstance(exc, incomplete_error):
            return None, "the cached snapshot misses files"
        if isinstance(exc, (hf_errors.LocalEntryNotFoundError, OSError, ValueError)):
            log.debug("%s is not in the cache: %s", repo_id, exc)
            return None, None
        raise
    files, _ = snapshot_files(path)
    if not files:
        return None, None
    missing = [p for p in patterns if not _matching(hf, path, p)]  # older huggingface_hub cannot tell
    if missing:
        return None, f"no cached file matches {missing[0]!r}"
    return path, None


def _matching(hf: ModuleType, snapshot: Path, pattern: str) -> bool:
    """Whether a file of ``snapshot`` matches ``pattern`` the way snapshot_download's allow_patterns match."""
    rel = [str(Path(root, name).relative_to(snapshot)).replace(os.sep, "/")
           for root, _dirs, names in os.walk(snapshot) for name in names]
    return bool(list(hf.utils.filter_repo_objects(items=rel, allow_patterns=[pattern])))


def _result(repo_id: str, rev: str | None, path: Path, patterns: list[str], *, already: bool,
            seconds: float) -> PullResult:
    files, size = snapshot_files(path)
    has_gguf = any(path.rglob("*.gguf"))
    return PullResult(repo_id=repo_id, revision=rev or "main", path=path, commit=path.name, files=files,
                      bytes=size, already_cached=already, include=list(patterns), seconds=round(seconds, 2),
                      has_gguf=has_gguf)


_NETWORK_MODULES = ("httpx", "httpcore", "requests", "urllib3", "huggingface_hub")


def _raise_hub_error(exc: Exception, hf_errors: ModuleType, repo_id: str, rev: str | None, what: str,
                     cache: Path) -> None:
    """Turn a failure of snapshot_download into a CovipError naming the fix; return for anything else."""
    url = f"https://huggingface.co/{repo_id}"
    login = "log in with `hf auth login` or set HF_TOKEN"
    if isinstance(exc, hf_errors.GatedRepoError):
        raise CovipError(f"{repo_id} is gated: accept its terms at {url} with your account, then {login} "
                         f"(Hub said: {_first_line(exc)})") from exc
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        raise NotFoundError(f"{repo_id} has no revision {rev!r} (a branch, tag or commit hash): see {url}/tree/main "
                            "and its branches") from exc
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        raise NotFoundError(f"there is no model {repo_id} on the Hugging Face Hub, or it is private: check the "
                            f"spelling at {url}; for a private one, {login}") from exc
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise CovipError(f"the Hugging Face Hub refused access to {repo_id} (HTTP {status}): check the token "
                             f"($HF_TOKEN, or {login} again)") from exc
        raise CovipError(f"the Hugging Face Hub failed on {what} (HTTP {status}: {_first_line(exc)}); try again "
                         "later (files already downloaded are kept and not fetched again)") from exc
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):
        raise CovipError(
            f"cannot reach the Hugging Face Hub to download {what}, and the cache {cache} does not have it "
            f"({_first_line(exc)}). Check the network (behind a proxy set HTTPS_PROXY; for a mirror set "
            f"HF_ENDPOINT) and run again; on a machine without network, copy {repo_folder(repo_id, cache).name} "
            "into the cache from one that has it, and set HF_HUB_OFFLINE=1") from exc
    if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.startswith(_NETWORK_MODULES):
        raise CovipError(f"the download of {what} failed ({type(exc).__name__}: {_first_line(exc)}); check the "
                         "network and run the same command again: finished files are kept") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
