"""Signed bundles: an Ed25519 signature over a bundle's manifest.json, checked against trusted keys.

    python -m lifecycle.signing release.key            # writes release.key (private) and release.key.pub
    lifecycle bundle runs/my-pipeline -o model.zip --sign release.key
    lifecycle serve model.zip --trusted-key release.key.pub
    Predictor.open("model.zip", trusted_keys=["release.key.pub"])

The manifest lists the sha256 of every file of the bundle and carries the metrics and gate results, so
one signature over its exact bytes covers the weights, the tokenizer, the labels and the numbers a
release decision was made on: re-hashing an edited model into the manifest, or editing a metric,
breaks the signature. The signature travels in the zip as `manifest.sig` (JSON: algorithm, key id,
base64 signature); the manifest cannot list it, and lifecycle.edge accepts exactly that one unlisted name.

Keys are PEM files as OpenSSL writes them (`openssl genpkey -algorithm ed25519 -out release.key`,
`openssl pkey -in release.key -pubout -out release.key.pub`), handled with `cryptography`. Why not the
OpenSSF `model-signing` package: it signs a model *directory* (its own manifest of file hashes, as an
in-toto/sigstore bundle) and pulls in sigstore, tuf, in-toto and a dozen more packages; our bundle is a
zip that already carries a file-hash manifest, the device runtime (lifecycle.edge) must stay small, and
the one thing missing was a signature over that manifest, which `cryptography` gives in a few lines.
Verification lives in lifecycle.edge (`check_signature`) so a device needs no other part of lifecycle.

A run directory is signed the same way (`lifecycle run --sign KEY`, or `lifecycle sign RUN KEY` after
the fact; `lifecycle gate --trusted-key PUB` checks it): `run.sig` holds the sha256 of pipeline.json
and of each stage's manifest.json and a signature over those digests. pipeline.json fixes the config
and data fingerprints, each manifest the metrics and the hash of every file of its artifact (which
`gate` checks anyway), so the signature covers every byte and number a verdict is made from.

A release is signed the same way (`lifecycle promote --sign KEY`; `lifecycle gate --against ALIAS
--trusted-key PUB` checks it): `entry.sig` beside the registry entry's entry.json, a signature over its
exact bytes. entry.json holds the release's metrics, its verdict and the sha256 of every file of the
version (the test predictions candidates are paired with, the bundle), so metrics and file hashes
rewritten together break the signature.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

from lifecycle import LifecycleError
from lifecycle.edge import SIGNATURE, key_id

ALGORITHM = "ed25519"
RUN_SIGNATURE, RUN_RECORD = "run.sig", "pipeline.json"
RELEASE_SIGNATURE, RELEASE_RECORD = "entry.sig", "entry.json"  # in a registry version (lifecycle.release)


def load_private_key(path: str | Path):
    """An Ed25519 private key from a PEM file (unencrypted PKCS#8, as `openssl genpkey` writes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise LifecycleError(f"{path}: not a readable unencrypted PEM private key ({exc}); create one with "
                             "`python -m lifecycle.signing KEYFILE` or `openssl genpkey -algorithm ed25519`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LifecycleError(f"{path}: a {type(key).__name__}; bundles are signed with Ed25519 keys")
    return key


def public_pem(private_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def signature_record(data: bytes, private_key, signed: str = "manifest.json") -> dict:
    """The manifest.sig content for `data` (the exact bytes of manifest.json, or what `signed` names)."""
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"format": "lifecycle-signature/1", "algorithm": ALGORITHM, "key_id": key_id(raw), "signed": signed,
            "signature": base64.b64encode(private_key.sign(data)).decode()}


def signature_bytes(data: bytes, key_path: str | Path) -> bytes:
    """manifest.sig for `data`, signed with the private key at `key_path`."""
    return (json.dumps(signature_record(data, load_private_key(key_path)), indent=2, sort_keys=True) + "\n").encode()


def generate_key(path: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 key: `path` (private, mode 0600) and `path`.pub (public). Refuses to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    pub = path.with_name(path.name + ".pub")
    for p in (path, pub):
        if p.exists():
            raise LifecycleError(f"{p} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub.write_bytes(public_pem(key))
    return path, pub


def require_signed(source: str | Path, trusted_keys: list) -> None:
    """Refuse `source` (a bundle zip or directory, or anything else `lifecycle serve` accepts) unless
    it is a bundle whose files match its manifest and whose manifest.sig verifies with one of
    `trusted_keys`; raises LifecycleError with one line."""
    import zipfile

    from lifecycle.edge import BundleError, Predictor

    source = Path(source)
    if not (source.is_file() and zipfile.is_zipfile(source)) and not (source / SIGNATURE).is_file():
        raise LifecycleError(f"{source}: unsigned (no {SIGNATURE}); a trusted key is configured, so only bundles "
                             "written with `lifecycle bundle --sign` are accepted")
    try:
        Predictor.open(source, trusted_keys=list(trusted_keys))  # hashes, then the signature, then a session
    except BundleError as exc:
        raise LifecycleError(str(exc)) from None


def run_digests(run_dir: Path) -> dict[str, str]:
    """sha256 of the run's pipeline.json and of every artifact's manifest.json (not of `.tmp` leftovers)."""
    from lifecycle.artifact import sha256_file

    files = [run_dir / RUN_RECORD, *(m for m in run_dir.glob("*/manifest.json") if not m.parent.name.endswith(".tmp"))]
    return {f.relative_to(run_dir).as_posix(): sha256_file(f) for f in sorted(files) if f.is_file()}


def _canonical(files: dict[str, str]) -> bytes:
    return json.dumps({"format": "lifecycle-run-digests/1", "files": files}, sort_keys=True,
                      separators=(",", ":")).encode()


def sign_run(run_dir: str | Path, key_path: str | Path) -> Path:
    """Write `run_dir`/run.sig: a signature over the digests of a finished run's files (see the module doc)."""
    run_dir = Path(run_dir)
    try:
        state = json.loads((run_dir / RUN_RECORD).read_text()).get("state")
    except (OSError, ValueError) as exc:
        raise LifecycleError(f"{run_dir}: not a readable run directory ({exc})") from None
    if state != "finished":
        raise LifecycleError(f"{run_dir}: the last `lifecycle run` did not finish (state: {state}); only a finished "
                             "run can be signed")
    files = run_digests(run_dir)
    record = {**signature_record(_canonical(files), load_private_key(key_path), signed="run digests"), "files": files}
    tmp = run_dir / (RUN_SIGNATURE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, run_dir / RUN_SIGNATURE)
    return run_dir / RUN_SIGNATURE


def run_signature_problem(run_dir: str | Path, trusted_keys: list) -> str | None:
    """Why the run directory is not signed by one of `trusted_keys` as it is now (None: it is)."""
    from lifecycle.edge import BundleError, check_signature

    run_dir = Path(run_dir)
    sig = run_dir / RUN_SIGNATURE
    if not sig.is_file():
        return f"unsigned (no {RUN_SIGNATURE}); a trusted key is given, so only runs signed with `--sign` pass"
    try:
        record = sig.read_bytes()
        signed = json.loads(record)["files"]
        check_signature(_canonical(signed), record, trusted_keys, run_dir, names=("run digests", RUN_SIGNATURE))
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable {RUN_SIGNATURE} ({exc})"
    except BundleError as exc:
        return str(exc)
    now = run_digests(run_dir)
    changed = sorted(n for n in signed.keys() | now.keys() if signed.get(n) != now.get(n))
    if changed:
        return (f"changed since it was signed: {', '.join(changed)} (edited, added or removed); sign the run again "
                "only if you produced it")
    return None


def sign_release(entry_dir: str | Path, key_path: str | Path) -> Path:
    """Write `entry_dir`/entry.sig: a signature over the exact bytes of the registry entry's entry.json."""
    entry_dir = Path(entry_dir)
    sig = signature_bytes((entry_dir / RELEASE_RECORD).read_bytes(), key_path)
    tmp = entry_dir / (RELEASE_SIGNATURE + ".tmp")
    tmp.write_bytes(sig)
    os.replace(tmp, entry_dir / RELEASE_SIGNATURE)
    return entry_dir / RELEASE_SIGNATURE


def release_signature_problem(entry_dir: str | Path, trusted_keys: list) -> str | None:
    """Why the registry entry in `entry_dir` is not signed by one of `trusted_keys` as it is now (None: it is).
    The entry's files are checked against entry.json by lifecycle.release.Entry.verify; this proves entry.json."""
    from lifecycle.edge import BundleError, check_signature

    entry_dir = Path(entry_dir)
    sig = entry_dir / RELEASE_SIGNATURE
    if not sig.is_file():
        return (f"{entry_dir}: unsigned (no {RELEASE_SIGNATURE}); a trusted key is given, so only releases promoted "
                "with `--sign` pass")
    try:
        check_signature((entry_dir / RELEASE_RECORD).read_bytes(), sig.read_bytes(), trusted_keys, entry_dir,
                        names=(RELEASE_RECORD, RELEASE_SIGNATURE))
    except BundleError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m lifecycle.signing KEYFILE   (writes KEYFILE and KEYFILE.pub)", file=sys.stderr)
        return 2
    try:
        private, public = generate_key(args[0])
    except LifecycleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {private} (private: keep it secret) and {public} (give this to `--trusted-key`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
