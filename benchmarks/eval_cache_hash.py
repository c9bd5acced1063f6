"""What keying `voxgate eval`'s embedding cache on file content costs: the sha256 of every
file a protocol names (done on every run, cached or not) against embedding its recordings
(done once), in CPU seconds of this process (docs/speaker-verification.md, Evaluation).

    PYTHONPATH=daemon python benchmarks/eval_cache_hash.py [--data ../shared/data] [--sets ...]

Files are read from the page cache after the first round (the median of 5 rounds is shown);
a cold read of the first run costs what reading the audio for embedding costs anyway.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from voxgate.embedding import default_card_path, load_embedder
from voxgate.evaluation import EmbeddingCache, EvalError, read_set

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sets", nargs="+", default=["speechcommands_v001_sample", "fsdd"])
    args = ap.parse_args()
    embedder = load_embedder(default_card_path())
    for name in args.sets:
        try:
            es = read_set(args.data / name)
        except EvalError as exc:
            print(f"eval_cache_hash.py: {exc}", file=sys.stderr)
            return 1
        recs = list(dict.fromkeys([r for rs in es.enroll.values() for r in rs]
                                  + [r for _, r, _ in es.trials]))  # fmt: skip
        files = {p for r in recs for p in r.split(";")}
        size = sum((es.root / p).stat().st_size for p in files)
        cache = EmbeddingCache(embedder, es.root)
        rounds = []
        for _ in range(5):
            t = time.process_time()
            for r in recs:
                cache._stamp(r)
            rounds.append(time.process_time() - t)
        t = time.process_time()
        cache.fill(recs, lambda n, total: None)  # hashes once more, then embeds
        embed_s = time.process_time() - t
        hash_s = statistics.median(rounds)
        print(
            f"{name}: {len(recs)} recordings, {len(files)} files, {size / 1e6:.1f} MB: "
            f"sha256 {1000 * hash_s:.0f} ms CPU, first run (hash + read + embed) "
            f"{embed_s:.1f} s CPU: hashing is {100 * hash_s / embed_s:.1f} % of it"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
