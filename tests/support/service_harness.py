"""Run the real daemon loop with stand-in stages: `python service_harness.py CONFIG LINKLOG`.

For tests and benchmarks that need a whole process (signals, sd_notify, exit codes, RSS)
while the real embedding/STT/MQTT stages are not wired in. What the loop publishes goes to
LINKLOG as JSON lines. The audio source is the real one the config names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_standins import RecordingLink, espeak, standin_stages

from voxgate.audio import open_source
from voxgate.config import ConfigError, VoxgateConfig, load_config
from voxgate.logs import setup_logging
from voxgate.service.loop import Daemon

if TYPE_CHECKING:
    from voxgate.service.stages import Stages


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("linklog")
    ap.add_argument("--enroll-text", help="enroll user 'me' from this text (espeak en+m3)")
    args = ap.parse_args()
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 78
    setup_logging(cfg.logging)

    def factory(c: VoxgateConfig) -> Stages:
        from service_standins import MelEmbedder

        prints = {}
        if args.enroll_text:
            prints["me"] = MelEmbedder().embed(espeak(args.enroll_text, voice="en+m3"))
        link = RecordingLink(Path(args.linklog))
        return standin_stages(
            open_source(c.audio), prints, link, challenge=c.challenge.mode != "off"
        )

    return Daemon(cfg, config_path=args.config, stage_factory=factory).run()


if __name__ == "__main__":
    sys.exit(main())
