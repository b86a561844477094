"""Every covip config takes overrides the same way: one ``with_overrides`` signature, three input forms."""

from __future__ import annotations

import inspect

import pytest

from covip.sdk.errors import InputError


def _config_classes() -> list[type]:
    from covip.sdk.assistant import AssistantConfig
    from covip.sdk.cag import CagConfig
    from covip.sdk.context import ContextConfig
    from covip.sdk.engines.llamacpp import LlamaCppEngineConfig
    from covip.sdk.engines.onnx import OnnxEngineConfig
    from covip.sdk.engines.transformers import TransformersEngineConfig
    from covip.sdk.vision import EmbedderConfig
    from covip.training.embedder_config import EmbedderTrainConfig
    from covip.training.gspo_config import GspoConfig
    from covip.training.sft_config import SftConfig

    return [AssistantConfig, CagConfig, ContextConfig, LlamaCppEngineConfig, OnnxEngineConfig,
            TransformersEngineConfig, EmbedderConfig, EmbedderTrainConfig, GspoConfig, SftConfig]


def test_one_override_signature() -> None:
    """A caller (or the CLI) can override any config without knowing which kind it is."""
    shapes = {}
    for cls in _config_classes():
        sig = inspect.signature(cls.with_overrides)
        shapes[cls.__name__] = [(p.name, p.kind) for p in sig.parameters.values()]
    expected = [("self", inspect.Parameter.POSITIONAL_ONLY), ("overrides", inspect.Parameter.POSITIONAL_ONLY),
                ("values", inspect.Parameter.VAR_KEYWORD)]
    for name, shape in shapes.items():
        assert [(n, k) for n, k in shape if n != "self"] == expected[1:], name


def test_three_forms_agree_flat_and_grouped() -> None:
    from covip.sdk.context import ContextConfig
    from covip.training.gspo_config import load_config

    base = ContextConfig()
    for changed in (base.with_overrides(k=3), base.with_overrides({"k": 3}), base.with_overrides(["k=3"])):
        assert changed.k == 3 and base.k != 3  # a copy: the caller's config is untouched
    gspo = load_config("tiny-cpu")
    a = gspo.with_overrides({"gspo.max_steps": 2})
    b = gspo.with_overrides(["gspo.max_steps=2"])
    assert a.gspo.max_steps == b.gspo.max_steps == 2 and gspo.gspo.max_steps != 2
    with pytest.raises(InputError, match="unknown ContextConfig field"):
        base.with_overrides(["nope=1"])
    with pytest.raises(InputError, match="key=value"):
        base.with_overrides(["k"])
    with pytest.raises(InputError, match="one string"):
        base.with_overrides("k=3")
