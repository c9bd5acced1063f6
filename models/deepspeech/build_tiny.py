"""Build a tiny .tflite with DeepSpeech 0.9.3's streaming signature, for tests.

It is NOT a speech recognizer: random (seeded) weights, LSTM state size 8 instead of 2048.
It has the same tensors as the real model's acoustic graph:
  inputs  input_node [1, 16, 19, 26], previous_state_c [1, S], previous_state_h [1, S]
  outputs logits [1, 16, 29] (softmax), new_state_c [1, S], new_state_h [1, S]
so the whole voxgate path (front end, 16-step chunks, state carried across chunks, CTC
decoding) runs against LiteRT. The weights are also written to tiny_weights.npz so tests can
check LiteRT's output against a plain numpy version of the same network.

TensorFlow is needed only here, at build time (a separate venv is fine):
  python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu
  /tmp/tf/bin/python models/deepspeech/build_tiny.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STEPS, CONTEXT, FEATS, CLASSES, STATE = 16, 9, 26, 29, 8
WIN = 2 * CONTEXT + 1


def weights(seed: int = 93) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w_in": rng.normal(0, 0.05, (WIN * FEATS, STATE)).astype(np.float32),
        "b_in": np.zeros(STATE, np.float32),
        "w_x": rng.normal(0, 0.3, (STATE, 4 * STATE)).astype(np.float32),
        "w_h": rng.normal(0, 0.3, (STATE, 4 * STATE)).astype(np.float32),
        "b": np.zeros(4 * STATE, np.float32),
        "w_out": rng.normal(0, 1.0, (STATE, CLASSES)).astype(np.float32),
        "b_out": np.zeros(CLASSES, np.float32),
    }


def main() -> None:
    import tensorflow as tf

    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    w = {k: tf.constant(v) for k, v in weights().items()}
    # TF1 graph + from_session keeps the node names, as DeepSpeech's own export did.
    input_node = tf1.placeholder(tf.float32, [1, STEPS, WIN, FEATS], name="input_node")
    prev_c = tf1.placeholder(tf.float32, [1, STATE], name="previous_state_c")
    prev_h = tf1.placeholder(tf.float32, [1, STATE], name="previous_state_h")
    x = tf.reshape(input_node, [STEPS, WIN * FEATS])
    x = tf.nn.relu(tf.matmul(x, w["w_in"]) + w["b_in"])
    c, h = prev_c, prev_h
    outs = []
    for t in range(STEPS):  # unrolled: the TFLite graph stays plain builtin ops
        z = tf.matmul(x[t : t + 1], w["w_x"]) + tf.matmul(h, w["w_h"]) + w["b"]
        i, j, f, o = tf.split(z, 4, axis=1)  # DeepSpeech's LSTMBlockCell gate order
        c = tf.sigmoid(f + 1.0) * c + tf.sigmoid(i) * tf.tanh(j)
        h = tf.sigmoid(o) * tf.tanh(c)
        outs.append(h)
    y = tf.matmul(tf.concat(outs, 0), w["w_out"]) + w["b_out"]
    logits = tf.reshape(tf.nn.softmax(y), [1, STEPS, CLASSES], name="logits")
    new_c = tf.identity(c, name="new_state_c")
    new_h = tf.identity(h, name="new_state_h")
    with tf1.Session() as sess:
        conv = tf1.lite.TFLiteConverter.from_session(
            sess, [input_node, prev_c, prev_h], [logits, new_c, new_h]
        )
        data = conv.convert()
    (HERE / "tiny.tflite").write_bytes(data)
    np.savez(HERE / "tiny_weights.npz", **weights())
    print(f"wrote {HERE / 'tiny.tflite'} ({len(data)} bytes) and tiny_weights.npz")


if __name__ == "__main__":
    main()
