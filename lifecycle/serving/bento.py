"""`lifecycle build`: the served model into BentoML's model store (version = artifact hash), then a
Bento holding serving/service.py (with its sibling modules), the lifecycle/edge/ package and the settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from lifecycle import LifecycleError
from lifecycle.artifact import write_json
from lifecycle.serving.server import bentoml_command
from lifecycle.serving.settings import PACKAGE_DIR, SERVICE_DIR, STORED_SUBDIR, load_settings
from lifecycle.serving.source import resolve


def build(source, verdict: dict | None = None) -> str:
    """`lifecycle build`: the model into BentoML's model store (version = artifact hash), then a Bento.
    `verdict`: the run's verdict record (lifecycle.verdict.require), in the Bento's serving.json."""
    import bentoml
    from bentoml.exceptions import NotFound

    served = resolve(source)
    served.verdict = verdict or served.verdict
    settings = load_settings(served)
    name = re.sub(r"[^a-z0-9_.-]+", "-", served.name.lower()).strip("-.")[:63] or "lifecycle-model"
    tag = f"{name}:{served.version[:32]}"  # BentoML versions are at most 63 characters: a 128-bit prefix
    try:
        bentoml.models.get(tag)
    except NotFound:
        with bentoml.models.create(tag, labels={"source": "lifecycle"},
                                   metadata={"artifact_hash": served.version, "gates": json.dumps(served.gates)}) as model:
            # In a subdirectory: BentoML adds model.yaml beside it, and lifecycle.edge refuses a
            # directory holding files its manifest does not list.
            _copy_model(served.path, Path(model.path) / STORED_SUBDIR)
    ctx = Path(tempfile.mkdtemp(prefix="lifecycle-bento-"))
    try:
        for module in SERVICE_DIR.glob("*.py"):  # service.py and the modules beside it that it imports
            if module.name != "__init__.py":
                shutil.copy2(module, ctx / module.name)
        shutil.copy2(SERVICE_DIR / "bentofile.yaml", ctx / "bentofile.yaml")
        (ctx / "lifecycle").mkdir()  # the service needs only lifecycle.edge
        shutil.copy2(PACKAGE_DIR / "__init__.py", ctx / "lifecycle" / "__init__.py")
        shutil.copytree(PACKAGE_DIR / "edge", ctx / "lifecycle" / "edge", ignore=shutil.ignore_patterns("__pycache__"))
        model_cfg = {k: v for k, v in served.service_model().items() if k != "path"} | {"tag": tag}
        write_json(ctx / "serving.json", {"model": model_cfg, "settings": settings.resolved()})
        out = subprocess.run(bentoml_command("build", ".", "--output", "tag"), cwd=ctx, capture_output=True,
                             text=True, env=dict(os.environ, BENTOML_DO_NOT_TRACK="true"))
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    found = re.search(r"__tag__:(\S+)", out.stdout)
    if out.returncode != 0 or not found:
        raise LifecycleError(f"bentoml build failed:\n{(out.stdout + out.stderr)[-3000:]}")
    return found.group(1)


def _copy_model(src: Path, dst: Path) -> None:
    predictor = None
    if src.is_file():  # a bundle zip: its members, checked as lifecycle.edge checks them
        from lifecycle.edge import Predictor

        predictor = Predictor.open(src)  # holds the extracted files until the copy is done
        src = predictor.root
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst / f.relative_to(src))
    del predictor
