"""audio.device: a string of ASCII digits is an index, anything else a name. isdigit() alone
took '٣' as index 3 and let '²' through to int(), which raised a bare ValueError at start
instead of the AudioError that lists the inputs."""

from __future__ import annotations

import pytest

from voxgate.audio import AudioError
from voxgate.audio.mic import DeviceInfo, find_device

DEVICES = [DeviceInfo(0, "default", 2, 48000), DeviceInfo(3, "USB mic", 1, 16000)]


def test_ascii_digits_are_an_index() -> None:
    assert find_device(DEVICES, "3", 0).index == 3
    assert find_device(DEVICES, 3, 0).index == 3


@pytest.mark.parametrize("want", ["٣", "²", "３"])
def test_other_digits_are_a_name_and_fail_with_the_listing(want: str) -> None:
    with pytest.raises(AudioError, match="USB mic"):
        find_device(DEVICES, want, 0)
