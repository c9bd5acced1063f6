"""Hostile envelopes and bodies: each ends in a DecisionError (or a logged failed action),
never an exception a lock or the door's command worker does not expect.

Found by the MQTT defect hunt: sending such payloads to a door and a lock on a real broker
(tests/integration/test_mqtt_hostile.py has the broker side).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path

import pytest
from test_decision import KEY, NOW, _decision

from voxgate.actuator import Actuator
from voxgate.config.mqtt import ActuatorConfig
from voxgate.decision import (
    DECISION_DOMAIN,
    DecisionError,
    Issuer,
    SequenceCounter,
    seal,
    sign,
    verify,
)


@pytest.mark.parametrize("sig", ["\u00e9" * 64, "\u2603", "zz" * 32, "ab" * 33, ""])
def test_a_signature_that_is_not_hex_is_refused_not_a_traceback(sig: str) -> None:
    # hmac.compare_digest raises TypeError for a non-ASCII string: the actuator logged a
    # traceback and the daemon's command worker sent no reply. Found sending '\u00e9' as sig.
    env = json.loads(sign(_decision(), KEY))
    env["sig"] = sig
    with pytest.raises(DecisionError) as e:
        verify(json.dumps(env).encode(), KEY, NOW + 1, None)
    assert e.value.reason == "bad-signature"


def test_deeply_nested_json_is_malformed_not_a_traceback() -> None:
    # A few kB of '[' made json.loads raise RecursionError, which nothing caught.
    for payload in (b"[" * 5000, b'{"a":' * 1600):
        with pytest.raises(DecisionError) as e:
            verify(payload, KEY, NOW + 1, None)
        assert e.value.reason == "malformed"
    # ... and inside a correctly signed body too.
    body = "[" * 5000
    sig = hmac.new(KEY, DECISION_DOMAIN + body.encode(), hashlib.sha256).hexdigest()
    env = json.dumps({"alg": "HMAC-SHA256", "body": body, "sig": sig}).encode()
    with pytest.raises(DecisionError) as e:
        verify(env, KEY, NOW + 1, None)
    assert e.value.reason == "malformed"


@pytest.mark.parametrize(
    "change",
    [{"issued_at": 10**400}, {"expires_at": -(10**400)}, {"scores": {"speaker": 10**400}}],
)
def test_an_integer_too_big_for_a_float_is_malformed(change: dict[str, object]) -> None:
    # math.isfinite raised OverflowError: the actuator logged a traceback, not a refusal.
    body = {**_decision().to_body(), **change}
    with pytest.raises(DecisionError) as e:
        verify(seal(body, KEY, DECISION_DOMAIN), KEY, NOW + 1, None)
    assert e.value.reason == "malformed"


@pytest.mark.parametrize("user", ["a\x00b", "\ud800"])
def test_a_user_name_the_environment_cannot_carry_is_logged_not_a_traceback(
    tmp_path: Path, user: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Signed, fresh and new, but VOXGATE_USER cannot hold it: subprocess raised ValueError
    # ('embedded null byte', UnicodeEncodeError), which act() let out as a traceback.
    cfg = ActuatorConfig.model_validate(
        {
            "devices": [{"id": "front-door"}],
            "state_file": str(tmp_path / "state.json"),
            "command": {"argv": ["/bin/true"]},
        }
    )
    a = Actuator(cfg, keys={"front-door": KEY}, clock=lambda: 1000.0)
    issuer = Issuer("front-door", SequenceCounter(tmp_path / "seq.json"), ttl_s=5)
    d = issuer.issue("granted", user, 1000.0)
    a.handle("voxgate/front-door/decision", sign(d, KEY))
    with caplog.at_level(logging.ERROR):
        a.act(a._jobs.get_nowait())
    assert f"action command failed for seq {d.seq}:" in caplog.text and a.acted == 0
