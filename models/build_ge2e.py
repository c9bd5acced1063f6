"""Build the shipped GE2E speaker-encoder models from Resemblyzer's weights.

    python models/build_ge2e.py            # writes daemon/voxgate/models/ge2e-*.{onnx,yaml}

Needs numpy, onnx and onnxruntime (for its dynamic quantizer); no torch. The weights come from
the PyPI package `resemblyzer` (Apache-2.0), file `resemblyzer/pretrained.pt`, read with the
restricted legacy-format reader in voxgate.embedding.torchfile. Resemblyzer itself is not
imported (it needs librosa and torch); only its file is located.

Outputs, each with a model card (YAML) carrying the file's sha256:
- ge2e-resemblyzer-float.onnx  float32 reference (plain ONNX LSTM ops)
- ge2e-resemblyzer-int8.onnx   dynamic int8, except the first LSTM layer which stays float:
                               its input is raw mel power spanning many decades, which int8
                               activations cannot hold.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "daemon"))

OUT_DIR = REPO / "daemon" / "voxgate" / "models"
OPSET = 18
HIDDEN = 256
N_LAYERS = 3
INPUT_NAME = "mels"
OUTPUT_NAME = "embedding"


def find_pretrained() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("resemblyzer is not installed: pip install --no-deps resemblyzer==0.1.4")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise SystemExit(f"{path} is missing")
    return path


def _onnx_gates(w: np.ndarray) -> np.ndarray:
    """PyTorch stacks LSTM gates as i, f, g, o; ONNX wants i, o, f, c."""
    i, f, g, o = np.split(w, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


ANCHOR_BIAS = 40.0  # saturates sigmoid and tanh to exactly 1.0 in float32


def add_range_anchors(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two extra hidden units per LSTM layer whose outputs are +tanh(t) and -tanh(t) at step t.

    ONNX Runtime's int8 LSTM and MatMul quantize their inputs per call, with the range of the
    whole batch; without anchors an embedding would change slightly with the other windows
    sharing its call. Every real unit has |c_t| < t (each step adds at most |i*g| < 1 to a
    forgotten cell), so |h_t| < tanh(t): a unit with input, forget and output gates pinned at
    1 and g = +-1 reaches exactly that bound, which makes every quantized range the same for
    any batch. The anchors feed nothing: their columns in the next layer's weights and in the
    linear layer are zero.
    """
    out = {}
    for layer in range(N_LAYERS):
        w_ih = weights[f"lstm.weight_ih_l{layer}"]
        w_hh = weights[f"lstm.weight_hh_l{layer}"]
        h = w_hh.shape[1]
        n_in = w_ih.shape[1] + (2 if layer > 0 else 0)
        new_ih = np.zeros((4, h + 2, n_in), np.float32)
        new_ih[:, :h, : w_ih.shape[1]] = w_ih.reshape(4, h, -1)
        new_hh = np.zeros((4, h + 2, h + 2), np.float32)
        new_hh[:, :h, :h] = w_hh.reshape(4, h, h)
        b_ih = np.zeros((4, h + 2), np.float32)
        b_ih[:, :h] = weights[f"lstm.bias_ih_l{layer}"].reshape(4, h)
        b_hh = np.zeros((4, h + 2), np.float32)
        b_hh[:, :h] = weights[f"lstm.bias_hh_l{layer}"].reshape(4, h)
        # PyTorch gate order i, f, g, o.
        b_ih[[0, 1, 3], h:] = ANCHOR_BIAS
        b_ih[2, h] = ANCHOR_BIAS
        b_ih[2, h + 1] = -ANCHOR_BIAS
        out[f"lstm.weight_ih_l{layer}"] = new_ih.reshape(4 * (h + 2), n_in)
        out[f"lstm.weight_hh_l{layer}"] = new_hh.reshape(4 * (h + 2), h + 2)
        out[f"lstm.bias_ih_l{layer}"] = b_ih.reshape(-1)
        out[f"lstm.bias_hh_l{layer}"] = b_hh.reshape(-1)
    lin = weights["linear.weight"]
    out["linear.weight"] = np.concatenate([lin, np.zeros((lin.shape[0], 2), np.float32)], axis=1)
    out["linear.bias"] = weights["linear.bias"]
    return out


def build_float(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden = weights["lstm.weight_hh_l0"].shape[1]
    dim = weights["linear.weight"].shape[0]
    inits = []
    nodes = [helper.make_node("Transpose", [INPUT_NAME], ["x0"], perm=[1, 0, 2])]  # time-major
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    x = "x0"
    for layer in range(N_LAYERS):
        w = _onnx_gates(weights[f"lstm.weight_ih_l{layer}"])[None]
        r = _onnx_gates(weights[f"lstm.weight_hh_l{layer}"])[None]
        b = np.concatenate(
            [
                _onnx_gates(weights[f"lstm.bias_ih_l{layer}"]),
                _onnx_gates(weights[f"lstm.bias_hh_l{layer}"]),
            ]
        )[None]
        for name, arr in ((f"W{layer}", w), (f"R{layer}", r), (f"B{layer}", b)):
            inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        last = layer == N_LAYERS - 1
        outputs = ["", f"h{layer}"] if last else [f"y{layer}"]
        nodes.append(
            helper.make_node(
                "LSTM",
                [x, f"W{layer}", f"R{layer}", f"B{layer}"],
                outputs,
                name=f"lstm{layer}",
                hidden_size=hidden,
            )
        )
        if not last:
            # Y is (T, num_directions=1, B, H): drop the direction axis for the next layer.
            nodes.append(helper.make_node("Squeeze", [f"y{layer}", "axis1"], [f"x{layer + 1}"]))
            x = f"x{layer + 1}"
    inits.append(numpy_helper.from_array(weights["linear.weight"].T.copy(), "linear_w"))
    inits.append(numpy_helper.from_array(weights["linear.bias"], "linear_b"))
    inits.append(numpy_helper.from_array(np.array(1e-12, np.float32), "eps"))
    nodes += [
        helper.make_node("Squeeze", [f"h{N_LAYERS - 1}", "axis0"], ["last"]),
        helper.make_node("MatMul", ["last", "linear_w"], ["lin"], name="linear"),
        helper.make_node("Add", ["lin", "linear_b"], ["lin_b"]),
        helper.make_node("Relu", ["lin_b"], ["raw"]),
        helper.make_node("ReduceL2", ["raw", "axis1"], ["norm"], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["safe_norm"]),
        helper.make_node("Div", ["raw", "safe_norm"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "ge2e_speaker_encoder",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", "frames", 40])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="voxgate models/build_ge2e.py",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def quantize(float_path: Path, out_path: Path, keep_first_float: bool = True) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(float_path),
        str(out_path),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["LSTM", "MatMul"],
        nodes_to_exclude=["lstm0"] if keep_first_float else [],
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CARD = """\
# voxgate model card (format: docs/models.md), written by the script named under build:.
# Do not edit the sha256 by hand: rebuild instead.
format: 1
id: {model_id}
description: >-
  GE2E speaker encoder (Wan et al. 2018) as trained by Resemblyzer: 3 LSTM layers
  (40->256->256->256), linear 256->256, ReLU, L2 norm; {params} parameters.
  {variant_text}
source:
  package: resemblyzer
  version: "{version}"
  file: resemblyzer/pretrained.pt
  file_sha256: {source_sha}
  url: https://pypi.org/project/Resemblyzer/{version}/
license: Apache-2.0
build:
{build}model:
  file: {file}
  sha256: {sha}
  input: {input}
  output: {output}
  dim: 256
frontend:
  type: mel_power
  sample_rate: 16000
  n_fft: 400
  hop_length: 160
  n_mels: 40
  fmin: 0.0
  fmax: 8000.0
  level_dbfs: -30.0
windowing:
  # Windows end to end (upstream's lowest rate, 0.625 a second): a third fewer windows than
  # 50 % overlap on 3 s of speech, at the same EER (docs/models.md, "Windows end to end").
  type: sliding
  frames: 160
  hop: 160
  min_coverage: 0.75
  min_audio_s: 0.5
  last: end
  short: repeat
trim:
  # Speech only reaches the network (embedding/trim.py; docs/speaker-verification.md).
  vad_mode: 3
  frame_ms: 30
  level_dbfs: -30.0
  onset_s: 1.0
  smooth_frames: 8
  pad_frames: 3
{evaluation}"""

NO_EVALUATION = "evaluation:\n  eer_percent: null\n"


def write_card(
    path: Path,
    model_file: Path,
    model_id: str,
    variant_text: str,
    source: Path,
    params: int,
    build: dict[str, str],
    tensors: tuple[str, str] = (INPUT_NAME, OUTPUT_NAME),
) -> None:
    """Write a card. A rebuild that gives the same card (model bytes, build tools, front
    end, windows, trim) keeps its measured `evaluation:` block; any change resets it, since
    old figures would not describe the new card."""
    sha = sha256(model_file)
    build_lines = "".join(f"  {k}: {v}\n" for k, v in build.items())
    text = CARD.format(
        model_id=model_id,
        params=f"{params:,}",
        variant_text=variant_text,
        version=resemblyzer_version(),
        source_sha=sha256(source),
        build=build_lines,
        file=model_file.name,
        sha=sha,
        input=tensors[0],
        output=tensors[1],
        evaluation="",
    )
    evaluation = NO_EVALUATION
    if path.exists():
        old = path.read_text()
        cut = old.find("\nevaluation:") + 1
        if cut and old[:cut] == text:
            evaluation = old[cut:]
    path.write_text(text + evaluation)


def resemblyzer_version() -> str:
    try:
        return importlib.metadata.version("resemblyzer")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.4"


def main(argv: list[str] | None = None) -> int:
    # What is missing said in one line, not as a traceback (onnx is a build-time need only).
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise SystemExit(
            f"{exc}: the build needs onnx and onnxruntime (pip install onnx)"
        ) from None
    try:
        from voxgate.embedding.reference import load_ge2e_weights
        from voxgate.embedding.torchfile import TorchFileError
    except ImportError as exc:
        raise SystemExit(
            f"{exc}: the build needs voxgate's dependencies (pip install -e .)"
        ) from None

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=OUT_DIR, help="output folder (default: %(default)s)"
    )
    ap.add_argument(
        "--weights", type=Path, help="pretrained.pt (default: from the resemblyzer package)"
    )
    ap.add_argument(
        "--all-int8",
        action="store_true",
        help="also write ge2e-resemblyzer-int8all.onnx + card, every layer int8 (a comparison; "
        "not shipped)",
    )
    args = ap.parse_args(argv)

    source = args.weights or find_pretrained()
    if not source.is_file():
        raise SystemExit(f"{source}: not a file (--weights: Resemblyzer's pretrained.pt)")
    try:
        weights = load_ge2e_weights(source)
    except (OSError, TorchFileError) as exc:
        raise SystemExit(f"cannot read the weights: {exc}") from None
    print(f"weights {source} (sha256 {sha256(source)})", flush=True)
    params = sum(v.size for v in weights.values())
    version = resemblyzer_version()
    args.out.mkdir(parents=True, exist_ok=True)

    float_path = args.out / "ge2e-resemblyzer-float.onnx"
    onnx.save(build_float(weights), float_path)
    int8_path = args.out / "ge2e-resemblyzer-int8.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        # The quantizer writes side files; keep them out of the output folder.
        anchored = Path(tmp) / "anchored.onnx"
        onnx.save(build_float(add_range_anchors(weights)), anchored)
        tmp_out = Path(tmp) / int8_path.name
        quantize(anchored, tmp_out)
        int8_path.write_bytes(tmp_out.read_bytes())

    build = {
        "command": "python models/build_ge2e.py",
        "onnx": f'"{onnx.__version__}"',
        "onnxruntime": f'"{onnxruntime.__version__}"',
    }
    write_card(
        args.out / "ge2e-float.yaml",
        float_path,
        f"ge2e-resemblyzer-{version}/float",
        "Float32 weights.",
        source,
        params,
        build,
    )
    write_card(
        args.out / "ge2e-int8.yaml",
        int8_path,
        f"ge2e-resemblyzer-{version}/int8",
        "Dynamic int8 weights per output channel, except the first LSTM layer (float);\n"
        "  two range-anchor units per layer keep int8 ranges independent of the batch.",
        source,
        params,
        build,
    )
    outputs = [float_path, int8_path]
    if args.all_int8:
        all_path = args.out / "ge2e-resemblyzer-int8all.onnx"
        with tempfile.TemporaryDirectory() as tmp:
            anchored = Path(tmp) / "anchored.onnx"
            onnx.save(build_float(add_range_anchors(weights)), anchored)
            quantize(anchored, Path(tmp) / all_path.name, keep_first_float=False)
            all_path.write_bytes((Path(tmp) / all_path.name).read_bytes())
        write_card(
            args.out / "ge2e-int8all.yaml",
            all_path,
            f"ge2e-resemblyzer-{version}/int8all",
            "Every layer dynamic int8 (comparison only: the raw mel-power input defeats it).",
            source,
            params,
            build,
        )
        outputs.append(all_path)
    for p in outputs:
        print(f"{p}  {p.stat().st_size / 1e6:.2f} MB  sha256 {sha256(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
