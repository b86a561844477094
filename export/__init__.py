"""covip.export: LoRA merge, GGUF/ONNX export, quantization and parity checks (issue 5; not built yet)."""

__all__: list[str] = []
