"""AES-256-GCM envelopes (core.envelope) and the data-key file (state.data_keys)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.config import EncryptionConfig
from core.envelope import SEGMENT, EnvelopeError, Keyring, is_sealed
from core.errors import ConfigError
from state.data_keys import load_keyring, parse_keyring, rotated, write_key_file


@pytest.fixture(scope="module")
def ring() -> Keyring:
    return rotated(None)


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 7])
@pytest.mark.parametrize("chunk", [1 << 12, SEGMENT + 16, 1 << 30])
def test_what_is_sealed_opens_whole_or_streamed_in_any_chunking(ring: Keyring, size: int, chunk: int) -> None:
    data = os.urandom(size)
    sealed = ring.seal(data)
    assert is_sealed(sealed) and data[:64] not in sealed[32:] if size >= 64 else is_sealed(sealed)
    assert ring.open(sealed) == data
    pieces = [sealed[i : i + chunk] for i in range(0, len(sealed), chunk)]
    assert b"".join(ring.open_stream(pieces)) == data
    streamed = b"".join(ring.seal_stream([data[i : i + 999] for i in range(0, size, 999)]))
    assert ring.open(streamed) == data


def test_any_flipped_bit_truncation_or_segment_swap_is_refused(ring: Keyring) -> None:
    data = os.urandom(2 * SEGMENT + 5)
    sealed = ring.seal(data)
    head = len(sealed) - (len(data) + 3 * 16)
    step = SEGMENT + 16
    for pos in (0, 5, head - 1, head, head + step, len(sealed) - 1):
        altered = bytearray(sealed)
        altered[pos] ^= 0x01
        with pytest.raises(EnvelopeError):
            ring.open(bytes(altered))
    with pytest.raises(EnvelopeError):  # dropped last segment: the new last is not marked final
        ring.open(sealed[: head + 2 * step])
    swapped = (
        sealed[:head] + sealed[head + step : head + 2 * step] + sealed[head : head + step] + sealed[head + 2 * step :]
    )
    with pytest.raises(EnvelopeError):
        ring.open(swapped)


def test_a_rotated_ring_opens_old_envelopes_and_seals_with_the_new_key(ring: Keyring) -> None:
    old = ring.seal(b"sealed before rotation")
    newer = rotated(ring)
    assert newer.current != ring.current and newer.key_id_of(newer.seal(b"x")) == newer.current
    assert newer.open(old) == b"sealed before rotation"
    with pytest.raises(EnvelopeError, match="lacks"):
        ring.open(newer.seal(b"x"))


def test_the_key_file_round_trips_is_private_and_bad_files_name_the_problem(tmp_path: Path, ring: Keyring) -> None:
    path = tmp_path / "keys" / "data.json"
    write_key_file(path, ring)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_keyring(EncryptionConfig(key_file=str(path)), tmp_path)
    assert loaded is not None and loaded.open(ring.seal(b"v")) == b"v"
    with pytest.raises(ValueError, match="32"):
        parse_keyring('{"current": "a", "keys": {"a": "AAAA"}}')
    path.write_text("{}")
    with pytest.raises(ConfigError, match="storage.encryption"):
        load_keyring(EncryptionConfig(key_file=str(path)), tmp_path)
    with pytest.raises(ConfigError, match="key_file/key_env"):
        load_keyring(EncryptionConfig(demo_key=False), tmp_path)
    assert load_keyring(EncryptionConfig(enabled=False), tmp_path) is None


def test_the_demo_key_is_made_once_per_var_dir_and_kept_private(tmp_path: Path) -> None:
    first = load_keyring(EncryptionConfig(), tmp_path)
    again = load_keyring(EncryptionConfig(), tmp_path)
    assert first is not None and again is not None and first.keys == again.keys
    key_file = next((tmp_path / "keys").iterdir())
    assert key_file.stat().st_mode & 0o777 == 0o600
