"""Client-side encryption of offsite copies: round trips, the size formula, every way an
encrypted file can be damaged or misused being refused (a ciphertext swapped between files
or moved to another backup included), v1 copies still read, and the manifest mac."""

from __future__ import annotations

import base64
import hashlib
import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbops.offsite.crypto import (
    HEADER_BYTES,
    TAG_BYTES,
    DecryptionError,
    Encryption,
    file_context,
    parse_key,
)

KEY = bytes(range(32))
CHUNK = 4096
CTX = file_context("redis", None, "20240101T020000Z", "dump.rdb", "ab" * 32)


def encrypt(data: bytes, enc: Encryption | None = None, context: str = CTX) -> bytes:
    enc = enc or Encryption(KEY, CHUNK)
    return b"".join(enc.encrypt_chunks(io.BytesIO(data), context))


def decrypt(blob: bytes, enc: Encryption | None = None, context: str = CTX) -> bytes:
    out = io.BytesIO()
    (enc or Encryption(KEY, CHUNK)).decrypt_stream(io.BytesIO(blob), out, context)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_round_trip_and_size_formula(size):
    data = os.urandom(size)
    enc = Encryption(KEY, CHUNK)
    blob = encrypt(data, enc)
    assert len(blob) == enc.stored_size(size)
    assert decrypt(blob, enc) == data
    assert data[:64] not in blob or size < 16  # the plaintext does not show through


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=5 * CHUNK), chunk=st.sampled_from([4096, 5000, 8192]))
def test_round_trip_property(data, chunk):
    enc = Encryption(KEY, chunk)
    blob = encrypt(data, enc)
    assert len(blob) == enc.stored_size(len(data))
    assert decrypt(blob, enc) == data


def test_encryption_is_deterministic_per_context_and_differs_between_contexts():
    data = os.urandom(10_000)
    assert encrypt(data) == encrypt(data)  # an interrupted rsync resumes on identical bytes
    other = file_context("redis", None, "20240101T020000Z", "other.rdb", "ab" * 32)
    assert encrypt(data, context=other) != encrypt(data)
    assert encrypt(data, Encryption(bytes(32), CHUNK)) != encrypt(data)


def test_file_written_and_read_back(tmp_path):
    enc = Encryption(KEY, CHUNK)
    src, blob, back = tmp_path / "plain", tmp_path / "blob", tmp_path / "back"
    src.write_bytes(os.urandom(3 * CHUNK + 5))
    size, digest = enc.encrypt_file(src, blob, CTX)
    assert size == blob.stat().st_size and blob.stat().st_mode & 0o777 == 0o600
    assert digest == hashlib.sha256(blob.read_bytes()).hexdigest()
    n, plain_sha = enc.decrypt_file(blob, back, CTX)
    assert back.read_bytes() == src.read_bytes() and n == src.stat().st_size
    assert plain_sha == hashlib.sha256(src.read_bytes()).hexdigest()


def test_decrypt_file_leaves_nothing_on_failure(tmp_path):
    enc = Encryption(KEY, CHUNK)
    blob = bytearray(encrypt(os.urandom(2 * CHUNK)))
    blob[HEADER_BYTES + 10] ^= 1
    (tmp_path / "blob").write_bytes(bytes(blob))
    with pytest.raises(DecryptionError):
        enc.decrypt_file(tmp_path / "blob", tmp_path / "out", CTX)
    assert not (tmp_path / "out").exists()


def _records(blob: bytes, chunk: int = CHUNK) -> list[bytes]:
    body = blob[HEADER_BYTES:]
    size = chunk + TAG_BYTES
    return [body[i : i + size] for i in range(0, len(body), size)]


def test_every_kind_of_damage_is_refused():
    data = os.urandom(3 * CHUNK + 100)
    blob = encrypt(data)
    header, records = blob[:HEADER_BYTES], _records(blob)
    assert len(records) == 4
    damaged = {
        "bit flip in a record": blob[: HEADER_BYTES + 5]
        + bytes([blob[HEADER_BYTES + 5] ^ 1])
        + blob[HEADER_BYTES + 6 :],
        "bit flip in the last tag": blob[:-1] + bytes([blob[-1] ^ 0x80]),
        "salt changed": header[:12] + bytes([header[12] ^ 1]) + header[13:] + b"".join(records),
        "records swapped": header + records[1] + records[0] + records[2] + records[3],
        "record dropped": header + records[0] + records[2] + records[3],
        "cut at a record boundary": header + b"".join(records[:3]),
        "cut inside a record": blob[:-50],
        "final record only": header + records[3],
        "data appended": blob + b"\0",
        "too short": blob[:20],
        "not ours": b"PLAINTEXT" * 10,
    }
    for name, bad in damaged.items():
        with pytest.raises(DecryptionError):
            decrypt(bad)
            pytest.fail(f"accepted: {name}")


def test_chunk_size_in_the_header_cannot_be_changed():
    blob = bytearray(encrypt(os.urandom(2 * CHUNK)))
    blob[8:12] = (8192).to_bytes(4, "big")
    with pytest.raises(DecryptionError):
        decrypt(bytes(blob))


def test_wrong_key_is_named_by_its_id():
    blob = encrypt(b"secret rows")
    other = Encryption(os.urandom(32), CHUNK)
    with pytest.raises(DecryptionError, match="key id"):
        decrypt(blob, other)


def test_a_record_moved_between_files_is_refused():
    a = encrypt(os.urandom(2 * CHUNK + 1), context="file a")
    b = encrypt(os.urandom(2 * CHUNK + 1), context="file b")
    mixed = a[:HEADER_BYTES] + _records(b)[0] + b"".join(_records(a)[1:])
    with pytest.raises(DecryptionError):
        decrypt(mixed, context="file a")


def test_reader_streams_the_same_bytes_in_any_read_size():
    data = os.urandom(2 * CHUNK + 333)
    enc = Encryption(KEY, CHUNK)
    for step in (1, 7, 100, CHUNK, 10 * CHUNK):
        reader = enc.reader(io.BytesIO(data), CTX)
        parts = []
        while block := reader.read(step):
            parts.append(block)
        assert b"".join(parts) == encrypt(data, enc)
        assert reader.finished and reader.bytes == enc.stored_size(len(data))
    assert reader.sha256 == hashlib.sha256(encrypt(data, enc)).hexdigest()
    assert not reader.seekable() and reader.readable()


def test_keys_are_parsed_from_hex_and_base64_and_nothing_else():
    raw = os.urandom(32)
    assert parse_key(raw.hex()) == raw
    assert parse_key(base64.b64encode(raw).decode()) == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    assert parse_key(f"  {raw.hex()}\n") == raw
    for bad in ("", "   ", "abc", os.urandom(16).hex(), base64.b64encode(os.urandom(31)).decode(), "zz" * 32):
        with pytest.raises(ValueError, match="32 random bytes|empty"):
            parse_key(bad)


def test_the_key_never_shows_in_repr_and_settings_are_checked():
    enc = Encryption(KEY, CHUNK)
    assert KEY.hex() not in repr(enc) and "key_id" in repr(enc)
    assert enc.describe() == {"scheme": "aes-256-gcm-chunked-v2", "key_id": enc.key_id, "chunk_bytes": CHUNK}
    with pytest.raises(ValueError):
        Encryption(b"short", CHUNK)
    with pytest.raises(ValueError):
        Encryption(KEY, 100)


def test_a_short_record_not_sealed_as_final_is_refused():
    """White-box: a writer (or anyone with the key) that ends a file with a short record
    sealed as non-final produced a file that may have been cut; it must not decrypt."""
    import struct

    from dbops.offsite.crypto import _HEADER, MAGIC

    enc = Encryption(KEY, CHUNK)
    salt = enc._salt(CTX)
    header = _HEADER.pack(MAGIC, CHUNK, salt, bytes.fromhex(enc.key_id))
    aead = enc._aead(salt)
    nonce, aad = enc._nonce_aad(header, 0, False, CTX)
    blob = header + aead.encrypt(nonce, b"short tail", aad)
    with pytest.raises(DecryptionError, match="record 0"):
        decrypt(blob, enc)
    nonce, aad = enc._nonce_aad(header, 0, True, CTX)
    assert decrypt(header + aead.encrypt(nonce, b"short tail", aad), enc) == b"short tail"
    assert struct.calcsize("!8sI16s8s") == HEADER_BYTES


# --------------------------------------------------------------------------- bound to file and backup

BACKUP_A, BACKUP_B = "20240101T020000Z", "20240102T020000Z"


def _ctx(backup_id: str, path: str, data: bytes) -> str:
    return file_context("postgres", "ai_platform", backup_id, path, hashlib.sha256(data).hexdigest())


def test_a_ciphertext_swapped_between_two_files_of_a_backup_is_refused_and_named():
    """Both files of one backup, same size: the stored copies swapped (and offsite.json
    rewritten to match) must not decrypt under the other's name."""
    toc, data = os.urandom(2 * CHUNK + 9), os.urandom(2 * CHUNK + 9)
    ctx_toc, ctx_data = _ctx(BACKUP_A, "toc.dat", toc), _ctx(BACKUP_A, "3001.dat.gz", data)
    stored_toc, stored_data = encrypt(toc, context=ctx_toc), encrypt(data, context=ctx_data)
    assert len(stored_toc) == len(stored_data)
    with pytest.raises(DecryptionError, match="postgres/ai_platform/20240101T020000Z/toc.dat: .*another file"):
        decrypt(stored_data, context=ctx_toc)
    with pytest.raises(DecryptionError, match="3001.dat.gz"):
        decrypt(stored_toc, context=ctx_data)
    assert decrypt(stored_toc, context=ctx_toc) == toc


def test_a_ciphertext_moved_to_another_backup_with_the_same_path_is_refused():
    """Same path, same bytes, another backup: the backup id is part of what decrypts it."""
    data = os.urandom(CHUNK + 1)
    moved = encrypt(data, context=_ctx(BACKUP_A, "toc.dat", data))
    with pytest.raises(DecryptionError, match=f"{BACKUP_B}/toc.dat: .*another file or backup"):
        decrypt(moved, context=_ctx(BACKUP_B, "toc.dat", data))
    wal = file_context("postgres_wal", None, "7000000000000000001", "000000010000000000000002", "ab" * 32)
    with pytest.raises(DecryptionError, match="postgres_wal/7000000000000000001/000000010000000000000002"):
        decrypt(encrypt(b"x", context=CTX), context=wal)


def test_the_records_are_bound_to_the_context_not_only_the_salt():
    """White-box: a writer with the right salt but another file's associated data (what a
    v1-style file would be) does not decrypt as v2; the context is in every record's AD."""
    from dbops.offsite.crypto import _HEADER, MAGIC

    enc = Encryption(KEY, CHUNK)
    salt = enc._salt(CTX)
    header = _HEADER.pack(MAGIC, CHUNK, salt, bytes.fromhex(enc.key_id))
    aead = enc._aead(salt)
    for wrong in ("another context", None):
        nonce, aad = enc._nonce_aad(header, 0, True, wrong)
        with pytest.raises(DecryptionError, match="record 0 failed authentication"):
            decrypt(header + aead.encrypt(nonce, b"rows", aad), enc)


def test_decryption_needs_the_context():
    enc = Encryption(KEY, CHUNK)
    with pytest.raises(TypeError):
        enc.decrypt_stream(io.BytesIO(encrypt(b"x")), io.BytesIO())  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="context"):
        enc.decrypt_stream(io.BytesIO(encrypt(b"x")), io.BytesIO(), "")


def _v1_encrypt(data: bytes, key: bytes, chunk: int, context: str) -> bytes:
    """The documented v1 format, written independently of the module (copies made before v2)."""
    import hmac
    import struct

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    salt = hmac.new(key, b"salt\0" + context.encode(), hashlib.sha256).digest()[:16]
    key_id = hmac.new(key, b"dbops-offsite key id", hashlib.sha256).digest()[:8]
    header = b"DBOPSAE1" + struct.pack("!I", chunk) + salt + key_id
    aead = AESGCM(HKDF(hashes.SHA256(), 32, salt, b"dbops-offsite aes-256-gcm-chunked-v1").derive(key))
    out, index = [header], 0
    while True:
        part = data[index * chunk : (index + 1) * chunk]
        final = len(part) < chunk
        out.append(aead.encrypt(b"\0" * 4 + struct.pack("!Q", index), part, header + struct.pack("!QB", index, final)))
        if final:
            return b"".join(out)
        index += 1


def test_v1_copies_still_decrypt_and_new_files_are_v2():
    data = bytes(range(256)) * 20
    v1 = _v1_encrypt(data, KEY, CHUNK, CTX)
    # the bytes the v1 writer of earlier releases produced for this input (recorded then)
    assert hashlib.sha256(v1).hexdigest() == "f7810bd365956fb57e884b5a3e3f6a77b7ec8f02a86e6588afab0ae035570f88"
    assert decrypt(v1) == data
    assert encrypt(data)[:8] == b"DBOPSAE2" and len(encrypt(data)) == len(v1)
    with pytest.raises(DecryptionError, match="another file or backup"):  # v1 moved: its salt tells
        decrypt(v1, context=_ctx(BACKUP_B, "dump.rdb", data))
    damaged = v1[:HEADER_BYTES] + bytes([v1[HEADER_BYTES] ^ 1]) + v1[HEADER_BYTES + 1 :]
    with pytest.raises(DecryptionError, match="record 0"):
        decrypt(damaged)
    enc = Encryption(KEY, CHUNK)
    with pytest.raises(DecryptionError, match="the file is aes-256-gcm-chunked-v2, its envelope says .*-v1"):
        enc.decrypt_stream(io.BytesIO(encrypt(data)), io.BytesIO(), CTX, scheme="aes-256-gcm-chunked-v1")
    assert enc.decrypt_stream(io.BytesIO(v1), io.BytesIO(), CTX, scheme="aes-256-gcm-chunked-v1")[0] == len(data)


def test_the_manifest_mac_depends_on_key_and_every_byte():
    enc = Encryption(KEY, CHUNK)
    manifest = b'{"files": [{"path": "toc.dat"}]}\n'
    mac = enc.manifest_mac(manifest)
    assert len(mac) == 64 and int(mac, 16) >= 0 and mac == enc.manifest_mac(manifest)
    assert mac != enc.manifest_mac(manifest[:-1]) and mac != Encryption(bytes(32), CHUNK).manifest_mac(manifest)
    assert mac != hashlib.sha256(manifest).hexdigest()  # keyed: a rewritten manifest cannot be re-sealed
    with pytest.raises(TypeError):
        enc.manifest_mac("text")  # type: ignore[arg-type]
