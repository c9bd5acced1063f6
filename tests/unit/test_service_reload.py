"""plan_reload: which config changes a SIGHUP applies and which wait for a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxgate.config import VoxgateConfig, load_config
from voxgate.service.capture import FrameQueue
from voxgate.service.loop import Daemon
from voxgate.service.notify import Notifier
from voxgate.service.reload import plan_reload

BASE = VoxgateConfig()


@pytest.mark.parametrize(
    ("change", "applied", "needs_restart"),
    [
        ({}, [], []),
        ({"lockout": {"max_failures": 3}}, ["lockout"], []),
        ({"logging": {"level": "debug"}, "vad": {"aggressiveness": 3}}, ["logging", "vad"], []),
        ({"audio": {"source": "stdin"}}, [], ["audio"]),
        ({"challenge": {"length": 6}, "mqtt": {"host": "broker"}}, ["challenge"], ["mqtt"]),
        ({"data_dir": "/srv/voxgate", "service": {"queue_s": 2}}, ["service"], ["data_dir"]),
    ],
)
def test_plan(change: dict, applied: list[str], needs_restart: list[str]) -> None:
    new = VoxgateConfig.model_validate(change)
    plan = plan_reload(BASE, new)
    assert (plan.applied, plan.needs_restart) == (applied, needs_restart)
    for section in applied:
        assert getattr(plan.cfg, section) == getattr(new, section)
    for section in needs_restart:  # the running value stays
        assert getattr(plan.cfg, section) == getattr(BASE, section)


def test_challenge_mode_speak_and_replay_window_wait_for_a_restart() -> None:
    """The challenge stages (speech engine, replay detector, espeak) are built at start for
    the mode. A SIGHUP that turned the challenge on was reported as applied, yet no challenge
    was ever issued and every attempt was denied as liveness_missing, counting towards the
    lockout (found running the daemon on FSDD attempts and reloading it); turned off, the
    door kept issuing challenges."""
    running = VoxgateConfig.model_validate({"challenge": {"mode": "off"}})
    new = VoxgateConfig.model_validate(
        {"challenge": {"mode": "digits", "length": 6, "speak": True, "replay_window_s": 60}}
    )
    plan = plan_reload(running, new)
    assert plan.applied == ["challenge"]  # the length applies live
    assert plan.needs_restart == [
        "challenge.mode",
        "challenge.speak",
        "challenge.replay_window_s",
    ]
    assert plan.cfg.challenge == running.challenge.model_copy(update={"length": 6})
    only_mode = plan_reload(BASE, VoxgateConfig.model_validate({"challenge": {"mode": "off"}}))
    assert (only_mode.applied, only_mode.needs_restart) == ([], ["challenge.mode"])
    assert only_mode.cfg.challenge.mode == "digits"


def _daemon_with_queue(tmp_path: Path, text: str) -> tuple[Daemon, Path]:
    path = tmp_path / "voxgate.yaml"
    path.write_text(text)
    d = Daemon(load_config(path), config_path=path, notifier=Notifier({}))
    d.frames = FrameQueue(int(d.cfg.service.queue_s * 1000 / d.cfg.audio.frame_ms))
    return d, path


def test_reload_applies_service_queue_s_to_the_running_queue(tmp_path: Path) -> None:
    """docs/service.md: the service section applies live. A SIGHUP changing queue_s was
    audited as applied ('service'), yet the capture queue kept the size it was built with at
    start (found comparing the reload's 'applied' list with the loop's state)."""
    d, path = _daemon_with_queue(tmp_path, f"data_dir: {tmp_path}\nservice: {{queue_s: 5}}\n")
    assert d.frames is not None and d.frames.max_frames == 166
    path.write_text(f"data_dir: {tmp_path}\nservice: {{queue_s: 2}}\n")
    assert d.reload()
    assert d.cfg.service.queue_s == 2
    assert d.frames.max_frames == 66  # 2 s of 30 ms frames


def test_reload_reaches_enrollment_at_the_door(tmp_path: Path) -> None:
    """MQTT enroll-start/enroll-finish read challenge.length (prompt digits) and vad (take
    checks) from the user services' config, which kept the start-up copy after a SIGHUP that
    applied both sections (found reading what reload updates)."""
    from voxgate.service.users import UserServices

    d, path = _daemon_with_queue(tmp_path, f"data_dir: {tmp_path}\n")
    d.users = UserServices(d.cfg, None, None, lambda *a, **k: None)
    path.write_text(f"data_dir: {tmp_path}\nchallenge: {{length: 7}}\nvad: {{aggressiveness: 3}}\n")
    assert d.reload()
    assert d.users.cfg.challenge.length == 7
    assert d.users.cfg.vad.aggressiveness == 3


def test_reload_keeps_the_command_line_overrides(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`voxgate run -c dev.yaml --source stdin` (docs/service.md): every SIGHUP compared the
    plain file with the running config, which has the override, and logged and audited
    'audio' as a change that needs a restart (found sending SIGHUP to `voxgate run --file
    ... --realtime --loop`)."""
    from voxgate.cli import build_parser
    from voxgate.commands.run import build_daemon, resolve_config

    path = tmp_path / "voxgate.yaml"
    path.write_text(f"data_dir: {tmp_path}\n")
    args = build_parser().parse_args(["run", "-c", str(path), "--source", "stdin"])
    d = build_daemon(args, resolve_config(args))
    path.write_text(f"data_dir: {tmp_path}\nlockout: {{max_failures: 3}}\n")
    with caplog.at_level("WARNING"):
        assert d.reload()
    assert "need a restart" not in caplog.text
    assert d.cfg.audio.source == "stdin" and d.cfg.lockout.max_failures == 3


def test_api_shows_the_config_running_after_a_reload(tmp_path: Path) -> None:
    """GET /api/v1/config is 'the running config' (docs/api/openapi.yaml), but the app kept
    the start-up copy: after a SIGHUP that applied new lockout settings it still showed the
    old ones (found comparing the API with a reload's applied list)."""
    pytest.importorskip("flask")
    from voxgate.api import create_app

    d, path = _daemon_with_queue(tmp_path, f"data_dir: {tmp_path}\n")
    token = b"t" * 32
    app = create_app(d.cfg, None, token, current=lambda: d.cfg)  # type: ignore[arg-type]
    path.write_text(f"data_dir: {tmp_path}\nlockout: {{max_failures: 3}}\n")
    assert d.reload()
    resp = app.test_client().get(
        "/api/v1/config", headers={"Authorization": "Bearer " + token.decode()}
    )
    assert resp.status_code == 200
    assert resp.get_json()["lockout"]["max_failures"] == 3


def test_run_loop_without_a_file_is_a_command_line_error(tmp_path: Path) -> None:
    # Found trying `voxgate run -c door.yaml --loop < /dev/null` (--help: "--loop replay
    # --file forever"): the stdin source ended and the daemon stopped, the flag ignored
    # without a word.
    from voxgate.cli import build_parser
    from voxgate.commands.run import resolve_config
    from voxgate.config import ConfigError

    path = tmp_path / "voxgate.yaml"
    path.write_text(f"data_dir: {tmp_path}\naudio: {{source: stdin}}\n")
    args = build_parser().parse_args(["run", "-c", str(path), "--loop"])
    with pytest.raises(ConfigError, match="--loop replays a file: give --file PATH"):
        resolve_config(args)
    wav = tmp_path / "door.wav"
    args = build_parser().parse_args(["run", "-c", str(path), "--file", str(wav), "--loop"])
    assert resolve_config(args).audio.loop
