"""What `voxgate demo` (scripts/demo, the README's first command) prints about enrollment."""

from __future__ import annotations

from voxgate.demo import enroll_summary

OUTPUT = """\
enrollment of alice: 13 of 14 takes used, 31.4 s of net speech
  take  1 ...-8zk116k4/take1.wav speech  2.4 s  SNR  16 dB  clipped 0.00 %  consistency 0.95  ok
  take  2 ...-8zk116k4/take2.wav speech  2.5 s  SNR   4 dB  clipped 0.00 %  REJECTED: too noisy
  take  3 ...-8zk116k4/take3.wav speech  2.6 s  SNR  15 dB  clipped 0.00 %  consistency 0.92  ok
  take 14 ...8zk116k4/take14.wav speech  2.6 s  SNR  16 dB  clipped 0.00 %  consistency 0.96  ok
enrolled alice with model ge2e-resemblyzer-0.1.4/int8
"""


def test_enrollment_summary_keeps_the_count_and_the_refused_takes() -> None:
    # The demo printed the last four lines of `voxgate enroll`: takes 12-14 (labelled
    # take11.wav..take13.wav) and the last line, without 'N of 14 takes used' or the takes
    # that were refused, the lines that say how the enrollment went.
    assert enroll_summary(OUTPUT) == [
        "enrollment of alice: 13 of 14 takes used, 31.4 s of net speech",
        "  take  2 ...-8zk116k4/take2.wav speech  2.5 s  SNR   4 dB  clipped 0.00 %  "
        "REJECTED: too noisy",
        "enrolled alice with model ge2e-resemblyzer-0.1.4/int8",
    ]


def test_a_failed_enrollment_shows_every_line() -> None:
    failed = "enrollment of alice: 2 of 14 takes used\n  not enrolled: need 3 good takes\n"
    assert enroll_summary(failed) == failed.splitlines()
