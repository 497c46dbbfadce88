"""Whether bytes are text: the test that both plain-text and JSON sniffing need."""

from __future__ import annotations


def is_utf8_text(sample: bytes) -> bool:
    """No NUL byte, and valid UTF-8 up to a character that the sample's end may have cut."""
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(sample) - 3
    return True
