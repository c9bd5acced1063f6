"""LiteRT (TFLite) backend, for .tflite models.

TFLite graphs usually have a fixed batch, and a converted LSTM keeps its state in variable
tensors between invokes: so windows run one at a time and the variables are reset before each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxgate.embedding.errors import ModelError


class LiteRtRuntime:
    name = "litert"

    def __init__(self, path: Path, input_name: str, output_name: str, threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ModelError(
                f"{path}: LiteRT is not installed ({exc}); pip install 'voxgate[litert]'"
            ) from None
        try:
            self._interp = Interpreter(model_path=str(path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: LiteRT cannot load it: {exc}") from None
        ins = {d["name"]: d for d in self._interp.get_input_details()}
        outs = {d["name"]: d for d in self._interp.get_output_details()}
        # Converters often prefix names (serving_default_x:0); accept a unique partial match.
        self._in = self._pick(path, ins, input_name, "input")
        self._out = self._pick(path, outs, output_name, "output")
        self._shape = tuple(int(n) for n in self._in["shape"])

    @staticmethod
    def _pick(path: Path, details: dict, name: str, what: str) -> dict:
        if name in details:
            return details[name]
        matches = [d for n, d in details.items() if name in n]
        if len(matches) != 1:
            raise ModelError(f"{path}: no {what} tensor {name!r} (it has {sorted(details)})")
        return matches[0]

    def run(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        rows = []
        for item in x:
            one = item[None]
            if one.shape != self._shape:
                # Whole-utterance models: the frame count changes per call.
                self._interp.resize_tensor_input(self._in["index"], one.shape)
                self._interp.allocate_tensors()
                self._shape = one.shape
            self._interp.reset_all_variables()
            self._interp.set_tensor(self._in["index"], one)
            self._interp.invoke()
            rows.append(
                np.array(self._interp.get_tensor(self._out["index"]), np.float32).reshape(-1)
            )
        return np.stack(rows)
