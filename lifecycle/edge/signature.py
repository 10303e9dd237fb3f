"""Ed25519 signatures over a bundle's manifest.json (manifest.sig): verification with trusted public keys.
lifecycle.signing writes them; `cryptography` is imported only here, and only when keys are given."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .bundle import MANIFEST, SIGNATURE, BundleError


def key_id(raw_public_key: bytes) -> str:
    """Short id of an Ed25519 public key (first 16 hex digits of the sha256 of its 32 raw bytes)."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def check_signature(manifest: bytes, signature: bytes, trusted_keys: list, source,
                    names: tuple[str, str] = (MANIFEST, SIGNATURE)) -> str:
    """Verify manifest.sig (`signature`) over the exact manifest bytes with one of `trusted_keys`
    (PEM public keys: paths or bytes); returns the key id that signed, else raises BundleError.
    `names`: what the signed document and the signature file are called, for the messages."""
    signed_name, sig_name = names
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        record = json.loads(signature)
        sig = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{source}: unreadable {sig_name} ({exc})") from None
    if record.get("algorithm") != "ed25519":
        raise BundleError(f"{source}: {sig_name} uses {record.get('algorithm')!r}; only ed25519 is accepted")
    if not trusted_keys:
        raise BundleError(f"{source}: no trusted keys given to check {sig_name} against")
    ids = []
    for key in trusted_keys:
        try:
            pem = key if isinstance(key, bytes) else Path(key).read_bytes()
        except OSError as exc:
            raise BundleError(f"{key}: cannot read the trusted key ({exc.strerror})") from None
        try:
            public = serialization.load_pem_public_key(pem)
        except ValueError:
            raise BundleError(f"{key if not isinstance(key, bytes) else 'a trusted key'}: not a PEM public key "
                              "(pass the .pub file, not the private key)") from None
        if not isinstance(public, Ed25519PublicKey):
            raise BundleError(f"{key if not isinstance(key, bytes) else 'a trusted key'}: not an Ed25519 public key")
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ids.append(key_id(raw))
        try:
            public.verify(sig, manifest)
            return ids[-1]
        except InvalidSignature:
            continue
    raise BundleError(f"{source}: bad signature: {signed_name} is not signed by a trusted key "
                      f"(signed by key {record.get('key_id')}, trusted: {', '.join(ids)}; or it was edited)")
