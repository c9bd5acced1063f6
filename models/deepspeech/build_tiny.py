"""Build a tiny .tflite with DeepSpeech 0.9.3's streaming signature, for tests.

It is NOT a speech recognizer: random (seeded) weights, LSTM state size 8 instead of 2048.
It has the same tensors as the real model's acoustic graph:
  inputs  input_node [1, 16, 19, 26], previous_state_c [1, S], previous_state_h [1, S]
  outputs logits [1, 16, 29] (softmax), new_state_c [1, S], new_state_h [1, S]
so the whole voxgate path (front end, 16-step chunks, state carried across chunks, CTC
decoding) runs against LiteRT. With --full-size OUT it instead writes a random-weight model
with the release's sizes (not committed: ~47 MB) so latency and memory can be measured.
The tiny model's weights are also written to tiny_weights.npz so tests can check LiteRT's
output against a plain numpy version of the same network.

TensorFlow is needed only here, at build time (a separate venv is fine):
  python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu
  /tmp/tf/bin/python models/deepspeech/build_tiny.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STEPS, CONTEXT, FEATS, CLASSES = 16, 9, 26, 29
WIN = 2 * CONTEXT + 1


def weights(state: int = 8, hidden: int = 0, seed: int = 93) -> dict[str, np.ndarray]:
    """hidden > 0 adds DeepSpeech's extra dense layers (for the full-size timing model)."""
    rng = np.random.default_rng(seed)
    w = {
        "w_in": rng.normal(0, 0.05, (WIN * FEATS, hidden or state)).astype(np.float32),
        "b_in": np.zeros(hidden or state, np.float32),
        "w_x": rng.normal(0, 0.3, (hidden or state, 4 * state)).astype(np.float32),
        "w_h": rng.normal(0, 0.3, (state, 4 * state)).astype(np.float32),
        "b": np.zeros(4 * state, np.float32),
        "w_out": rng.normal(0, 1.0, (hidden or state, CLASSES)).astype(np.float32),
        "b_out": np.zeros(CLASSES, np.float32),
    }
    if hidden:
        s = 1 / np.sqrt(hidden)
        for name in ("w_2", "w_3", "w_5"):
            w[name] = rng.normal(0, s, (hidden, hidden)).astype(np.float32)
    return w


def main() -> None:
    import argparse

    import tensorflow as tf

    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--full-size",
        metavar="OUT",
        help="instead: a random-weight model with DeepSpeech 0.9.3's layer sizes (2048 "
        "units, ~47 M weights, int8 dynamic-range like the release) for timing and memory",
    )
    args = ap.parse_args()
    state, hidden = (2048, 2048) if args.full_size else (8, 0)
    out = Path(args.full_size) if args.full_size else HERE / "tiny.tflite"

    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    wts = weights(state, hidden)
    w = {k: tf.constant(v) for k, v in wts.items()}
    # TF1 graph + from_session keeps the node names, as DeepSpeech's own export did.
    input_node = tf1.placeholder(tf.float32, [1, STEPS, WIN, FEATS], name="input_node")
    prev_c = tf1.placeholder(tf.float32, [1, state], name="previous_state_c")
    prev_h = tf1.placeholder(tf.float32, [1, state], name="previous_state_h")
    x = tf.reshape(input_node, [STEPS, WIN * FEATS])
    x = tf.nn.relu(tf.matmul(x, w["w_in"]) + w["b_in"])
    if hidden:  # layers 2 and 3 (dense, clipped ReLU) as in DeepSpeech
        x = tf.minimum(tf.nn.relu(tf.matmul(x, w["w_2"])), 20.0)
        x = tf.minimum(tf.nn.relu(tf.matmul(x, w["w_3"])), 20.0)
    c, h = prev_c, prev_h
    outs = []
    for t in range(STEPS):  # unrolled: the TFLite graph stays plain builtin ops
        z = tf.matmul(x[t : t + 1], w["w_x"]) + tf.matmul(h, w["w_h"]) + w["b"]
        i, j, f, o = tf.split(z, 4, axis=1)  # DeepSpeech's LSTMBlockCell gate order
        c = tf.sigmoid(f + 1.0) * c + tf.sigmoid(i) * tf.tanh(j)
        h = tf.sigmoid(o) * tf.tanh(c)
        outs.append(h)
    y = tf.concat(outs, 0)
    if hidden:  # layer 5 (dense) before the output layer
        y = tf.minimum(tf.nn.relu(tf.matmul(y, w["w_5"])), 20.0)
    y = tf.matmul(y, w["w_out"]) + w["b_out"]
    logits = tf.reshape(tf.nn.softmax(y), [1, STEPS, CLASSES], name="logits")
    new_c = tf.identity(c, name="new_state_c")
    new_h = tf.identity(h, name="new_state_h")
    with tf1.Session() as sess:
        conv = tf1.lite.TFLiteConverter.from_session(
            sess, [input_node, prev_c, prev_h], [logits, new_c, new_h]
        )
        if hidden:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights, float compute
        data = conv.convert()
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes)")
    if not hidden:
        np.savez(HERE / "tiny_weights.npz", **wts)
        print(f"wrote {HERE / 'tiny_weights.npz'}")


if __name__ == "__main__":
    main()
