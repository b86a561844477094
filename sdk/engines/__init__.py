"""Inference engines: one :class:`Engine` interface over transformers, llama.cpp and ONNX back ends.

Importing this package never imports torch or transformers; an engine loads them when it is built.
"""

from __future__ import annotations

from covip.sdk.engines.base import Engine, EngineState, Generation, GenerationConfig, Message
from covip.sdk.engines.factory import describe_model_spec, make_engine
from covip.sdk.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig
from covip.sdk.engines.onnx import OnnxEngine, OnnxEngineConfig
from covip.sdk.engines.transformers import TransformersEngine, TransformersEngineConfig

__all__ = [
    "Engine",
    "EngineState",
    "Generation",
    "GenerationConfig",
    "Message",
    "TransformersEngine",
    "TransformersEngineConfig",
    "LlamaCppEngine",
    "LlamaCppEngineConfig",
    "OnnxEngine",
    "OnnxEngineConfig",
    "make_engine",
    "describe_model_spec",
]
