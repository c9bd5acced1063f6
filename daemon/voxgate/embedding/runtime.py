"""Inference runtimes behind one small interface; the model file's suffix picks one.

Each backend module imports its runtime package only when used, so a device needs only the
runtime its model uses (onnxruntime by default; ai-edge-litert for .tflite models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from voxgate.embedding.errors import ModelError


class Runtime(Protocol):
    name: str

    def run(self, features: np.ndarray) -> np.ndarray:
        """features (batch, frames, bins) float32 -> (batch, dim) float32."""
        ...


def open_runtime(kind: str, path: Path, input_name: str, output_name: str, threads: int) -> Runtime:
    if kind == "onnxruntime":
        from voxgate.embedding.onnx_backend import OnnxRuntime

        return OnnxRuntime(path, input_name, output_name, threads)
    if kind == "litert":
        from voxgate.embedding.litert_backend import LiteRtRuntime

        return LiteRtRuntime(path, input_name, output_name, threads)
    raise ModelError(f"{path}: no runtime {kind!r}")
