"""Signal quality of one recording: net speech, estimated SNR, clipping.

Used by the quality gate (an attempt with too little speech, too much noise or too much
clipping gets 'retry', not a guess) and by enrollment (bad takes are rejected with the
reason named).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voxgate.audio.base import SAMPLE_RATE
from voxgate.config.audio import VadConfig

FRAME_MS = 30
FULL_SCALE = 32767
CLIP_LEVEL = 0.99 * FULL_SCALE
CLIP_RUN = 3  # consecutive samples at full scale: a clipped peak, not a loud sample
SNR_CEILING_DB = 60.0
# The VAD labels speech on a copy of the recording raised to HEAR_DBFS (never lowered), as the
# embedding trim hears its audio (the card's frontend level): webrtcvad misses quiet speech,
# so a quiet microphone's words counted as pause noise (too noisy) and as too little speech.
# A recording quieter than MIN_HEAR_DBFS as a whole is heard as it is: 16-bit audio there
# holds speech at most ~30 dB above its quantization floor (a muted microphone, not a quiet
# one), and raised it would be scored. benchmarks/quiet_gate.py measures both.
HEAR_DBFS = -30.0
MIN_HEAR_DBFS = -60.0
# Speech quieter than this (Quality.speech_dbfs) the gate reads well, but the door's
# endpointer, which hears the stream as it is, starts to cut words off: turned down and put
# in a quiet room, vcc2018_eval's utterances with speech at -50 to -45 dBFS were retried
# 10.6 %, fsdd's at -55 to -50 13.7 %, against 1-9 % above -45 (benchmarks/quiet_gate.py
# --door, by speech level). Guided enrollment says so.
QUIET_SPEECH_DBFS = -45.0
# How these readings were made: `voxgate eval`'s cache keeps readings made another way apart.
READING = {"hear_dbfs": HEAR_DBFS, "min_hear_dbfs": MIN_HEAR_DBFS, "speech_dbfs": True}


@dataclass(frozen=True)
class Quality:
    duration_s: float
    speech_s: float  # net speech: frames the VAD called speech, inside utterances it kept
    snr_db: float  # speech power over noise power, estimated from VAD labels
    # True: the noise was measured in at least PAUSE_S of pauses (live non-speech frames), as
    # in the door's utterance (pre-roll and hangover around the speech). False: a file cut to
    # its speech. Its few "pauses" are often quiet speech the VAD missed, or there are none
    # and the quietest 10 % of frames stand in: either way clean speech reads 15-25 dB, so
    # such an estimate cannot tell 20+ dB of noise from none and gets its own, lower level.
    snr_from_pauses: bool
    clipped: float  # fraction of samples inside runs of full-scale samples
    # True: an utterance the endpointer cut live (the door's attempt, a take at the door),
    # which always carries pre-roll and hangover. With less than PAUSE_S of them called
    # non-speech, the VAD took the room's noise for speech: no level can trust its SNR.
    live: bool = False
    nonspeech_s: float = 0.0  # frames the VAD called non-speech, digital silence included
    # Mean power of the frames the VAD called speech, in dBFS (None: no speech): how loud the
    # microphone hears the voice (QUIET_SPEECH_DBFS).
    speech_dbfs: float | None = None


def _clipped_fraction(pcm: np.ndarray) -> float:
    if len(pcm) == 0:
        return 0.0
    hot = np.abs(pcm.astype(np.int32)) >= CLIP_LEVEL
    if not hot.any():
        return 0.0
    # Count samples in runs of at least CLIP_RUN consecutive hot samples.
    padded = np.concatenate(([False], hot, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[::2], edges[1::2]
    runs = ends - starts
    return float(runs[runs >= CLIP_RUN].sum() / len(pcm))


MIN_PAUSE_FRAMES = 5  # fewer live non-speech frames: the quietest frames are the floor
# Pauses enough to trust the floor: about half the door utterance's pre-roll (0.3 s) and
# hangover (0.5 s), which 98-100 % of vcc2018_eval utterances in a room at >= 15 dB reach
# (benchmarks/noise_gate.py --room); 5 % of clean fsdd files do.
PAUSE_S = 0.45


def leaves_pauses(vad_cfg: VadConfig) -> bool:
    """Whether every utterance this endpointer ends carries PAUSE_S of non-speech: its
    hangover alone (0.5 s by default) does. A shorter vad.hangover_ms would make the live
    rule (Quality.live) retry every utterance spoken without pauses, so it is not applied."""
    return vad_cfg.hangover_ms >= PAUSE_S * 1000 - 1e-6


def _mean_power(frames: np.ndarray) -> np.ndarray:
    return (frames**2).mean(axis=1)


def heard(pcm: np.ndarray, hear_dbfs: float | None = HEAR_DBFS) -> np.ndarray:
    """What the VAD labels: `pcm` raised as a whole to `hear_dbfs` RMS (None: as it is),
    unless it is quieter than MIN_HEAR_DBFS."""
    from voxgate.features import level_gain

    x = pcm.astype(np.float64) / 32768.0
    energy = float(np.dot(x, x))
    if hear_dbfs is None or energy <= len(x) * 10 ** (MIN_HEAR_DBFS / 10):
        return pcm
    gain = level_gain(energy, len(x), hear_dbfs)
    if gain == 1.0:
        return pcm
    return np.clip(np.round(pcm * gain), -32768, 32767).astype(np.int16)


def _snr_db(
    pcm: np.ndarray,
    vad_cfg: VadConfig,
    frame_power: Callable[[np.ndarray], np.ndarray] = _mean_power,
    hear_dbfs: float | None = HEAR_DBFS,
    loud: np.ndarray | None = None,
) -> tuple[float, bool, float, float | None]:
    """(estimated SNR, whether the noise was measured in at least PAUSE_S of pauses,
    seconds of non-speech frames, the speech frames' level in dBFS). `frame_power`: each
    float64 frame's power (another measure lets benchmarks/band_gate.py read the same frames
    by band). Speech and pauses are labelled on `heard(pcm, hear_dbfs)` (`loud`, when the
    caller has it already); the powers are the recording's own."""
    from voxgate.vad import Endpointer

    ep = Endpointer(vad_cfg, FRAME_MS)
    n = ep.frame_len
    usable = len(pcm) // n * n
    if usable == 0:
        return 0.0, False, 0.0, None
    frames = pcm[:usable].reshape(-1, n)
    power = frame_power(frames.astype(np.float64)) + 1.0  # +1: 16-bit dither floor
    if loud is None:
        loud = heard(pcm, hear_dbfs)
    labelled = loud[:usable].reshape(-1, n)
    speech = np.array([ep.is_speech(f) for f in labelled])
    nonspeech_s = float((~speech).sum() * FRAME_MS / 1000)
    if speech.sum() == 0:
        return 0.0, False, nonspeech_s, None
    speech_power = power[speech].mean()
    voice = frames[speech].astype(np.float64)
    speech_dbfs = float(10 * np.log10(max(np.mean(voice * voice), 1e-3) / FULL_SCALE**2))
    # Digital silence (joined or padded files) says nothing about the room: leave it out.
    live = np.any(frames != 0, axis=1)
    pauses = power[~speech & live]
    # A file trimmed to its speech has few pauses: then the quietest frames are the floor.
    if len(pauses) >= MIN_PAUSE_FRAMES:
        noise_power = np.median(pauses)
    else:
        noise_power = np.percentile(power[live], 10) if live.any() else 1.0
    signal = max(speech_power - noise_power, 1e-3)
    from_pauses = len(pauses) * FRAME_MS / 1000 >= PAUSE_S - 1e-9
    snr_db = float(min(10 * np.log10(signal / noise_power), SNR_CEILING_DB))
    return snr_db, from_pauses, nonspeech_s, speech_dbfs


def assess(
    pcm: np.ndarray,
    vad_cfg: VadConfig | None = None,
    live: bool = False,
    hear_dbfs: float | None = HEAR_DBFS,
) -> Quality:
    """Measure one recording (int16, 16 kHz mono). `live`: an utterance this endpointer cut
    at the door (Quality.live); honoured only when the endpointer leaves pauses enough
    (leaves_pauses), so callers need not check. `hear_dbfs`: see HEAR_DBFS (None: the VAD
    hears the recording at its own level, as before it; for benchmarks/quiet_gate.py)."""
    from voxgate.vad import segment

    vad_cfg = vad_cfg or VadConfig()
    pcm = np.asarray(pcm, dtype=np.int16)
    # Measuring a whole recording needs no memory bound, so utterances are not split; an
    # utterance still split at the bound's edge (vad.Endpointer.flush with nothing buffered)
    # raises ValueError: then count the speech of the utterances already closed.
    whole = vad_cfg.model_copy(update={"max_utterance_ms": 120000})
    loud = heard(pcm, hear_dbfs)
    try:
        speech_s = sum(u.speech_s for u in segment(loud, whole, FRAME_MS))
    except ValueError:
        n = 120 * SAMPLE_RATE
        speech_s = sum(
            u.speech_s for i in range(0, len(loud), n) for u in segment(loud[i : i + n], whole)
        )
    snr_db, from_pauses, nonspeech_s, speech_dbfs = _snr_db(pcm, vad_cfg, loud=loud)
    return Quality(
        duration_s=len(pcm) / SAMPLE_RATE,
        speech_s=float(speech_s),
        snr_db=snr_db,
        snr_from_pauses=from_pauses,
        clipped=_clipped_fraction(pcm),
        live=live and leaves_pauses(vad_cfg),
        nonspeech_s=nonspeech_s,
        speech_dbfs=speech_dbfs,
    )


def db_text(db: float, limit: float | None = None) -> str:
    """A level in whole dB as the commands print it: "0", not "-0", for -0.5 < db < 0.
    With the `limit` it is held to, a level that whole dB would put on the other side of it
    gets one decimal, rounded away from it: 9.7 dB read "10" next to "needs 10 dB"."""
    text = f"{db:.0f}"
    if limit is not None and (db < limit) != (float(text) < limit):
        text = f"{math.floor(db * 10) / 10:.1f}" if db < limit else f"{math.ceil(db * 10) / 10:.1f}"
    return "0" if text in ("-0", "-0.0") else text


def clipped_text(fraction: float, limit: float) -> str:
    """A clipped share in % as the commands print it, two decimals. One that two decimals
    would put on the other side of its `limit` (a fraction) gets as many more as it takes
    (at most six, then rounded away from it): 0.031 % read "0.03" next to "at most 0.03 %"
    and was retried."""
    pct, most = 100 * fraction, 100 * limit
    for places in (2, 3, 4, 5, 6):
        text = f"{pct:.{places}f}"
        if (pct > most) == (float(text) > most):
            return text
    step = 10**6
    return f"{(math.ceil(pct * step) if pct > most else math.floor(pct * step)) / step:.6f}"


def too_noisy(q: Quality, min_snr_db: float, min_snr_db_no_pauses: float) -> bool:
    """Below the level for how its SNR was measured: `min_snr_db` when measured in at least
    PAUSE_S of pauses, `min_snr_db_no_pauses` otherwise (a recording cut to its speech).
    A live utterance whose VAD found less than PAUSE_S of non-speech is too noisy at any
    level (Quality.live). Digital silence counts as non-speech there: a microphone chain
    that outputs zeros between words (a noise suppressor) has a silent room, not a noisy one.
    A recording with no speech at all is not too noisy: nothing was measured."""
    if q.live and q.nonspeech_s < PAUSE_S - 1e-9:
        return True
    if q.speech_s <= 0:
        # No speech heard, so no SNR measured (it reads 0 dB): a silent file or speech far
        # too quiet is too little speech; "too noisy" sent people looking for noise.
        return False
    return q.snr_db < (min_snr_db if q.snr_from_pauses else min_snr_db_no_pauses)


# The reasons gate_reasons gives (in this order), for whoever must tell them from the rest.
GATE_REASONS = ("too_little_speech", "too_noisy", "clipped")


def gate_reasons(
    q: Quality,
    min_speech_s: float,
    min_snr_db: float,
    min_snr_db_no_pauses: float,
    *,
    max_clipped: float,
) -> tuple[str, ...]:
    """Why an attempt of this quality must be retried (empty when it may be scored).
    `max_clipped` (speaker.max_clipped) has no default: a caller that left it out applied a
    gate without the clipping rule, and a hot microphone's genuine attempts were denied."""
    reasons = []
    if q.speech_s < min_speech_s:
        reasons.append("too_little_speech")
    if too_noisy(q, min_snr_db, min_snr_db_no_pauses):
        reasons.append("too_noisy")
    if q.clipped > max_clipped:
        reasons.append("clipped")
    return tuple(reasons)
