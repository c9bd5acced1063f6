"""Build the GE2E encoder as a LiteRT (TFLite) model, for devices that prefer LiteRT.

    python -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0
    /tmp/tfvenv/bin/python models/build_ge2e_tflite.py --weights .../resemblyzer/pretrained.pt

TensorFlow is needed here only, at build time; the device runs the file with `ai-edge-litert`.
The weights come from Resemblyzer's `pretrained.pt` through voxgate's restricted torch-file
reader (numpy only). The Keras LSTM converts to TFLite's fused LSTM op; weights are stored as
float16 (computed in float32), which halves the file without the accuracy loss of int8 on the
raw mel-power input. The graph has batch 1 and one 160-frame window per invoke; the LSTM keeps
its state in variable tensors, which the runtime resets before every window.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from types import ModuleType

    import tf_keras

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "daemon" / "voxgate" / "models"
FRAMES, BANDS, HIDDEN = 160, 40, 256


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def find_pretrained() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --weights PATH/TO/resemblyzer/pretrained.pt")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def build_keras(weights: dict[str, np.ndarray]) -> tf_keras.Model:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras

    inp = keras.Input(shape=(FRAMES, BANDS), batch_size=1, name="mels")
    x = inp
    for layer in range(3):
        lstm = keras.layers.LSTM(
            HIDDEN, return_sequences=layer < 2, unroll=False, name=f"lstm{layer}"
        )
        x = lstm(x)
        # PyTorch and Keras both order the gates i, f, g(c), o; Keras has one bias.
        lstm.set_weights(
            [
                weights[f"lstm.weight_ih_l{layer}"].T,
                weights[f"lstm.weight_hh_l{layer}"].T,
                weights[f"lstm.bias_ih_l{layer}"] + weights[f"lstm.bias_hh_l{layer}"],
            ]
        )
    dense = keras.layers.Dense(HIDDEN, activation="relu", name="linear")
    x = dense(x)
    dense.set_weights([weights["linear.weight"].T, weights["linear.bias"]])
    out = keras.layers.Lambda(
        lambda v: (
            v
            / keras.backend.maximum(
                keras.backend.sqrt(keras.backend.sum(v * v, axis=1, keepdims=True)), 1e-12
            )
        ),
        name="embedding",
    )(x)
    return keras.Model(inp, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--weights", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    torchfile = _load_module(
        "voxgate_torchfile", REPO / "daemon" / "voxgate" / "embedding" / "torchfile.py"
    )
    source = args.weights or find_pretrained()
    state = torchfile.load_legacy(source)["model_state"]
    weights = {
        k: np.asarray(v, np.float32) for k, v in state.items() if k.startswith(("lstm.", "linear."))
    }
    model = build_keras(weights)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    blob = converter.convert()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "ge2e-resemblyzer-fp16.tflite"
    path.write_bytes(blob)
    interp = tf.lite.Interpreter(model_path=str(path))
    in_name = interp.get_input_details()[0]["name"]
    out_name = interp.get_output_details()[0]["name"]
    ge2e = _load_module("build_ge2e", REPO / "models" / "build_ge2e.py")
    version = ge2e.resemblyzer_version()
    ge2e.write_card(
        args.out / "ge2e-fp16-litert.yaml",
        path,
        f"ge2e-resemblyzer-{version}/fp16-litert",
        "LiteRT (TFLite) fused LSTM, float16 weights, batch 1.",
        source,
        sum(v.size for v in weights.values()),
        {
            "command": "python models/build_ge2e_tflite.py",
            "tensorflow": f'"{tf.__version__}"',
        },
        tensors=(in_name, out_name),
    )
    sha = hashlib.sha256(blob).hexdigest()
    print(f"{path}  {len(blob) / 1e6:.2f} MB  sha256 {sha}  in={in_name} out={out_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
