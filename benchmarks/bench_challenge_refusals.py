"""Which genuine challenge answers does the template check refuse, and why?

bench_challenge.py's FSDD protocol and code paths (fsdd_trials: templates from the same
enrollment takes, answers from each speaker's other recordings; the recognizer's
check_prompt), but genuine answers only, many of them, each checked once against its own
prompt at the given threshold (default: the shipped stt.template_threshold). Refusals are
broken down by reason, by whether the prompt has a digit equal to the one before it ("40072"),
by length and by speaker, and each misreading is classed against the prompt: a repeated digit
read once, a digit read twice, another digit dropped or added, or digits changed. 95 %
Wilson intervals.

Run:  PYTHONPATH=daemon python benchmarks/bench_challenge_refusals.py --strings 1000
      PYTHONPATH=daemon python benchmarks/bench_challenge_refusals.py --draw no-repeats
          (challenges as the door draws them; the same templates as the run above)
      PYTHONPATH=daemon python benchmarks/bench_challenge_refusals.py --enroll grouped
          (enrollment takes with each digit's recordings side by side: "00011", "12223", ...)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import bench_challenge as bench

from voxgate.config.stt import SttConfig
from voxgate.stt import digits_to_words, load_recognizer


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for k successes out of n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, mid - half), min(1.0, mid + half))


def has_repeat(s: str) -> bool:
    return any(a == b for a, b in pairwise(s))


def misreading(prompt: str, heard: str) -> str:
    """How the free reading differs from the prompt."""
    if heard == prompt:
        return "read right (margin over the threshold)"
    drops = {prompt[:i] + prompt[i + 1 :]: i for i in range(len(prompt))}
    if heard in drops:
        i = drops[heard]
        near = (i > 0 and prompt[i - 1] == prompt[i]) or (
            i + 1 < len(prompt) and prompt[i + 1] == prompt[i]
        )
        return "repeated digit read once" if near else "digit dropped"
    for i in range(len(prompt)):
        if heard == prompt[: i + 1] + prompt[i:]:
            return "digit read twice"
    if len(heard) == len(prompt) + 1:
        return "digit added"
    if len(heard) == len(prompt):
        return "digit(s) changed"
    return "other"


def group(rows: list[dict], key: str) -> dict[str, str]:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[str(r[key])].append(r)
    return {k: rate(v) for k, v in sorted(by.items())}


def rate(rows: list[dict]) -> str:
    """'refused/n (rate %, 95 % interval)'."""
    refused = sum(not r["ok"] for r in rows)
    if not rows:
        return "0/0"
    lo, hi = wilson(refused, len(rows))
    pct = 100 * refused / len(rows)
    return f"{refused}/{len(rows)} refused ({pct:.2f} %, {100 * lo:.2f}-{100 * hi:.2f} %)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=bench.DATA)
    ap.add_argument("--strings", type=int, default=1000, help="answers per FSDD speaker")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--draw", choices=sorted(bench.DRAWS), default="any")
    ap.add_argument(
        "--enroll",
        choices=["shuffled", "grouped"],
        default="shuffled",
        help="enrollment digits in the bench's shuffled order, or each digit's side by side",
    )
    ap.add_argument("--threshold", type=float, default=SttConfig().template_threshold)
    ap.add_argument("--json", type=Path, help="write the figures and every refusal here too")
    args = ap.parse_args()
    if not (args.data / "fsdd" / "manifest.csv").exists():
        print(f"no evaluation data at {args.data}", file=sys.stderr)
        return 2
    rec = load_recognizer(SttConfig(backend="pocketsphinx", template_threshold=args.threshold))
    rows = []
    for tr in bench.fsdd_trials(args.data, args.strings, args.seed, args.draw, args.enroll):
        res = rec.check_prompt(tr["pcm"], digits_to_words(tr["prompt"]), tr["templates"])
        p, heard = tr["prompt"], res.transcript or ""
        rows.append(
            {
                "speaker": tr["speaker"],
                "prompt": p,
                "heard": heard,
                "ok": res.ok,
                "reason": res.reason or "ok",
                "score": round(res.score, 3),
                "length": len(p),
                "adjacent_repeat": has_repeat(p),
                # the bench may pick one recording twice for a repeated digit
                "same_recording_twice": any(a == b for a, b in pairwise(tr["paths"])),
                "misreading": None if res.ok else misreading(p, heard),
            }
        )
    refused = [r for r in rows if not r["ok"]]
    digit_dropped: Counter[str] = Counter()  # which digit a misreading lost or doubled
    digit_doubled: Counter[str] = Counter()
    for r in refused:
        p, h = r["prompt"], r["heard"]
        if len(h) == len(p) - 1:
            digit_dropped.update((Counter(p) - Counter(h)).keys())
        if len(h) == len(p) + 1:
            digit_doubled.update((Counter(h) - Counter(p)).keys())
    out = {
        "command": " ".join(sys.argv),
        "draw": args.draw,
        "enroll": args.enroll,
        "threshold": args.threshold,
        "all": rate(rows),
        "by_reason": dict(Counter(r["reason"] for r in refused)),
        "by_misreading": dict(Counter(r["misreading"] for r in refused)),
        # The count rule refuses whatever the margin: how many of those the margin passed.
        "wrong_count_with_margin_under": {
            m: sum(r["reason"] == "wrong_digit_count" and -r["score"] < m for r in refused)
            for m in (0.1, 0.2, 0.5, args.threshold)
        },
        "by_adjacent_repeat": group(rows, "adjacent_repeat"),
        "by_length": group(rows, "length"),
        "by_speaker": group(rows, "speaker"),
        "repeat_prompts_same_recording_twice": group(
            [r for r in rows if r["adjacent_repeat"]], "same_recording_twice"
        ),
        "digit_missing_from_reading": dict(sorted(digit_dropped.items())),
        "digit_extra_in_reading": dict(sorted(digit_doubled.items())),
        "by_digit_in_prompt": {
            d: rate([r for r in rows if d in r["prompt"]]) for d in "0123456789"
        },
    }
    heard = [f"{r['speaker']} {r['prompt']} heard {r['heard']}" for r in refused]
    print(json.dumps({**out, "refusals": heard}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({**out, "refusals": refused}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
