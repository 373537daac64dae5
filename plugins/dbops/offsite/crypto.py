"""Client-side encryption of offsite copies: AES-256-GCM in chunks, streaming, authenticated,
each record bound to the file and backup it belongs to.

Format of an encrypted file (scheme ``aes-256-gcm-chunked-v2``, written for every new file)::

    header  = "DBOPSAE2" | chunk_bytes (u32, big-endian) | salt (16 bytes) | key id (8 bytes)
    records = AES-GCM(chunk) for each plaintext chunk of chunk_bytes, then one final
              record holding the remaining 0..chunk_bytes-1 bytes; each record is its
              ciphertext plus a 16-byte tag

* The context names the file: store, subject, backup id (for WAL: the archive's system
  identifier), path in the backup and the plaintext's sha256 (:func:`file_context`).
* file key = HKDF-SHA256(master key, salt, "dbops-offsite aes-256-gcm-chunked-v2");
  nonce of record i = 4 zero bytes | i (u64);
  associated data = header | SHA-256(context) | i (u64) | final flag (1 byte).
  A record cannot be reordered, dropped, truncated or moved to another file, and a whole
  file moved to another path or another backup (or renamed together with the catalog
  entries that describe it) fails to decrypt: the reader must name the file it expects.
  A file cut at a record boundary fails (no final record).
* The salt is HMAC-SHA256(master key, "salt" | context)[:16]: the same file encrypts to
  the same bytes every time (so an interrupted rsync resumes and a rerun transfers nothing
  new), and a different plaintext always gets a different file key (no nonce reuse). The
  reader recomputes it from the context it expects and names a mismatch before decrypting.
* Nothing is held in memory beyond one chunk. Plaintext sizes and hashes stay visible in
  the manifest (it is the offsite catalog); the data itself does not.
* The manifest of an encrypted copy is authenticated by :meth:`Encryption.manifest_mac`
  (HMAC-SHA256 under a key derived from the master key by HKDF, hex) kept in
  ``offsite.json``: a manifest changed offsite (other sizes or sha256 to match other
  files) is caught before anything is restored from it.

``aes-256-gcm-chunked-v1`` (magic "DBOPSAE1", associated data without the context: the
same layout otherwise) is still read, for copies made before; its salt is checked against
the expected context the same way, so a v1 file moved elsewhere is refused too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SCHEME = "aes-256-gcm-chunked-v2"
MAGIC = b"DBOPSAE2"
SCHEME_V1 = "aes-256-gcm-chunked-v1"  # read only: copies made before v2
MAGIC_V1 = b"DBOPSAE1"
_HEADER = struct.Struct("!8sI16s8s")
HEADER_BYTES = _HEADER.size  # 36
TAG_BYTES = 16
KEY_BYTES = 32
MIN_CHUNK = 4096
MAX_CHUNK = 64 * 1024 * 1024
_HKDF_INFO = {MAGIC: b"dbops-offsite " + SCHEME.encode(), MAGIC_V1: b"dbops-offsite " + SCHEME_V1.encode()}
_MAC_INFO = b"dbops-offsite manifest mac v1"


class Readable(Protocol):
    """What decryption reads from: a file, or a stream that hashes what passes (S3 bodies)."""

    def read(self, n: int = -1, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class DecryptionError(ValueError):
    """The data is not an intact file encrypted with this key (tampered, truncated, other key)."""


def parse_key(text: str) -> bytes:
    """A 256-bit key given as 64 hex digits or base64 (standard or URL-safe)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the offsite encryption key is empty")
    raw = text.strip()
    if len(raw) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(raw)
        except ValueError:
            pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise ValueError(
        "the offsite encryption key must be 32 random bytes, as 64 hex digits or base64 "
        "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
    )


def new_key_text() -> str:
    return os.urandom(KEY_BYTES).hex()


class Encryption:
    """A master key and a chunk size; encrypts and decrypts files in the format above."""

    def __init__(self, key: bytes, chunk_bytes: int = 1024 * 1024) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError("the encryption key must be 32 bytes")
        if not isinstance(chunk_bytes, int) or not MIN_CHUNK <= chunk_bytes <= MAX_CHUNK:
            raise ValueError(f"chunk_bytes must be between {MIN_CHUNK} and {MAX_CHUNK}")
        self._key = key
        self.chunk_bytes = chunk_bytes
        self.key_id = hmac.new(key, b"dbops-offsite key id", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:  # never the key
        return f"Encryption({SCHEME}, key_id={self.key_id}, chunk_bytes={self.chunk_bytes})"

    def describe(self) -> dict:
        """What the envelope records (no secret): scheme, key id, chunk size."""
        return {"scheme": SCHEME, "key_id": self.key_id, "chunk_bytes": self.chunk_bytes}

    def manifest_mac(self, manifest_bytes: bytes) -> str:
        """HMAC-SHA256 (hex) of a manifest's exact bytes, under a key derived from the master
        key for this purpose only (never the file keys)."""
        if not isinstance(manifest_bytes, bytes):
            raise TypeError("manifest_mac takes the manifest's bytes")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_MAC_INFO)
        return hmac.new(hkdf.derive(self._key), manifest_bytes, hashlib.sha256).hexdigest()

    def stored_size(self, plain_bytes: int) -> int:
        full, rest = divmod(plain_bytes, self.chunk_bytes)
        return HEADER_BYTES + full * (self.chunk_bytes + TAG_BYTES) + rest + TAG_BYTES

    # ---------------------------------------------------------------- internals

    def _salt(self, context: str) -> bytes:
        return hmac.new(self._key, b"salt\0" + context.encode("utf-8"), hashlib.sha256).digest()[:16]

    def _aead(self, salt: bytes, magic: bytes = MAGIC) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_HKDF_INFO[magic])
        return AESGCM(hkdf.derive(self._key))

    @staticmethod
    def _nonce_aad(header: bytes, index: int, final: bool, context: str | None) -> tuple[bytes, bytes]:
        """Nonce and associated data of record ``index``; ``context`` None: the v1 form."""
        bound = b"" if context is None else hashlib.sha256(context.encode("utf-8")).digest()
        return b"\0\0\0\0" + struct.pack("!Q", index), header + bound + struct.pack("!QB", index, 1 if final else 0)

    # ---------------------------------------------------------------- encrypt

    def encrypt_chunks(self, src: BinaryIO, context: str) -> Iterator[bytes]:
        """The header, then one record per chunk of ``src`` (streaming)."""
        _check_context(context)
        salt = self._salt(context)
        header = _HEADER.pack(MAGIC, self.chunk_bytes, salt, bytes.fromhex(self.key_id))
        aead = self._aead(salt)
        yield header
        index = 0
        while True:
            chunk = _read_exactly(src, self.chunk_bytes)
            final = len(chunk) < self.chunk_bytes
            nonce, aad = self._nonce_aad(header, index, final, context)
            yield aead.encrypt(nonce, chunk, aad)
            if final:
                return
            index += 1

    def encrypt_file(self, src: Path, dst: Path, context: str) -> tuple[int, str]:
        """Encrypt ``src`` into a new 0600 file ``dst``; returns (stored bytes, stored sha256)."""
        digest, size = hashlib.sha256(), 0
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            for block in self.encrypt_chunks(fin, context):
                fout.write(block)
                digest.update(block)
                size += len(block)
            fout.flush()
            os.fsync(fout.fileno())
        return size, digest.hexdigest()

    def reader(self, src: BinaryIO, context: str) -> EncryptingReader:
        """A read-only, non-seekable file object yielding the encrypted bytes (for S3 uploads)."""
        return EncryptingReader(self.encrypt_chunks(src, context))

    # ---------------------------------------------------------------- decrypt

    def decrypt_stream(
        self, src: Readable, dst: Writable, context: str, *, scheme: str | None = None
    ) -> tuple[int, str]:
        """Decrypt ``src``, the stored copy of the file ``context`` names (the context its
        encryption used), into ``dst``; returns (plaintext bytes, plaintext sha256).
        ``scheme``: the one the copy's envelope records, when known (a v2 file presented
        as v1, whose manifest carries no mac, is refused).

        Raises :class:`DecryptionError` naming the file before writing anything
        unauthenticated: each record is written only after its tag checked. A caller
        writing into a staging file must discard it on error (the restore does).
        """
        _check_context(context)
        name = context_label(context)
        header = _read_exactly(src, HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            raise DecryptionError(f"{name}: too short to be an encrypted dbops file")
        magic, chunk_bytes, salt, key_id = _HEADER.unpack(header)
        if magic not in _HKDF_INFO:
            raise DecryptionError(f"{name}: not an encrypted dbops file (bad magic)")
        found = SCHEME if magic == MAGIC else SCHEME_V1
        if scheme is not None and scheme != found:
            raise DecryptionError(f"{name}: the file is {found}, its envelope says {scheme}")
        if key_id.hex() != self.key_id:
            raise DecryptionError(f"{name}: encrypted with key id {key_id.hex()}, this key's id is {self.key_id}")
        if not MIN_CHUNK <= chunk_bytes <= MAX_CHUNK:
            raise DecryptionError(f"{name}: implausible chunk size {chunk_bytes}")
        if not hmac.compare_digest(salt, self._salt(context)):
            raise DecryptionError(
                f"{name}: this ciphertext was encrypted for another file or backup "
                "(moved, swapped or renamed offsite); refusing it"
            )
        aead = self._aead(salt, magic)
        bound = context if magic == MAGIC else None
        digest, size, index = hashlib.sha256(), 0, 0
        record_bytes = chunk_bytes + TAG_BYTES
        while True:
            record = _read_exactly(src, record_bytes)
            final = len(record) < record_bytes
            if final and len(record) < TAG_BYTES:
                raise DecryptionError(f"{name}: truncated: the final record is missing")
            nonce, aad = self._nonce_aad(header, index, final, bound)
            try:
                plain = aead.decrypt(nonce, record, aad)
            except InvalidTag:
                raise DecryptionError(
                    f"{name}: record {index} failed authentication (tampered, truncated, or not this file's)"
                ) from None
            dst.write(plain)
            digest.update(plain)
            size += len(plain)
            if final:
                if src.read(1):
                    raise DecryptionError(f"{name}: data after the final record")
                return size, digest.hexdigest()
            index += 1

    def decrypt_file(self, src: Path, dst: Path, context: str, *, scheme: str | None = None) -> tuple[int, str]:
        """:meth:`decrypt_stream` from ``src`` into a new 0600 file ``dst`` (removed on failure)."""
        _check_context(context)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                result = self.decrypt_stream(fin, fout, context, scheme=scheme)
                fout.flush()
                os.fsync(fout.fileno())
            return result
        except BaseException:
            dst.unlink(missing_ok=True)
            raise


def file_context(store: str, subject: str | None, backup_id: str, path: str, plain_sha256: str) -> str:
    """What a file's salt and records are bound to (see the module docstring)."""
    return "\0".join((store, subject or "", backup_id, path, plain_sha256))


def context_label(context: str) -> str:
    """``store/[subject/]backup_id/path`` of a :func:`file_context`, for messages."""
    parts = context.split("\0")
    if len(parts) == 5:
        return "/".join(p for p in parts[:4] if p)
    return repr(context)


def _check_context(context: str) -> None:
    if not isinstance(context, str) or not context:
        raise ValueError("encryption and decryption need the file's context (file_context(...))")


class EncryptingReader:
    """``read(n)`` over an iterator of byte blocks; counts and hashes what it hands out."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._buffer = bytearray()
        self._done = False
        self._digest = hashlib.sha256()
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n is None or n < 0 or len(self._buffer) < n):
            try:
                self._buffer += next(self._blocks)
            except StopIteration:
                self._done = True
        if n is None or n < 0:
            n = len(self._buffer)
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._digest.update(out)
        self.bytes += len(out)
        return out

    @property
    def sha256(self) -> str:
        """The sha256 of everything read so far (of the whole file once read to the end)."""
        return self._digest.hexdigest()

    @property
    def finished(self) -> bool:
        return self._done and not self._buffer


def _read_exactly(src: Readable, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of ``src`` (short reads are retried)."""
    parts, got = [], 0
    while got < n:
        block = src.read(n - got)
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)
