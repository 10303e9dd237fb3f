"""`lifecycle serve [--tune]`: check the model, then `bentoml serve` in the foreground."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lifecycle.serving.server import foreground, service_command
from lifecycle.serving.settings import load_settings, write_config
from lifecycle.serving.source import checked, resolve
from lifecycle.serving.tuning import tune_settings


def serve(source, host: str = "127.0.0.1", port: int = 3000, tune: bool = False,
          trusted_keys: list | None = None, verdict: dict | None = None) -> int:
    """`lifecycle serve`: check that the model opens, then run `bentoml serve` in the foreground until it
    stops; returns its exit status. A refused bundle ends here, before any server starts: BentoML would
    restart a worker that cannot open its model forever. With `trusted_keys` (public key PEM files) every
    worker also verifies the bundle's signature when it opens the model, not only this check. `verdict`: the
    run's verdict record (lifecycle.verdict.require), shown by the service's /metadata."""
    served = resolve(source)
    served.verdict = verdict or served.verdict
    if trusted_keys:
        served.trusted_keys = [Path(k).read_text() for k in trusted_keys]
    with checked(served):
        settings = tune_settings(served) if tune else load_settings(served)
        config = write_config(served, settings)
        try:
            where = f"tuned, from {served.tuned_path}" if served.tuned_path.is_file() else "defaults"
            print(f"serving {served.name} (version {served.version[:12]}) on http://{host}:{port}; "
                  f"settings: {where}", flush=True)
            with tempfile.TemporaryDirectory(prefix="lifecycle-bentoml-") as home:  # see service_command
                return foreground(*service_command(config, host, port, Path(home)))
        finally:
            config.unlink(missing_ok=True)

