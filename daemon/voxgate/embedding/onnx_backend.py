"""ONNX Runtime backend (the default: the int8 LSTM kernels are fastest on ARM and x86)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from voxgate.embedding.errors import ModelError


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path: Path, input_name: str, output_name: str, threads: int) -> None:
        # Everything stays on the device: onnxruntime (1.32) otherwise queues 1DS telemetry
        # for Microsoft's collector in ~/.cache/Microsoft. Read when the runtime starts.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError(f"{path}: onnxruntime is not installed ({exc})") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        # No arena: it keeps the peak of every batch size it has seen (it grows by powers of
        # two) and never gives memory back. Without it, freed tensors return to malloc and so
        # to the OS (see service/malloc.py). Same speed; the real-stage soak settled 8 MB lower.
        opts.enable_cpu_mem_arena = False
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if input_name not in inputs:
            raise ModelError(f"{path}: no input tensor {input_name!r} (it has {inputs})")
        if output_name not in outputs:
            raise ModelError(f"{path}: no output tensor {output_name!r} (it has {outputs})")
        self._input = input_name
        self._output = output_name
        # An export with a fixed batch of 1 (common for CAM++/ECAPA exports, and what a
        # GE2E export gets without dynamic_axes) loaded and passed the one-window probe, then
        # failed on every utterance of 2+ windows: such a model gets its windows one by one.
        (shape,) = [i.shape for i in self._session.get_inputs() if i.name == input_name]
        self._one_at_a_time = bool(shape) and shape[0] == 1

    def run(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if self._one_at_a_time and x.shape[0] > 1:
            return np.concatenate([self.run(x[i : i + 1]) for i in range(x.shape[0])])
        (out,) = self._session.run([self._output], {self._input: x})
        return np.asarray(out, np.float32).reshape(x.shape[0], -1)
