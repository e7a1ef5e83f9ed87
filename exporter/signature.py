"""RealtimeKit's webhook signatures: RSA PKCS#1 v1.5 with SHA-256 over the raw body.

The header (``rtk-signature``) holds the signature in Base64; the public key is one PEM
(SPKI) key, served in a JSON document (``data.publicKey``) or kept in a file. The
RSA arithmetic is the ``cryptography`` package's; this module only decodes what comes in,
strictly, and says whether a body is signed by the key.
"""

from __future__ import annotations

import binascii
import json
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MIN_KEY_BITS: Final = 2048
MAX_KEY_BITS: Final = 8192  # a larger key costs every verification more for nothing
MAX_EXPONENT: Final = 2**32 - 1  # RSA keys use 65537 (or 3); more is a trap, not a key
MAX_SIGNATURE_TEXT: Final = 4 * (MAX_KEY_BITS // 8 + 2) // 3 + 4  # Base64 of the largest
_ARMOUR: Final = b"-----BEGIN PUBLIC KEY-----"

PublicKey = rsa.RSAPublicKey


class KeyError_(ValueError):  # the builtin KeyError means something else
    """The public key, or the document carrying it, is not usable; the text says why."""


def load_key(pem: bytes | str) -> PublicKey:
    """An RSA public key from PEM text. Literal ``\\n`` pairs (a key kept in an
    environment variable or a JSON string escaped twice) read as line breaks."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    data = data.strip().replace(b"\\n", b"\n")
    if not data.startswith(_ARMOUR):
        raise KeyError_("not a PEM public key (no BEGIN PUBLIC KEY line)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyError_("the PEM public key does not decode") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyError_("the public key is not an RSA key")
    if not MIN_KEY_BITS <= key.key_size <= MAX_KEY_BITS:
        raise KeyError_(
            f"the RSA key has {key.key_size} bits; from {MIN_KEY_BITS} to {MAX_KEY_BITS} are used"
        )
    if key.public_numbers().e > MAX_EXPONENT:
        # Verifying costs a squaring per bit of it: a huge one would slow every check.
        raise KeyError_("the RSA key's public exponent is implausibly large")
    return key


def key_from_document(body: bytes) -> PublicKey:
    """The key in the well-known document: ``{"success": true, "data": {"publicKey": PEM}}``."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise KeyError_("the key document is not JSON") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    pem = data.get("publicKey") if isinstance(data, dict) else None
    if not isinstance(pem, str):
        raise KeyError_("the key document has no data.publicKey string")
    if isinstance(doc, dict) and doc.get("success") is False:
        raise KeyError_("the key document says success: false")
    return load_key(pem)


def decode_signature(header: str | None) -> bytes | None:
    """The signature bytes of a header value, or None if it is missing or not strict
    Base64 (of a plausible size)."""
    if header is None:
        return None
    text = header.strip()
    if not text or len(text) > MAX_SIGNATURE_TEXT or not text.isascii():
        return None
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def verify(key: PublicKey, signature: bytes, body: bytes) -> bool:
    """Whether ``signature`` is ``key``'s PKCS#1 v1.5 SHA-256 signature of ``body``."""
    if len(signature) != (key.key_size + 7) // 8:
        return False
    try:
        key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def fingerprint(key: PublicKey) -> str:
    """A short, stable name of the key (SHA-256 of its DER, first 16 hex digits): for
    telling keys apart in logs; a public key is no secret."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()[:16]
