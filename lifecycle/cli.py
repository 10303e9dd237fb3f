"""`lifecycle` command line. Exit codes: 0 pass, 1 error, 2 invalid config or usage, 3 a gate failed.

Imports here are light; each command imports what it needs, so `lifecycle --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lifecycle import ConfigError, GateFailed, LifecycleError

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_GATE = 0, 1, 2, 3


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

    sp = sub.add_parser("validate", help="check a pipeline file and print the resolved plan")
    pipeline_args(sp)

    sp = sub.add_parser("plan", help="parameters, memory, FLOPs and wall time of each training stage, before running")
    pipeline_args(sp)
    sp.add_argument("--memory-gb", type=float, help="accelerator memory to check each stage against")
    sp.add_argument("--json", action="store_true", help="print JSON instead of the table")
    sp.add_argument("--no-calibrate", action="store_true", help="skip the timed calibration steps (no time estimate)")

    sp = sub.add_parser("run", help="run a pipeline; skips stages whose verified artifact is up to date")
    pipeline_args(sp)
    sp.add_argument("--workdir", type=Path, help="where runs are written (default: the pipeline's workdir)")
    sp.add_argument("--from", dest="from_stage", metavar="STAGE", help="re-run from this stage on, even if cached")

    sp = sub.add_parser("gate", help="re-check the gates of a finished run (exit 0 or 3), for release gating in CI")
    sp.add_argument("run_dir", type=Path)
    sp.add_argument("--junit", type=Path, help="also write junit.xml here")

    sp = sub.add_parser("report", help="rebuild report.json, report.md, junit.xml and plots of a run")
    sp.add_argument("run_dir", type=Path)

    sp = sub.add_parser("bundle", help="write an edge bundle (zip) from a run's last ONNX artifact")
    sp.add_argument("source", type=Path, help="run directory or export/quantize artifact")
    sp.add_argument("-o", "--output", type=Path, default=Path("model.zip"))
    sp.add_argument("--sign", type=Path, metavar="KEY",
                    help="sign the manifest with this Ed25519 private key (PEM; python -m lifecycle.signing KEY makes one)")

    sp = sub.add_parser("serve", help="serve a run, artifact or bundle with BentoML on 127.0.0.1")
    sp.add_argument("source", type=Path, help="run directory, export/quantize artifact, or bundle zip")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=3000)
    sp.add_argument("--tune", action="store_true", help="measure a small grid of serving settings, keep the best")
    sp.add_argument("--trusted-key", dest="trusted_keys", type=Path, action="append", metavar="PUBKEY",
                    help="serve only a bundle signed by this Ed25519 public key (PEM; repeatable)")

    sp = sub.add_parser("build", help="build a Bento (bentoml build) with the model versioned by its hash")
    sp.add_argument("source", type=Path)
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


def cmd_validate(args) -> int:
    from lifecycle import config, gates

    pipeline = config.load(args.file, args.overrides)
    print(f"pipeline {pipeline.name}: {len(pipeline.stages)} stages, seed {pipeline.seed}")
    for i, stage in enumerate(pipeline.stages):
        parent = pipeline.parent_of(stage)
        print(f"  [{i}] {stage.label} ({stage.kind}) <- {parent.label if parent else 'none'}")
        for gate in stage.gates:
            ref = pipeline.reference_name(stage, gate) if gate.relative else None
            warn = "  [warn only]" if gate.on_fail == "warn" else ""
            print(f"        gate: {gates.describe(gate, ref)}{warn}")
    print("valid")
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
    from lifecycle import config, pipeline

    cfg = config.load(args.file, args.overrides)
    pipeline.run(cfg, workdir=args.workdir, from_stage=args.from_stage)
    return EXIT_OK


def cmd_gate(args) -> int:
    from lifecycle import gates, report
    from lifecycle.pipeline import load_run

    pipeline, outcomes = load_run(args.run_dir)
    data = report.as_json(pipeline.name, outcomes)
    report.write_junit(data, args.junit or args.run_dir / "junit.xml")
    for o in outcomes:
        for g in o.gates:
            verdict = "pass" if g.passed else ("FAIL" if g.on_fail == "stop" else "warn")
            print(f"{verdict:5} {o.name}: {g.bound}  value={g.value}")
        if o.status == "skipped":
            print(f"FAIL  {o.name}: stage did not run")
    failed = [g for o in outcomes for g in gates.blocking(o.gates)] or [o for o in outcomes if o.status == "skipped"]
    print("gates passed" if not failed else f"{len(failed)} gate(s) failed")
    return EXIT_GATE if failed else EXIT_OK


def cmd_report(args) -> int:
    from lifecycle import report
    from lifecycle.pipeline import load_run

    pipeline, outcomes = load_run(args.run_dir)
    report.write(Path(args.run_dir), pipeline.name, outcomes)
    print(f"wrote {args.run_dir / 'report.md'}")
    return EXIT_OK


def cmd_bundle(args) -> int:
    from lifecycle.bundle import write_bundle
    from lifecycle.edge import BundleError

    try:
        path = write_bundle(args.source, args.output, sign=args.sign)
    except BundleError as exc:
        raise LifecycleError(str(exc)) from None
    print(f"wrote {path}")
    return EXIT_OK


def cmd_serve(args) -> int:
    from lifecycle.serving import serve

    if args.trusted_keys:
        from lifecycle.signing import require_signed

        require_signed(args.source, args.trusted_keys)
    return serve(args.source, host=args.host, port=args.port, tune=args.tune)


def cmd_build(args) -> int:
    from lifecycle.serving import build

    print(build(args.source))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
