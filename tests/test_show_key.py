"""zkv.errors.show_key: the one way every layer words a key in its messages."""

from __future__ import annotations

import pytest

from zkv import protocol
from zkv.errors import show_key


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (b"user:1", "'user:1'"),
        ("user:1", "'user:1'"),
        (b"", "''"),
        ("", "''"),
        ("héllo".encode(), "'héllo'"),
        (b"\xff\x00", "b'\\xff\\x00'"),
        (b"k" * 64, repr("k" * 64)),
        ("k" * 64, repr("k" * 64)),
        (b"k" * 65, repr("k" * 64) + "..."),
        ("k" * 65, repr("k" * 64) + "..."),
        (b"\xff" * 65, repr(b"\xff" * 64) + "..."),
    ],
)
def test_show_key(key: str | bytes, shown: str) -> None:
    assert show_key(key) == shown


def test_a_text_key_is_cut_by_characters_never_mid_character() -> None:
    key = "é" * 40  # 80 bytes, 40 characters
    assert show_key(key) == show_key(key.encode()) == repr(key)
    assert show_key("日" * 70) == show_key(("日" * 70).encode()) == repr("日" * 64) + "..."


def test_a_str_key_and_its_utf8_bytes_read_alike() -> None:
    for key in ["a", "{tag}:x", "ü" * 100, "k" * 1000]:
        assert show_key(key) == show_key(key.encode("utf-8"))


def test_protocol_uses_the_same_function() -> None:
    assert protocol.show_key is show_key
