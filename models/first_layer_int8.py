"""Which part of the first LSTM layer breaks under int8 (why the int8 model keeps it float)?

    PYTHONPATH=daemon python models/first_layer_int8.py [--data ../shared/data] [--items 60]

Runs the float GE2E network (models/build_ge2e.py) on the windows the embedder makes from
real vcc2018_eval sentences, once exact and once with one part of layer 1 rounded the way ONNX
Runtime's DynamicQuantizeLSTM rounds it, and prints the cosine to the exact embeddings:
- the input X, uint8 per tensor over a call of 3 windows (asymmetric, dynamic range);
- the input weights W, int8 per output row (symmetric);
- the recurrent weights R, int8 per output row.
That operator quantizes all three together, so one that breaks rules the layer out.
Then the ways around it tried: W rounded after a per-band balance (W*D, x/D, with D the 99th
percentile of each band), X rounded with one scale per time step after that balance (a
kernel that quantises its input step by step), and X with more bits than uint8 (what
splitting X into a coarse part and a scaled residual could give at best): how small a mel
power still matters.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "daemon"))
sys.path.insert(0, str(REPO / "models"))


def windows(data: Path, items: int) -> np.ndarray:
    """The exact network input of the shipped card for the first `items` sentences."""
    from voxgate.audio.file import read_audio
    from voxgate.embedding import load_embedder
    from voxgate.features import to_float

    emb = load_embedder()
    folder = data / "vcc2018_eval"
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:items]
    out = []
    for row in rows:
        pcm = emb.speech_of(read_audio(folder / row["path"]))
        starts = emb.window_starts(pcm.size)
        audio = to_float(pcm)
        frames = emb.frontend.frames(audio, n_frames=starts[-1] + 160)
        frames = emb._fill_short(frames, pcm.size)
        gains = emb._gains(audio, starts)
        out += [frames[s : s + 160] * g for s, g in zip(starts, gains, strict=True)]
    return np.stack(out).astype(np.float32)


def quantize_input(x: np.ndarray, per_call: int = 3) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(0, len(x), per_call):
        part = x[i : i + per_call]
        lo, hi = min(0.0, float(part.min())), float(part.max())
        step = (hi - lo) / 255 or 1.0
        out[i : i + per_call] = np.round((part - lo) / step) * step + lo
    return out


def quantize_input_bits(x: np.ndarray, bits: int, per_call: int = 3) -> np.ndarray:
    """Like quantize_input with `bits` instead of 8 (x >= 0: mel power)."""
    out = np.empty_like(x)
    for i in range(0, len(x), per_call):
        part = x[i : i + per_call]
        step = float(part.max()) / (2**bits - 1) or 1.0
        out[i : i + per_call] = np.round(part / step) * step
    return out


def quantize_input_per_step(x: np.ndarray, band: np.ndarray, per_call: int = 3) -> np.ndarray:
    """uint8 with one scale per time step of a call (what a kernel quantising its input step
    by step, like TFLite's hybrid LSTM, does), after dividing each band by `band`."""
    out = np.empty_like(x)
    for i in range(0, len(x), per_call):
        part = x[i : i + per_call] / band
        step = part.max(axis=(0, 2), keepdims=True) / 255
        step = np.where(step == 0, 1.0, step)
        out[i : i + per_call] = np.round(part / step) * step * band
    return out


def quantize_rows(w: np.ndarray) -> np.ndarray:
    step = np.abs(w).max(axis=1, keepdims=True) / 127
    return np.round(w / np.where(step == 0, 1, step)) * step


def main() -> int:
    import build_ge2e
    import onnx
    import onnxruntime as ort

    from voxgate.embedding.reference import load_ge2e_weights

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--items", type=int, default=60, help="vcc2018_eval sentences")
    args = ap.parse_args()
    if not (args.data / "vcc2018_eval").is_dir():
        print(f"no vcc2018_eval under {args.data} (pass --data)", file=sys.stderr)
        return 2
    weights = load_ge2e_weights(build_ge2e.find_pretrained())
    x = windows(args.data, args.items)

    def run(w: dict[str, np.ndarray], inp: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            onnx.save(build_ge2e.build_float(w), path)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            return sess.run(None, {build_ge2e.INPUT_NAME: inp})[0]

    exact = run(weights, x)
    print(f"{len(x)} windows from {args.items} sentences; cosine to the float network")
    print(f"{'rounded':<34} {'min':>7} {'mean':>7}")
    cases = {
        "input X (uint8 per call)": (weights, quantize_input(x)),
        "input weights W (int8 per row)": (
            {**weights, "lstm.weight_ih_l0": quantize_rows(weights["lstm.weight_ih_l0"])},
            x,
        ),
        "recurrent weights R (int8 per row)": (
            {**weights, "lstm.weight_hh_l0": quantize_rows(weights["lstm.weight_hh_l0"])},
            x,
        ),
    }
    w0 = weights["lstm.weight_ih_l0"]
    band = np.percentile(x.reshape(-1, x.shape[-1]), 99, axis=0).astype(np.float32)
    cases["W int8 per row after band balance"] = (
        {**weights, "lstm.weight_ih_l0": quantize_rows(w0 * band) / band},
        x,
    )
    cases["X uint8 per step, band balance"] = (weights, quantize_input_per_step(x, band))
    for bits in (11, 14):
        cases[f"X {bits} bits per call"] = (weights, quantize_input_bits(x, bits))
    for rel in (1e-6, 1e-5):
        small = np.where(x < rel * x.max(), 0, x).astype(np.float32)
        cases[f"X below {rel:g} of its max zeroed"] = (weights, small)
    for name, (w, inp) in cases.items():
        cos = np.sum(run(w, inp) * exact, axis=1)
        print(f"{name:<34} {cos.min():7.4f} {cos.mean():7.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
