"""Build a tiny whole-utterance ONNX speaker net on 80-bin Kaldi log fbank, with its card.

    python models/build_fbank_demo.py OUT_DIR

It has the interface of CAM++/ECAPA-TDNN/ResNet34 exports from WeSpeaker and 3D-Speaker
(input `feats` (1, T, 80) mean-normalised log fbank, output `embs` (1, D)), but its weights are
random (seeded): it is not a speaker model. It exists so tests can check that a model with a
different front end and input layout works from its card alone, with no code changes.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

BINS = 80
HIDDEN = 64
DIM = 32

CARD = """\
format: 1
id: fbank-demo-random/float
description: Random-weight stand-in for a CAM++/ECAPA export (tests only; not a speaker model).
license: Apache-2.0
build:
  command: python models/build_fbank_demo.py
model:
  file: {file}
  sha256: {sha}
  input: feats
  output: embs
  dim: {dim}
frontend:
  type: kaldi_fbank
  sample_rate: 16000
  num_mel_bins: {bins}
  frame_length_ms: 25.0
  frame_shift_ms: 10.0
  low_freq: 20.0
  high_freq: 0.0
  preemphasis: 0.97
  remove_dc_offset: true
  window: povey
  input_scale: 32768.0
  log: true
  mean_norm: true
windowing:
  type: whole
  min_audio_s: 0.5
"""


def build(out_dir: Path, seed: int = 7, name: str = "fbank-demo.onnx") -> Path:
    """Write the model and its card; returns the card's path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((BINS, HIDDEN)) / np.sqrt(BINS)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
    w2 = (rng.standard_normal((2 * HIDDEN, DIM)) / np.sqrt(2 * HIDDEN)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.array([1], np.int64), "time_axis"),
    ]
    # Frame-wise layer, then statistics pooling (mean and standard deviation over time),
    # then a projection: the shape of an x-vector, in miniature.
    nodes = [
        helper.make_node("MatMul", ["feats", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("ReduceMean", ["h", "time_axis"], ["mu"], keepdims=0),
        helper.make_node("Mul", ["h", "h"], ["h2"]),
        helper.make_node("ReduceMean", ["h2", "time_axis"], ["m2"], keepdims=0),
        helper.make_node("Mul", ["mu", "mu"], ["mu2"]),
        helper.make_node("Sub", ["m2", "mu2"], ["var"]),
        helper.make_node("Relu", ["var"], ["var_pos"]),
        helper.make_node("Sqrt", ["var_pos"], ["sd"]),
        helper.make_node("Concat", ["mu", "sd"], ["stats"], axis=1),
        helper.make_node("MatMul", ["stats", "w2"], ["embs"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fbank_demo",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, "T", BINS])],
        [helper.make_tensor_value_info("embs", TensorProto.FLOAT, [1, DIM])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="build_fbank_demo.py"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    onnx.save(model, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    card = out_dir / (path.stem + ".yaml")
    card.write_text(CARD.format(file=path.name, sha=sha, dim=DIM, bins=BINS))
    return card


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    print(build(args.out, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
