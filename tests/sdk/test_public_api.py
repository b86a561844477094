"""The curated public API is pinned, and the SDK imports on a laptop without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import covip.export
import covip.sdk
import covip.sdk.memory
import covip.sdk.vision
import covip.training

SDK_API = {
    "Assistant", "AssistantConfig", "Answer", "CaptionResult", "CagConfig", "Context", "ContextConfig",
    "ContextItem", "Engine", "Generation", "GenerationConfig", "make_engine", "EngineError", "DataError",
    "JudgeError", "ExportError",
    "Memory", "MemoryConfig", "IndexConfig", "default_home", "Concept", "Episode", "ForgetReport", "HistoryItem",
    "Hit", "PhotoRecord", "PhotoTags", "Remembered", "Turn", "User", "VerifyReport", "Photo", "load_photo", "Embedder",
    "EmbedderConfig", "make_embedder", "CovipError", "ConfigError", "MissingExtraError", "InputError", "ImageError",
    "EmptyImageError", "NotAnImageError", "TruncatedImageError", "ImageTooLargeError", "NotFoundError",
    "ConflictError", "StoreError", "SchemaError", "IndexCorruptError", "BundleError", "EmbedderError",
    "EncryptionError", "MissingKeyError", "WrongKeyError", "DecryptError", "DatabaseCorruptError",
    "DatabaseMissingError",
}


def test_public_api_is_pinned() -> None:
    assert set(covip.sdk.__all__) == SDK_API
    assert len(covip.sdk.__all__) == len(SDK_API)
    for name in covip.sdk.__all__:
        assert getattr(covip.sdk, name) is not None
    assert set(covip.sdk.vision.__all__) == {"Embedder", "EmbedderConfig", "OpenClipEmbedder", "make_embedder",
                                             "parse_embedder_spec"}
    assert {"Memory", "VectorIndex", "SCHEMA_VERSION", "migrate"} <= set(covip.sdk.memory.__all__)
    assert {"export_gguf", "verify_export", "register_verifier", "resolve_checkpoint", "ExportManifest",
            "write_manifest", "read_manifest"} <= set(covip.export.__all__)
    for name in covip.export.__all__:
        assert getattr(covip.export, name) is not None


def test_every_error_is_a_covip_error() -> None:
    for name in covip.sdk.__all__:
        obj = getattr(covip.sdk, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, covip.sdk.CovipError), name
    assert issubclass(covip.sdk.MissingExtraError, ImportError)
    assert issubclass(covip.sdk.InputError, ValueError)


BLOCK_TORCH = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in {'torch', 'torchvision', 'open_clip', 'transformers'}:
                raise ImportError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
""")


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_sdk_memory_works_without_torch(tmp_path) -> None:
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(photo)
    out = run_without_torch(f"""
        import numpy as np
        from covip.sdk import Memory
        with Memory.open({str(tmp_path / 'home')!r}) as mem:
            mem.add_user('ana')
            v = np.ones(8, dtype='float32')
            mem.remember('ana', {str(photo)!r}, 'hi', embedding=v, model_id='m/8')
            print(round(mem.search('ana', embedding=v, model_id='m/8', k=1)[0].score, 4))
        print('torch' in sys.modules)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.0", "False"]


def test_missing_extra_names_the_pip_line(tmp_path) -> None:
    out = run_without_torch(f"""
        from covip.sdk import Memory, MissingExtraError
        with Memory.open({str(tmp_path / 'home')!r}, embedder='tiny') as mem:
            mem.add_user('ana')
            try:
                mem.remember('ana', __import__('PIL.Image').Image.new('RGB', (8, 8)), 'hi')
            except MissingExtraError as exc:
                print(exc)
    """)
    assert out.returncode == 0, out.stderr
    assert "pip install 'covip[torch]'" in out.stdout
