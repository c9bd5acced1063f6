"""voxgate enroll NAME [--from FILE ...]: record or read enrollment takes and store a voiceprint."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from voxgate.commands.common import add_config_option, add_parser, ascii_int, config_from_args
from voxgate.commands.speaker_common import (
    CommandError,
    fail,
    load_cohort,
    load_embedder,
    open_store,
    read_file,
    record_change,
)

REASONS = {
    "too_short": "too little speech",
    "clipped": "clipped",
    "too_noisy": "too noisy",
    "outlier": "inconsistent with the other takes (another voice?)",
    "other_voice": "a different voice from the other takes",
    "no_embedding": "the model could not use it",
    "duplicate": "the same recording as an earlier take",
}


def register(sub: argparse._SubParsersAction) -> None:
    from voxgate.config.speaker import SpeakerConfig

    need = SpeakerConfig.model_fields  # the defaults, as the schema has them
    p = add_parser(
        sub,
        "enroll",
        help="enroll a user from the microphone (guided) or from recordings",
        description="Enroll NAME. Without --from, shows a random digit string per take and "
        "records until you stop speaking, until speaker.enroll_min_takes takes (default "
        f"{need['enroll_min_takes'].default}) and speaker.enroll_min_speech_s seconds of net "
        f"speech (default {need['enroll_min_speech_s'].default:g} s) are in; with --from, the "
        "files must hold as much (a 5-digit string is 2-3 s of speech: about 8 takes). Takes "
        "should be the same kind of speech as a door attempt (digit strings, same "
        "microphone). Takes that are too short, clipped, noisy, repeated or inconsistent with the "
        "others are named and left out. Exit status: 0 enrolled, 1 not enrolled (the "
        "shortfall is printed) or an error, 130 interrupted (Ctrl-C: nothing stored).",
        examples="""
        voxgate enroll alice
        voxgate enroll alice --from t1.wav t2.wav t3.wav t4.wav t5.wav t6.wav t7.wav t8.wav
        voxgate enroll alice --from t1.wav t2.wav --prompts 40712 95368   # what each take says
        voxgate enroll alice --replace -c /etc/voxgate/voxgate.yaml
        """,
    )
    p.add_argument("name", metavar="NAME", help="the user's name (1-64 characters, no / or \\)")
    from voxgate.audio.file import MAX_TAKE_S, piped_cap_text, rates_text

    p.add_argument(
        "--from",
        dest="files",
        nargs="+",
        metavar="FILE",
        help=f"enrollment takes as WAV/FLAC (or OGG) files, one take per file, {rates_text()}, "
        f"at most {MAX_TAKE_S:g} s each; - reads one take from standard input (at most "
        f"{piped_cap_text()} piped; default: microphone)",
    )
    p.add_argument(
        "--prompts",
        nargs="+",
        metavar="DIGITS",
        help="with --from: the digit string each file says, in the same order; the spoken "
        "challenge then checks answers against this person's own digits",
    )
    p.add_argument("--replace", action="store_true", help="re-enroll a user who exists")
    p.add_argument(
        "--max-takes",
        type=ascii_int,
        default=None,
        help=f"microphone: give up after this many takes (1-200; default: {DEFAULT_MAX_TAKES})",
    )
    add_config_option(p)
    p.set_defaults(func=run)


def _noise_level(q: Any, sp: Any) -> str:
    """How a take's SNR was measured and the level it had to reach: a take cut to its
    speech is held to a lower level than one with pauses, so "SNR 21 dB: too noisy" next
    to accepted takes of 15 dB needs this to make sense."""
    if q.snr_from_pauses:
        return f"in its pauses; needs {sp.enroll_min_snr_db:g} dB: speaker.enroll_min_snr_db"
    return (
        f"without pauses to measure; needs {sp.enroll_min_snr_db_no_pauses:g} dB: "
        "speaker.enroll_min_snr_db_no_pauses"
    )


def _snr_limit(q: Any, sp: Any) -> float:
    """The SNR a take is held to, by how its SNR was measured (see _noise_level)."""
    return float(sp.enroll_min_snr_db if q.snr_from_pauses else sp.enroll_min_snr_db_no_pauses)


def _level_missed(problem: str, q: Any, sp: Any) -> str:
    """What a rejected take's audio missed, in brackets after the reason: how the SNR was
    measured and its level, the net speech or the clipping needed. "too little speech"
    alone did not say how much would do."""
    from voxgate.enrollment import MIN_TAKE_SPEECH_S

    if problem == "too_noisy":
        return f"SNR {_noise_level(q, sp)}"
    if problem == "too_short":
        return f"needs {MIN_TAKE_SPEECH_S:g} s of net speech"
    if problem == "clipped":
        most = f"{100 * sp.max_clipped:g} % of samples: speaker.max_clipped"
        return f"too loud: move back or lower the gain; at most {most}"
    return ""


def _level_text(q: Any) -> str:
    from voxgate.quality import db_text

    return "-" if q.speech_dbfs is None else db_text(q.speech_dbfs)


def _quiet_note(result: Any, again: str) -> str | None:
    """Advice when the microphone hears the voice too quietly for the door: the gate reads
    such takes well, but the door's endpointer hears the stream as it is and cuts quiet
    words off (quality.QUIET_SPEECH_DBFS)."""
    from voxgate.quality import QUIET_SPEECH_DBFS, db_text

    levels = [t.quality.speech_dbfs for t in result.accepted if t.quality.speech_dbfs is not None]
    if not levels or float(np.median(levels)) >= QUIET_SPEECH_DBFS:
        return None
    return (
        f"  quiet: the takes' speech is at {db_text(float(np.median(levels)))} dBFS, below "
        f"{QUIET_SPEECH_DBFS:g}; the door's endpointer cuts quiet words off, so attempts will "
        f"often be retried. Raise the microphone's capture gain (alsamixer) or move it closer, "
        f"then {again}"
    )


MAX_TAKES_LIMIT = 200  # a guided enrollment needs a handful; more is a typo
DEFAULT_MAX_TAKES = 20  # guided: room for takes the checks reject


def _label(text: str, width: int = 24) -> str:
    """`text` in `width` columns; a long path keeps its end, where the file name is."""
    return f"{text:{width}s}" if len(text) <= width else "..." + text[-(width - 3) :]


def _print_takes(result: Any, labels: list[str], sp: Any, numbers: list[int] | None = None) -> None:
    """One line per take. `numbers`: what each take is called (a microphone take by the
    number of the prompt it answered, as shown when it was said); default 1, 2, ..."""
    from voxgate.enrollment import seconds_text
    from voxgate.quality import clipped_text, db_text

    for t in result.takes:
        q = t.quality
        number = numbers[t.index - 1] if numbers else t.index
        line = (
            f"  take {number:2d} {_label(labels[t.index - 1])} "
            f"speech {seconds_text(q.speech_s):>4} s  "
            f"SNR {db_text(q.snr_db, _snr_limit(q, sp)):>3} dB  level {_level_text(q):>3} dBFS  "
            f"clipped {clipped_text(q.clipped, sp.max_clipped):>4} %"
        )
        if t.consistency is not None:
            line += f"  consistency {t.consistency:.2f}"
        why = REASONS.get(t.reason or "", t.reason)
        if t.reason in ("too_noisy", "too_short", "clipped"):
            why = f"{why} ({_level_missed(t.reason, q, sp)})"
        if t.same_as is not None:
            why = f"the same recording as take {numbers[t.same_as - 1] if numbers else t.same_as}"
        line += "  ok" if t.accepted else f"  REJECTED: {why}"
        print(line)


def _ended_take(events: list[Any]) -> np.ndarray | None:
    """The audio of an utterance that ends among endpointer `events` (None if too short)."""
    from voxgate.vad import SpeechEnded

    ended = [e for e in events if isinstance(e, SpeechEnded)]
    return ended[0].utterance.pcm if ended and ended[0].utterance is not None else None


def _show_dc_offset(offset: float) -> None:
    """A microphone's offset, said while enrolling: it is removed, as at the door, so the
    takes are fine; the daemon's advice to re-enroll is for voiceprints made before."""
    from voxgate.audio.mic import DC_WARN_LSB

    if abs(offset) >= DC_WARN_LSB:
        print(f"  (microphone DC offset {offset:+.0f} LSB: removed)", flush=True)


def _record_takes(
    cfg: Any, embedder: Any, max_takes: int
) -> tuple[list[np.ndarray], list[str], list[int], Any]:
    """Guided microphone enrollment: prompt, record to end of speech, check, repeat.
    Returns the takes kept, the prompt each said, the number each was prompted with
    (takes not used leave gaps), and the check of the takes."""
    from voxgate.audio import AudioError, open_source
    from voxgate.enrollment import (
        check_takes,
        progress_text,
        prompt_plan,
        seconds_text,
        take_problem,
    )
    from voxgate.quality import assess, clipped_text, db_text
    from voxgate.vad import Endpointer

    sp = cfg.speaker
    takes: list[np.ndarray] = []
    said: list[str] = []
    numbers: list[int] = []  # the prompt's number ("take 4: say ...") of each kept take
    plan = prompt_plan(max_takes)
    speech = 0.0
    result = None
    try:
        source = open_source(cfg.audio)
    except AudioError as exc:
        raise CommandError(str(exc)) from None
    from voxgate.audio.mic import MicSource

    if isinstance(source, MicSource):
        source.dc_report = _show_dc_offset  # printed, instead of the daemon's log line
    with source:
        frames = source.frames(cfg.audio.frame_ms)
        ep = Endpointer(cfg.vad, cfg.audio.frame_ms)
        # Each take says a digit string, as an answer does: people pause between digits.
        ep.set_hangover_ms(max(cfg.vad.hangover_ms, cfg.challenge.answer_pause_ms))
        for attempt in range(1, max_takes + 1):
            prompt = plan[attempt - 1]
            print(f"\ntake {attempt}: say   {' '.join(prompt)}", flush=True)
            pcm = None
            try:
                for frame in frames:
                    pcm = _ended_take(ep.feed(frame))
                    if pcm is not None:
                        break
                else:  # the source ended (a pipe closed): a take still open counts
                    pcm = _ended_take(ep.flush())
            except AudioError as exc:  # the device is opened here; or unplugged mid-way
                raise CommandError(f"{exc}; nothing stored") from None
            if pcm is None:
                print("  (audio source ended)")
                break
            q = assess(pcm, cfg.vad)
            problem = take_problem(q, sp)
            if problem:
                heard = (
                    f"{seconds_text(q.speech_s)} s, SNR {db_text(q.snr_db, _snr_limit(q, sp))} dB"
                )
                if problem == "clipped":
                    heard = f"{clipped_text(q.clipped, sp.max_clipped)} % clipped"
                level = _level_missed(problem, q, sp)
                # A noisy take reads "SNR 20 dB in its pauses; needs 28 dB: ...".
                noisy = problem == "too_noisy"
                level = " " + level.removeprefix("SNR ") if noisy else "; " + level
                print(f"  not used: {REASONS[problem]} ({heard}{level})")
                continue
            takes.append(pcm)
            said.append(prompt)
            numbers.append(attempt)
            speech += q.speech_s
            done = progress_text(len(takes), speech, sp.enroll_min_takes, sp.enroll_min_speech_s)
            snr = db_text(q.snr_db, _snr_limit(q, sp))
            print(f"  ok: {seconds_text(q.speech_s)} s of speech, SNR {snr} dB, "
                  f"level {_level_text(q)} dBFS   progress: {done}")  # fmt: skip
            if len(takes) >= sp.enroll_min_takes and speech >= sp.enroll_min_speech_s:
                result = check_takes(takes, embedder, sp, cfg.vad, numbers=numbers)
                if result.ok or any(t.reason == "other_voice" for t in result.takes):
                    break  # two voices: refused; recording more would not say whose voice
                # An outlier was dropped: keep only the good takes and record more.
                _print_takes(result, ["microphone"] * len(takes), sp, numbers)
                takes = [takes[t.index - 1] for t in result.accepted]
                said = [said[t.index - 1] for t in result.accepted]
                numbers = [numbers[t.index - 1] for t in result.accepted]
                speech = result.speech_s
    if result is None or len(result.takes) != len(takes):
        result = check_takes(takes, embedder, sp, cfg.vad, numbers=numbers)
    return takes, said, numbers, result


def run(args: argparse.Namespace) -> int:
    from voxgate.enrollment import NO_TEMPLATES_FACT, PROMPT_MISMATCH_FACT, TWO_VOICES_FACT
    from voxgate.logs import reported_by_command

    # Said below in the command's own words ("not enrolled: takes 6, 7 sound like a different
    # voice ...", "take 4: did not say its prompt"): the library's warning of the same fact
    # above them read as a second problem.
    with reported_by_command(TWO_VOICES_FACT, PROMPT_MISMATCH_FACT, NO_TEMPLATES_FACT):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg is None:
        return 1
    from voxgate.audio.file import STDIN, STDIN_NAME
    from voxgate.audit import loss_traces
    from voxgate.enrollment import (
        TEMPLATES_META,
        attach_templates,
        check_takes,
        same_voice,
        seconds_text,
        speech_seconds,
    )
    from voxgate.voiceprints import StoreError, enrolled_text, normalize_name

    if args.prompts and (not args.files or len(args.prompts) != len(args.files)):
        return fail("--prompts needs --from and one digit string per file")
    if args.prompts and not all(p.isascii() and p.isdigit() for p in args.prompts):  # not '²'
        return fail("--prompts takes digit strings, e.g. --prompts 40712 95368")
    if args.files and args.files.count("-") > 1:  # a second read finds standard input empty
        return fail("--from: - (standard input) can hold one take; give the others as files")
    if args.files and args.max_takes is not None:  # was ignored: every file is a take
        return fail("--max-takes is for takes from the microphone; with --from each file is "
                    "a take: give the files to use")  # fmt: skip
    if args.max_takes is None:
        args.max_takes = DEFAULT_MAX_TAKES
    if not 1 <= args.max_takes <= MAX_TAKES_LIMIT:  # a typo of 10**9 hung in the prompt plan
        return fail(f"--max-takes must be 1-{MAX_TAKES_LIMIT}")

    try:
        name = normalize_name(args.name)
    except StoreError as exc:
        return fail(str(exc))
    if "/" in name or "\\" in name:  # as the MQTT commands refuse them; API paths split at /
        return fail("user name must not contain / or \\ (the API and MQTT could not reach it)")
    try:
        store = open_store(cfg)
    except (CommandError, StoreError) as exc:
        return fail(str(exc))
    with store:
        try:
            # Presence only: a damaged row must not stop its repair with --replace.
            if not args.replace and store.has(name):
                said = enrolled_text(name, store.enrolled_name(name))
                return fail(f"{said}; add --replace to re-enroll")
            store.check_new_name(name)  # before the takes are spoken, not only at the end
            embedder = load_embedder(cfg)
            if cfg.speaker.cohort is not None:
                # A configured cohort the scorer refuses (a typo, another model's) stops
                # verify and the daemon; check_takes refuses it too, but only after every
                # take has been spoken: say so before the first one.
                load_cohort(cfg, embedder)
            numbers: list[int] | None = None  # microphone takes: their prompts' numbers
            if args.files:
                try:
                    takes = [read_file(f) for f in args.files]
                except CommandError as exc:  # said whether the other takes counted
                    raise CommandError(
                        f"{exc}; nothing stored for {name}: leave that file out or replace it"
                    ) from None
                prompts = list(args.prompts or [""] * len(takes))
                # A take piped in is called what the read errors call it, not "-".
                labels = [STDIN_NAME if f == STDIN else f for f in args.files]
                result = check_takes(takes, embedder, cfg.speaker, cfg.vad)
            else:
                takes, prompts, numbers, result = _record_takes(cfg, embedder, args.max_takes)
                labels = ["microphone"] * len(takes)
        except CommandError as exc:
            return fail(str(exc))
        except StoreError as exc:
            return fail(str(exc))
        except KeyboardInterrupt:
            # Said: a silent exit left the person unsure whether the takes so far counted.
            print(f"\ninterrupted: nothing stored for {name}; the takes so far are discarded",
                  file=sys.stderr)  # fmt: skip
            return 130
        # Refused, no take is used: "10 of 20 takes used" above a refusal of two voices read
        # as if half had been stored.
        stored, counted = ("", "takes used") if result.ok else (
            "nothing stored; ", "takes passed their checks")  # fmt: skip
        print(f"enrollment of {name}: {stored}{len(result.accepted)} of {len(result.takes)} "
              f"{counted}, {seconds_text(result.speech_s)} s of net speech")  # fmt: skip
        _print_takes(result, labels, cfg.speaker, numbers)
        # The door's own microphone only: a file may come from another one.
        again = "enroll again" + (" with --replace" if result.ok else "")
        if not args.files and (note := _quiet_note(result, again)):
            print(note, flush=True)
        if not result.ok:
            for problem in result.problems:
                print(f"  not enrolled: {problem}", file=sys.stderr)
            return 1
        meta = {
            "takes": len(result.accepted),
            "speech_s": speech_seconds(result.speech_s),  # what the summary above says
            "source": "files" if args.files else "microphone",
        }
        dropped = attach_templates(
            meta, result, takes, prompts, cfg.stt.template_threshold, numbers
        )
        for n in dropped:
            shown = numbers[n - 1] if numbers else n
            print(f"  take {shown}: did not say its prompt; no digit templates from it")
        if any(prompts) and TEMPLATES_META not in meta:
            print("  no digit templates: answers will be checked by the speech engine alone")
        # Stored anyway (relatives can sound alike), but said and audited.
        alike = same_voice(result.embeddings, name, store, embedder, cfg.speaker)
        if alike is not None:
            print(f"warning: {alike.text()}", file=sys.stderr)
        sha = getattr(embedder, "model_sha256", None)
        lost = loss_traces(cfg)  # before this voiceprint, which would read as a trace of use
        try:
            if args.replace:
                store.replace(name, result.embeddings, embedder.model_id, meta, sha)
            else:
                # Not replace(): the daemon's API, the fleet or another shell may have
                # enrolled this name while the takes were recorded; theirs stays.
                store.add_user(name, result.embeddings, embedder.model_id, meta, sha)
        except StoreError as exc:
            return fail(str(exc))
        record_change(
            cfg, store, "enrolled", name, embedder.model_id, sha, lost=lost,
            same_voice_as=alike.audit() if alike is not None else None,
        )  # fmt: skip
    print(f"enrolled {name} with model {embedder.model_id}")
    return 0
