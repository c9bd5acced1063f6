"""Could a native int8 LSTM kernel meet issue #3's speed goal? A measurement, not shipped.

    PYTHONPATH=daemon python models/native_lstm/probe.py [--data ../shared/data] [--plain]

Compiles lstm_int8.c (beside this script) with gcc into a temporary folder, runs the GE2E
network on it (first layer: float input product in numpy, int8 recurrent product; layers 2
and 3: int8 input and recurrent products; linear head in numpy) and prints, for windows of
real vcc2018_eval speech (or random input without --data):
- the cosine of its embeddings to the float ONNX model, beside the shipped int8 ONNX model's;
- the time of one batch of 3 windows (one 3 s utterance) on one core, beside ONNX Runtime's
  int8 model, and each layer on its own.
--plain forces the portable C path (what a Raspberry Pi would run) instead of AVX-512 VNNI.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "daemon"))
sys.path.insert(0, str(REPO / "models"))

HIDDEN = 256
BATCH = 3  # windows of one 3 s utterance
FRAMES = 160
VP = ctypes.c_void_p


def compile_kernel(out_dir: Path) -> ctypes.CDLL:
    lib = out_dir / "liblstm_int8.so"
    cmd = ["gcc", "-O3", "-fno-trapping-math", "-fno-math-errno", "-Wall", "-shared", "-fPIC"]
    subprocess.run([*cmd, "-o", str(lib), str(HERE / "lstm_int8.c")], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.vg_layer_new.restype = VP
    dll.vg_layer_new.argtypes = [ctypes.c_int, ctypes.c_int, VP, VP, VP]
    dll.vg_layer_run.argtypes = [VP, ctypes.c_int, ctypes.c_int, VP, VP, VP]
    dll.vg_layer_fast.argtypes = [VP]
    return dll


def int8_rows(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row; the returned scale includes the inputs' 1/127 step."""
    s = np.abs(m).max(axis=1) / 127
    q = np.clip(np.round(m / s[:, None]), -127, 127).astype(np.int8)
    return q, (s / 127).astype(np.float32)


class NativeGe2e:
    def __init__(self, dll: ctypes.CDLL, weights: dict[str, np.ndarray]) -> None:
        self.dll = dll
        self.w = weights
        self._keep: list[np.ndarray] = []  # the C side copies, but keep inputs alive anyway
        self.layers = []
        for layer in range(3):
            r = weights[f"lstm.weight_hh_l{layer}"]
            m = r if layer == 0 else np.concatenate([weights[f"lstm.weight_ih_l{layer}"], r], 1)
            q, scale = int8_rows(m)
            bias = (weights[f"lstm.bias_ih_l{layer}"] + weights[f"lstm.bias_hh_l{layer}"]).astype(
                np.float32
            )
            self._keep += [q, scale, bias]
            kx = 0 if layer == 0 else HIDDEN
            args = (q.ctypes.data, scale.ctypes.data, bias.ctypes.data)
            handle = dll.vg_layer_new(HIDDEN, kx, *args)
            if not handle:
                raise SystemExit("vg_layer_new failed")
            self.layers.append(handle)
        self.w0 = np.ascontiguousarray(weights["lstm.weight_ih_l0"].T, np.float32)
        self.fast = bool(dll.vg_layer_fast(self.layers[0]))

    def run_layer(
        self, layer: int, t: int, b: int, x: np.ndarray | None, gx: np.ndarray | None
    ) -> np.ndarray:
        out = np.empty((t * b, HIDDEN), np.float32)
        xp = None if x is None else x.ctypes.data
        gp = None if gx is None else gx.ctypes.data
        if self.dll.vg_layer_run(self.layers[layer], t, b, xp, gp, out.ctypes.data) != 0:
            raise MemoryError("vg_layer_run")
        return out

    def __call__(self, mels: np.ndarray) -> np.ndarray:
        b, t, _ = mels.shape
        x = np.ascontiguousarray(mels.transpose(1, 0, 2), np.float32).reshape(t * b, -1)
        h = self.run_layer(0, t, b, None, x @ self.w0)
        for layer in (1, 2):
            h = self.run_layer(layer, t, b, h, None)
        last = h.reshape(t, b, HIDDEN)[-1]
        v = np.maximum(last @ self.w["linear.weight"].T + self.w["linear.bias"], 0)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def median_ms(fn: Callable[[], object], n: int = 100) -> tuple[float, float]:
    for _ in range(5):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * float(np.median(ts)), 1000 * float(np.min(ts))


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort
    from build_ge2e import find_pretrained

    from voxgate.embedding.reference import load_ge2e_weights

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="../shared/data: real speech (else random input)")
    ap.add_argument("--items", type=int, default=60, help="vcc2018_eval sentences (default 60)")
    ap.add_argument("--cpu", type=int, default=0, help="pin to this core (default 0)")
    ap.add_argument("--plain", action="store_true", help="portable C path, not AVX-512 VNNI")
    args = ap.parse_args(argv)
    if args.plain:
        os.environ["VOXGATE_PROBE_PLAIN"] = "1"
    os.sched_setaffinity(0, {args.cpu})

    with tempfile.TemporaryDirectory() as tmp:
        net = NativeGe2e(compile_kernel(Path(tmp)), load_ge2e_weights(find_pretrained()))
    print(f"kernel path: {'AVX-512 VNNI' if net.fast else 'portable C'}")

    if args.data:
        from first_layer_int8 import windows

        x = windows(args.data, args.items)
    else:
        rng = np.random.default_rng(0)
        x = (rng.random((60, FRAMES, 40)) ** 4).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.enable_cpu_mem_arena = False
    models = REPO / "daemon" / "voxgate" / "models"
    ref = ort.InferenceSession(str(models / "ge2e-resemblyzer-float.onnx"), opts)
    int8 = ort.InferenceSession(str(models / "ge2e-resemblyzer-int8.onnx"), opts)

    def batches(fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return np.concatenate([fn(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])

    exact = batches(lambda b: ref.run(None, {"mels": b})[0])
    print(f"{len(x)} windows of {'real speech' if args.data else 'random input'}")
    print("cosine to the float model  min     mean")
    for name, fn in (
        ("ONNX Runtime int8", lambda b: int8.run(None, {"mels": b})[0]),
        ("native int8", net),
    ):
        cos = (batches(fn) * exact).sum(1)
        print(f"  {name:<22}  {cos.min():.4f}  {cos.mean():.4f}")

    one = np.ascontiguousarray(x[:BATCH])
    t, b = FRAMES, BATCH
    flat = np.ascontiguousarray(one.transpose(1, 0, 2)).reshape(t * b, -1)
    gx = flat @ net.w0
    h = np.tanh(np.random.default_rng(1).standard_normal((t * b, HIDDEN))).astype(np.float32)
    print(f"one call of {BATCH} windows x {FRAMES} frames, core {args.cpu}: median / min ms")
    rows = [
        ("ONNX Runtime int8", lambda: int8.run(None, {"mels": one})),
        ("ONNX Runtime float", lambda: ref.run(None, {"mels": one})),
        ("native int8", lambda: net(one)),
        ("  layer 1 input product", lambda: flat @ net.w0),
        ("  layer 1", lambda: net.run_layer(0, t, b, None, gx)),
        ("  layer 2", lambda: net.run_layer(1, t, b, h, None)),
    ]
    for name, fn in rows:
        med, low = median_ms(fn)
        print(f"  {name:<24} {med:6.2f} / {low:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
