"""A quality gate that judges the SNR by band, as measured by benchmarks/noise_gate.py
--floors (docs/speaker-verification.md, "A gate that judges the SNR by band"). Not the
shipped gate: it spared a rumble but let through more pink noise and other noise whose
pauses hold mostly low frequencies, and the denials among those rose, so it lives here.
Measured again with higher levels above the split and higher floors (noise_gate.py
--band-levels, judged by within_rule below): no pair kept the rule on the held-out fsdd,
where a rumble at 25-27 dB got through the floor.

The rule: an SNR measured in pauses passes when the same estimate above SPLIT_HZ is at
least speaker.min_snr_db and the full-band one at least a lower floor (which still retries
a loud rumble). Files without pauses and the live rule are judged as the shipped gate does.
"""

from __future__ import annotations

import numpy as np

from voxgate.audio.base import SAMPLE_RATE
from voxgate.config.audio import VadConfig
from voxgate.config.speaker import SpeakerConfig
from voxgate.quality import Quality, _snr_db, too_noisy

# The upper edge of the speaker model's lowest mel filter (ge2e-*.yaml: 40 Slaney filters
# from 0 to 8000 Hz, the first spanning 0-147 Hz): noise below it reaches only the lowest
# two of the 40 bands the model hears, where speech has little power.
SPLIT_HZ = 147.0


def high_power(frames: np.ndarray) -> np.ndarray:
    """Each frame's mean power above SPLIT_HZ (Hann-windowed spectrum, window loss undone)."""
    n = frames.shape[1]
    window = np.hanning(n)
    spec = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    first = int(np.ceil(SPLIT_HZ * n / SAMPLE_RATE))
    return 2 * spec[:, first:].sum(axis=1) / n**2 / float(np.mean(window**2))


def snr_above_split(pcm: np.ndarray, vad_cfg: VadConfig) -> float:
    """The gate's SNR estimate (the same pause and speech frames) above SPLIT_HZ."""
    return _snr_db(np.asarray(pcm, dtype=np.int16), vad_cfg, high_power)[0]


def band_too_noisy(q: Quality, snr_high_db: float, s: SpeakerConfig, floor_db: float) -> bool:
    """The band rule with full-band floor `floor_db`, for a recording of quality `q`."""
    if not q.snr_from_pauses or too_noisy(q, -np.inf, -np.inf):  # cut files; the live rule
        return too_noisy(q, s.min_snr_db, s.min_snr_db_no_pauses)
    return snr_high_db < s.min_snr_db or q.snr_db < floor_db


def band_reasons(
    q: Quality, snr_high_db: float, s: SpeakerConfig, floor_db: float | None
) -> tuple[str, ...]:
    """Why the band rule would retry (floor None: the shipped gate's reasons)."""
    reasons = []
    if q.speech_s < s.min_speech_s:
        reasons.append("too_little_speech")
    noisy = (
        too_noisy(q, s.min_snr_db, s.min_snr_db_no_pauses)
        if floor_db is None
        else band_too_noisy(q, snr_high_db, s, floor_db)
    )
    if noisy:
        reasons.append("too_noisy")
    if q.clipped > s.max_clipped:  # as the shipped gate (quality.gate_reasons)
        reasons.append("clipped")
    return tuple(reasons)


# The acceptance rule for a band gate (docs/speaker-verification.md, "A higher level above
# the split"): what the shipped gate lets through at its worst passing level (26-27 dB, white
# noise, the tap, the bike, the dishes on vcc2018_eval) is denied 11-14 % of the time.
MAX_FNMR_PASSED = 0.14


def within_rule(denied: int, passed: int, denied_now: int, passed_now: int) -> bool:
    """Whether a band gate's genuine attempts let through (`passed`, `denied` of them at the
    threshold) are denied no more often than 14 % and than the shipped gate's (`denied_now`
    of `passed_now`, where it lets any through), each give or take one trial."""
    if denied > MAX_FNMR_PASSED * passed + 1:
        return False
    return passed_now == 0 or denied <= denied_now / passed_now * passed + 1
