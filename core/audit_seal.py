"""Signatures on the audit chain (Ed25519) and the exported chain head.

The hash chain (``core.audit``) shows that stored events were not changed *unless the whole
tail was recomputed*: it is unkeyed, so anyone who can write the ledger can rewrite a row and
re-hash every later one. Each entry is therefore also signed: ``sig = Ed25519(key,
"pacsai-audit-v1|<key_id>|<seq>|<hash>")``. The hash already covers the event's canonical JSON
and the previous hash, so one signature per entry authenticates its content, its place and
everything before it. Ed25519 rather than an HMAC: a verifier (``pacsai audit verify`` on
another machine, an auditor's laptop) needs only the public key, which cannot sign.

``key_id`` (the first 16 hex digits of SHA-256 over the raw public key) is stored in each
entry, so a key can be rotated: entries keep verifying with the retired key's public half.

Deleting the newest entries leaves a shorter chain that still verifies. The newest signed
entry (the *chain head*) is therefore exported out of the ledger's reach (a file elsewhere,
syslog); ``verify_chain`` given that head reports a chain that ends before it.

Pure: keys come in as bytes or text, nothing here reads files or the clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["AuditKeys", "AuditSigner", "ChainHead", "key_id_of", "seal_message"]


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public: Ed25519PublicKey) -> str:
    """The id stored with each entry: the first 16 hex digits of SHA-256(raw public key)."""
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def seal_message(key_id: str, seq: int, digest: str) -> bytes:
    """What an entry's signature covers (its hash covers the event and the chain before it)."""
    return f"pacsai-audit-v1|{key_id}|{seq}|{digest}".encode()


class AuditSigner:
    """The private key that signs new entries (held by the processes that append)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = key.public_key()
        self.key_id = key_id_of(self.public)

    @classmethod
    def generate(cls) -> AuditSigner:
        """A fresh key (tests and the demo; production loads one)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_text(cls, text: str | bytes) -> AuditSigner:
        """Load a PKCS#8 PEM private key, or base64 of the raw 32-byte seed.

        Raises:
            ValueError: Neither, or not an Ed25519 key.
        """
        data = text.encode() if isinstance(text, str) else text
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"audit key: got {type(key).__name__}; expected an Ed25519 private key")
            return cls(key)
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except binascii.Error:
            raise ValueError("audit key: got neither PEM nor base64; expected an Ed25519 private key") from None
        if len(seed) != 32:
            raise ValueError(f"audit key: got {len(seed)} bytes; expected the 32-byte Ed25519 seed")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (for a key file readable by its owner only)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_text(self) -> str:
        """The public key as base64 of its 32 raw bytes (what ``trusted_public_keys`` lists)."""
        return base64.b64encode(_raw_public(self.public)).decode()

    def sign(self, seq: int, digest: str) -> str:
        """The base64 signature of the entry ``seq`` whose chain hash is ``digest``."""
        return base64.b64encode(self._key.sign(seal_message(self.key_id, seq, digest))).decode()


class AuditKeys:
    """Public keys that entries may be signed with, by key id (the verifier's side)."""

    def __init__(self, publics: Iterable[Ed25519PublicKey] = ()) -> None:
        self._by_id = {key_id_of(p): p for p in publics}

    @classmethod
    def from_text(cls, texts: Iterable[str]) -> AuditKeys:
        """Keys as base64 of the 32 raw bytes, or PEM (SubjectPublicKeyInfo).

        Raises:
            ValueError: A key that is neither, or not Ed25519.
        """
        publics: list[Ed25519PublicKey] = []
        for text in texts:
            if "-----BEGIN" in text:
                key = serialization.load_pem_public_key(text.encode())
                if not isinstance(key, Ed25519PublicKey):
                    raise ValueError(f"audit public key: got {type(key).__name__}; expected Ed25519")
                publics.append(key)
                continue
            raw = base64.b64decode(text.strip())
            if len(raw) != 32:
                raise ValueError(f"audit public key: got {len(raw)} bytes; expected 32 (base64 of the raw key)")
            publics.append(Ed25519PublicKey.from_public_bytes(raw))
        return cls(publics)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    @property
    def ids(self) -> tuple[str, ...]:
        """The trusted key ids."""
        return tuple(sorted(self._by_id))

    def with_key(self, public: Ed25519PublicKey) -> AuditKeys:
        """These keys and one more (the current signer's)."""
        return AuditKeys([*self._by_id.values(), public])

    def problem(self, key_id: str | None, seq: int, digest: str, sig: str | None) -> str | None:
        """Why the entry's signature does not verify, or ``None`` when it does."""
        if not key_id or not sig:
            return "entry is not signed"
        public = self._by_id.get(key_id)
        if public is None:
            return f"signed with key {key_id}, which is not a trusted key"
        try:
            public.verify(base64.b64decode(sig), seal_message(key_id, seq, digest))
        except (InvalidSignature, binascii.Error, ValueError):
            return f"signature does not verify with key {key_id}"
        return None


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest signed entry, exported out of the ledger so truncation shows.

    Attributes:
        seq: Its sequence number.
        hash: Its chain hash.
        key_id: The key that signed it.
        sig: Its signature (so a forged head file is refused).
        legacy_until: The last entry from before signing started (0: none).
        exported_at: When it was exported (epoch seconds).
    """

    seq: int
    hash: str
    key_id: str
    sig: str
    legacy_until: int
    exported_at: float

    def to_json(self) -> str:
        """One line of JSON (the head file and the syslog message)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ChainHead:
        """Parse ``to_json``'s output.

        Raises:
            ValueError: Not a chain head.
        """
        try:
            raw = json.loads(text)
            return cls(
                int(raw["seq"]),
                str(raw["hash"]),
                str(raw["key_id"]),
                str(raw["sig"]),
                int(raw["legacy_until"]),
                float(raw["exported_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"chain head: got {text[:80]!r}; expected the JSON of an exported head ({exc})") from None
