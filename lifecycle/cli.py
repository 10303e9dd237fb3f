"""`lifecycle` command line. Exit codes: 0 pass, 1 error, 2 invalid config or usage, 3 a gate failed (also:
`bundle`, `promote`, `serve` or `build` refused a run that `gate` fails; lifecycle.verdict).

Imports here are light; each command imports what it needs, so `lifecycle --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lifecycle import ConfigError, GateFailed, LifecycleError

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_GATE = 0, 1, 2, 3
PAIRED = ("accuracy", "f1_macro", "f1_micro")  # lifecycle.release.PAIRED, without importing it for --help


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 on usage errors: that matches our contract
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lifecycle", description="Take a model from pre-training to a served, gated release.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def pipeline_args(sp):
        sp.add_argument("file", type=Path, help="pipeline YAML")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. stages.finetune.train.lr=1e-4 (repeatable)")

    def release_args(sp):
        sp.add_argument("--registry", metavar="DIR_OR_URI", help="the MLflow store: a directory (SQLite) or an MLflow "
                        "URI (default: $LIFECYCLE_REGISTRY, else $MLFLOW_TRACKING_URI, else ~/.lifecycle/mlflow)")
        sp.add_argument("--stage", help="the run's stage to use (default: its last with test predictions)")

    def override_arg(sp):
        sp.add_argument("--override", metavar="REASON", help="ship a run that `lifecycle gate` fails anyway (a "
                        "warning is printed; the reason and the refused verdict are recorded in what is shipped)")

    sp = sub.add_parser("validate", help="check a pipeline file and print the resolved plan")
    pipeline_args(sp)

    sp = sub.add_parser("recipes", help="the recipe table: each training stage's run function per input kind and "
                        "objective or answers kind, with the metrics it reports (lifecycle.workloads)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of the table (metrics included)")

    sp = sub.add_parser("plan", help="parameters, memory, FLOPs and wall time of each training stage, before running")
    pipeline_args(sp)
    sp.add_argument("--memory-gb", type=float, help="accelerator memory to check each stage against (> 0)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of the table")
    sp.add_argument("--no-calibrate", action="store_true", help="skip the timed calibration steps (no time estimate)")

    sp = sub.add_parser("run", help="run a pipeline; skips stages whose verified artifact is up to date")
    pipeline_args(sp)
    sp.add_argument("--workdir", type=Path, help="where runs are written (default: the pipeline's workdir)")
    sp.add_argument("--from", dest="from_stage", metavar="STAGE", help="re-run from this stage on, even if cached")
    sp.add_argument("--sign", type=Path, metavar="KEY", help="when the run finishes, sign its record and artifact "
                    "manifests with this Ed25519 private key (run.sig; checked by gate --trusted-key)")

    sp = sub.add_parser("sign", help="sign a finished run (run.sig) with an Ed25519 private key")
    sp.add_argument("run_dir", type=Path)
    sp.add_argument("key", type=Path, help="private key (PEM; python -m lifecycle.signing KEY makes one)")

    sp = sub.add_parser("gate", help="re-check the gates of a finished run (exit 0 or 3), for release gating in CI; "
                        "bundle, promote, serve and build refuse what it refuses")
    sp.add_argument("run_dir", type=Path)
    sp.add_argument("--junit", type=Path, help="also write junit.xml here")
    release_args(sp)
    sp.add_argument("--trusted-key", dest="trusted_keys", type=Path, action="append", metavar="PUBKEY",
                    help="fail unless the run is signed (run.sig) by this Ed25519 public key as it is now, and with "
                         "--against, unless the release is too (entry.sig; promote --sign) (repeatable)")
    sp.add_argument("--against", metavar="RELEASE", help="also compare the run's model with this release (paired, on "
                    "the same test examples): models:/NAME@ALIAS, models:/NAME/VERSION, or an alias or version of "
                    "the run's pipeline's model; 1 if it is not in the registry, 2 if its test data differ")
    sp.add_argument("--metric", dest="metrics", action="append", choices=PAIRED, metavar="METRIC",
                    help=f"metric compared with --against (repeatable; {', '.join(PAIRED)}; default accuracy)")
    sp.add_argument("--max-drop", type=float, default=0.01, help="largest drop allowed (default 0.01 = 1 point)")
    sp.add_argument("--bound", choices=("mean", "upper_ci", "lower_ci"), default="mean",
                    help="which end of the drop's 95%% interval must stay within --max-drop: upper_ci proves "
                         "non-inferiority, lower_ci fails only a certain regression, mean: the point estimate")

    sp = sub.add_parser("promote", help="register a run's model in the MLflow Model Registry (a new version) and "
                        "point an alias at it")
    sp.add_argument("run_dir", type=Path, help="run directory (its last classification stage) or an artifact")
    sp.add_argument("--alias", required=True, help="e.g. production")
    sp.add_argument("--model", help="registered model name (default: the pipeline's name)")
    release_args(sp)
    override_arg(sp)
    sp.add_argument("--sign", type=Path, metavar="KEY", help="sign the registry entry (entry.sig) with this Ed25519 "
                    "private key; checked by gate --against ALIAS --trusted-key")

    sp = sub.add_parser("report", help="rebuild report.json, report.md, junit.xml and plots of a run")
    sp.add_argument("run_dir", type=Path)

    sp = sub.add_parser("bundle", help="write an edge bundle (zip) from a run's last ONNX artifact")
    sp.add_argument("source", type=Path, help="run directory or export/quantize artifact")
    sp.add_argument("-o", "--output", type=Path, default=Path("model.zip"))
    sp.add_argument("--sign", type=Path, metavar="KEY",
                    help="sign the manifest with this Ed25519 private key (PEM; python -m lifecycle.signing KEY makes one)")
    override_arg(sp)

    sp = sub.add_parser("serve", help="serve a run, artifact or bundle with BentoML on 127.0.0.1")
    sp.add_argument("source", type=Path, help="run directory, export/quantize artifact, or bundle zip")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=3000)
    sp.add_argument("--tune", action="store_true", help="measure a small grid of serving settings, keep the best")
    sp.add_argument("--trusted-key", dest="trusted_keys", type=Path, action="append", metavar="PUBKEY",
                    help="serve only a bundle signed by this Ed25519 public key (PEM; repeatable)")
    override_arg(sp)

    sp = sub.add_parser("build", help="build a Bento (bentoml build) with the model versioned by its hash")
    sp.add_argument("source", type=Path)
    override_arg(sp)

    sp = sub.add_parser("export-hf", help="write a Hub-ready folder of a run's final model (safetensors, config, "
                        "tokenizer, ONNX graphs, README model card); refuses what `gate` refuses")
    sp.add_argument("run_dir", type=Path)
    sp.add_argument("out_dir", type=Path, help="a new folder; upload it with huggingface_hub.upload_folder")
    sp.set_defaults(command="export_hf")  # the handler's name: cmd_export_hf
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return globals()[f"cmd_{args.command}"](args) or EXIT_OK
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except GateFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return EXIT_GATE
    except LifecycleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; finished stages are kept, the next run resumes", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        # lifecycle.edge raises its own BundleError (it imports nothing from lifecycle, to be copied
        # alone onto a device); if one was raised, that module is loaded, so this costs no import.
        edge = sys.modules.get("lifecycle.edge")
        if edge is None or not isinstance(exc, edge.BundleError):
            raise
        print(f"error: {_bundle_error(args, exc)}", file=sys.stderr)
        return EXIT_ERROR


def _bundle_error(args, exc: Exception) -> str:
    """One line: the refused file (the command's source when the message does not name a file) and what
    to do about it."""
    message = " ".join(str(exc).split())
    source = getattr(args, "source", None)
    if source is not None and "/" not in message and str(source) not in message:
        message = f"{source}: {message}"
    if args.command == "bundle":
        return f"{message} (fix or re-run the stage that wrote this artifact, then bundle it again)"
    return f"{message} (refused; write the bundle again with `lifecycle bundle` from its run directory)"


def cmd_validate(args) -> int:
    from lifecycle import config, gates

    pipeline = config.load(args.file, args.overrides)
    print(f"pipeline {pipeline.name}: {len(pipeline.stages)} stages, seed {pipeline.seed}")
    for i, stage in enumerate(pipeline.stages):
        parent = pipeline.parent_of(stage)
        consumed = pipeline.holds(parent) if parent is not None and stage.needs_parent() else None
        recipe = pipeline.recipe(stage, consumed)
        by = f"  recipe {recipe.inputs}/{recipe.key}: {recipe.run}" if recipe else ""
        print(f"  [{i}] {stage.label} ({stage.kind}) <- {parent.label if parent else 'none'}{by}")
        for gate in stage.gates:
            ref = pipeline.reference_name(stage, gate) if gate.relative else None
            warn = "  [warn only]" if gate.on_fail == "warn" else ""
            print(f"        gate: {gates.describe(gate, ref)}{warn}")
    print("valid")
    return EXIT_OK


def cmd_recipes(args) -> int:
    import json

    from lifecycle import report, workloads

    table = workloads.registry()
    rows = [{"stage": r.stage, "inputs": r.inputs, "key": r.key, "run": r.run, "summary": r.summary,
             "declared_by": table.origin[f"recipe {r.stage}/{r.inputs}/{r.key}"], "metrics": sorted(r.metrics)}
            for r in table.recipes.values()]
    if args.json:
        print(json.dumps({"recipes": rows, "tasks": {t.name: {"inputs": t.inputs_kind, "answers": t.answers_kind}
                                                    for t in table.tasks.values()}}, indent=2))
        return EXIT_OK
    print(report.table(["stage", "inputs", "objective / answers", "recipe", "what it does"],
                       [[r["stage"], r["inputs"], r["key"], r["run"].removeprefix("lifecycle.workloads."), r["summary"]]
                        for r in rows]))
    print("\ntasks: " + ", ".join(f"{t.name} ({t.inputs_kind} -> {t.answers_kind})" for t in table.tasks.values()))
    return EXIT_OK


def cmd_plan(args) -> int:
    import json

    from lifecycle import config, planning

    pipeline = config.load(args.file, args.overrides)
    plans = planning.plan(pipeline, args.memory_gb, calibrate_steps=0 if args.no_calibrate else 3)
    if args.json:
        print(json.dumps({"pipeline": pipeline.name, "memory_gb": args.memory_gb,
                          "stages": [p.to_dict() for p in plans]}, indent=2))
    else:
        print(planning.render(plans, args.memory_gb))
    return EXIT_OK


def cmd_run(args) -> int:
    from lifecycle import api

    api.run(args.file, args.workdir, overrides=args.overrides, from_stage=args.from_stage, sign=args.sign)
    return EXIT_OK


def cmd_sign(args) -> int:
    from lifecycle.signing import sign_run

    print(f"signed {sign_run(args.run_dir, args.key)}")
    return EXIT_OK


def cmd_gate(args) -> int:
    from lifecycle import api, report

    verdict = api.gate(args.run_dir, against=args.against, metrics=args.metrics, max_drop=args.max_drop,
                       bound=args.bound, stage=args.stage, trusted_keys=args.trusted_keys or (), registry=args.registry)
    data = report.as_json(verdict.pipeline.name, verdict.outcomes, verdict.state)
    junit = args.junit or args.run_dir / "junit.xml"
    try:
        junit.parent.mkdir(parents=True, exist_ok=True)
        report.write_junit(data, junit)
    except OSError as exc:
        raise LifecycleError(f"--junit {junit}: cannot write it ({exc.strerror}); pick a writable path") from None
    for o in verdict.outcomes:
        for g in o.gates:
            mark = "pass" if g.passed else ("FAIL" if g.on_fail == "stop" else "warn")
            why = f"\n      {g.message}" if g.message and (not g.passed or g.interval) else ""
            print(f"{mark:5} {o.name}: {g.bound}  value={g.value}{why}")
        if o.status == "skipped":
            print(f"FAIL  {o.name}: stage did not run")
    if verdict.state != "finished":
        print(f"FAIL  run: the last `lifecycle run` did not finish (state: {verdict.state or 'not recorded'}); "
              "run it again")
    failed = verdict.reasons
    print("gates passed" if not failed else f"{len(failed)} gate(s) failed")
    return EXIT_GATE if failed else EXIT_OK


def cmd_promote(args) -> int:
    from lifecycle import api

    entry = api.promote(args.run_dir, args.alias, stage=args.stage, override=args.override, registry=args.registry,
                        sign=args.sign, model=args.model)
    print(f"models:/{entry.model}@{args.alias} -> {entry.version}: {entry.meta['pipeline']}/{entry.meta['stage']} "
          f"(digest {entry.meta['digest'][:16]}, {entry.meta['test_examples']} test predictions) in {entry.store}")
    return EXIT_OK


def cmd_report(args) -> int:
    from lifecycle import report
    from lifecycle.verdict import load_run, read_record

    pipeline, outcomes = load_run(args.run_dir)
    report.write(Path(args.run_dir), pipeline.name, outcomes, run_state=read_record(args.run_dir).get("state"))
    print(f"wrote {args.run_dir / 'report.md'}")
    return EXIT_OK


def cmd_bundle(args) -> int:
    from lifecycle.bundle import write_bundle
    from lifecycle.verdict import require

    verdict = require(args.source, "bundle", args.override)
    path = write_bundle(args.source, args.output, sign=args.sign, verdict=verdict)  # a BundleError: one line, from main()
    print(f"wrote {path}")
    return EXIT_OK


def cmd_serve(args) -> int:
    from lifecycle.serving import serve
    from lifecycle.verdict import require

    verdict = require(args.source, "serve", args.override)  # before any server starts
    if args.trusted_keys:
        from lifecycle.signing import require_signed

        require_signed(args.source, args.trusted_keys)
    return serve(args.source, host=args.host, port=args.port, tune=args.tune, trusted_keys=args.trusted_keys,
                 verdict=verdict)


def cmd_build(args) -> int:
    from lifecycle.serving import build
    from lifecycle.verdict import require

    print(build(args.source, verdict=require(args.source, "build", args.override)))
    return EXIT_OK


def cmd_export_hf(args) -> int:
    from lifecycle.hub_export import export_hf

    print(f"wrote {export_hf(args.run_dir, args.out_dir)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
