"""What `systemctl status voxgate` shows when the daemon cannot start: the last STATUS= it
sent, over a real notify socket."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from service_standins import NotifyListener

from voxgate.config import VoxgateConfig
from voxgate.service.loop import Daemon
from voxgate.service.notify import Notifier
from voxgate.service.stages import StageUnavailable


def test_a_failed_start_says_so_in_the_last_status(tmp_path: Path) -> None:
    """A start that failed (exit 69 here) ended with STATUS=stopping: source ended, so
    `systemctl status` showed a door that had read its input to the end rather than one that
    never started (found starting the daemon with a missing model under a notify socket)."""
    listener = NotifyListener(tmp_path / "notify")
    cfg = VoxgateConfig.model_validate(
        {"data_dir": str(tmp_path / "data"), "metrics": {"enabled": False}}
    )

    def broken(_cfg: VoxgateConfig) -> None:
        raise StageUnavailable("speaker stage: model card /nope/model.yaml does not exist")

    d = Daemon(
        cfg,
        stage_factory=broken,  # type: ignore[arg-type]
        notifier=Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")}),
    )
    try:
        assert d.run() == 69
        deadline = time.monotonic() + 5
        while not listener.has("STOPPING=1") and time.monotonic() < deadline:
            time.sleep(0.05)
        last = listener.statuses()[-1]
    finally:
        listener.close()
    assert last.startswith("stopping: cannot start (exit 69)"), last
    assert "/nope/model.yaml" in last
