"""What the speech trim costs: time per 3 s of audio, embed() with and without the card's
`trim:` block, and finish() after streaming (docs/models.md).

    PYTHONPATH=daemon python benchmarks/speaker_trim_cost.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from voxgate.audio import AudioError
from voxgate.embedding import load_embedder
from voxgate.embedding.trim import trim_speech
from voxgate.evaluation import load_recording

REPO = Path(__file__).resolve().parent.parent
CARD = REPO / "daemon" / "voxgate" / "models" / "ge2e-int8.yaml"


def per_call_ms(f: Callable[[], object], n: int = 20) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return 1000 * (time.perf_counter() - t) / n


def finish_ms(embedder: object, pcm: np.ndarray, n: int = 10) -> float:
    times = []
    for _ in range(n):
        s = embedder.stream()  # type: ignore[attr-defined]
        for i in range(0, pcm.size, 480):
            s.push(pcm[i : i + 480])
        t = time.perf_counter()
        s.finish()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    try:
        rec = load_recording(args.data / "vcc2018_eval", "audio/VCC2SF1/30001.flac")
    except AudioError as exc:
        print(f"speaker_trim_cost.py: {exc} (--data must hold vcc2018_eval)", file=sys.stderr)
        return 2
    pcm = np.tile(rec, 3)[:48000]  # 3 s of read speech with its pauses
    trimmed = load_embedder(CARD)
    with tempfile.TemporaryDirectory() as tmp:
        # The same card without its trim block (and with the model file beside it).
        text = CARD.read_text()
        head, _, rest = text.partition("\ntrim:\n")
        card = Path(tmp) / "plain.yaml"
        card.write_text(head + rest[rest.index("\nevaluation:") :])
        (Path(tmp) / trimmed.card.model.file).symlink_to(trimmed.card.model_path)
        plain = load_embedder(card)
        spec = trimmed.card.trim
        print(
            f"trim alone:           {per_call_ms(lambda: trim_speech(pcm, spec)):5.1f} ms per 3 s"
        )
        print(f"embed(), with trim:   {per_call_ms(lambda: trimmed.embed(pcm)):5.1f} ms per 3 s")
        print(f"embed(), no trim:     {per_call_ms(lambda: plain.embed(pcm)):5.1f} ms per 3 s")
        print(f"finish(), with trim:  {finish_ms(trimmed, pcm):5.1f} ms")
        print(f"finish(), no trim:    {finish_ms(plain, pcm):5.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
