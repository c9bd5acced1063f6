"""Plain numpy forward pass of the GE2E speaker encoder (3 LSTM layers, linear, ReLU, L2 norm).

The float reference the shipped ONNX models are checked against. Weights are the PyTorch
state-dict names (`lstm.weight_ih_l0`, ..., `linear.weight`), PyTorch gate order i, f, g, o.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_LAYERS = 3


def load_ge2e_weights(path: Path) -> dict[str, np.ndarray]:
    """The encoder's weights from Resemblyzer's `pretrained.pt` (the similarity scale and
    optimizer state, used only in training, are dropped)."""
    from voxgate.embedding.torchfile import TorchFileError, load_legacy

    checkpoint = load_legacy(path)
    if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
        raise TorchFileError(f"{path}: no model_state in checkpoint")
    state = checkpoint["model_state"]
    return {
        k: np.asarray(v, np.float32) for k, v in state.items() if k.startswith(("lstm.", "linear."))
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def ge2e_forward(weights: dict[str, np.ndarray], mels: np.ndarray) -> np.ndarray:
    """mels (B, T, 40) float -> (B, 256) L2-normalised window embeddings, in float64."""
    x = np.asarray(mels, np.float64)
    batch, steps, _ = x.shape
    for layer in range(N_LAYERS):
        w_ih = weights[f"lstm.weight_ih_l{layer}"].astype(np.float64)
        w_hh = weights[f"lstm.weight_hh_l{layer}"].astype(np.float64)
        bias = (weights[f"lstm.bias_ih_l{layer}"] + weights[f"lstm.bias_hh_l{layer}"]).astype(
            np.float64
        )
        hidden = w_hh.shape[1]
        h = np.zeros((batch, hidden))
        c = np.zeros((batch, hidden))
        inputs = x @ w_ih.T + bias  # all time steps at once; only the recurrence is serial
        out = np.empty((batch, steps, hidden))
        for t in range(steps):
            gates = inputs[:, t] + h @ w_hh.T
            i, f, g, o = np.split(gates, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            out[:, t] = h
        x = out
    last = x[:, -1]
    raw = np.maximum(
        last @ weights["linear.weight"].T.astype(np.float64) + weights["linear.bias"], 0
    )
    norm = np.linalg.norm(raw, axis=1, keepdims=True)
    return raw / np.maximum(norm, 1e-12)
