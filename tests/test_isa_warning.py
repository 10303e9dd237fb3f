"""The CPU an int8 verdict holds for: the bundle records the ISA flags its gates were checked on, and
Predictor.open warns when it runs a u8s8 int8 graph on a CPU that differs in VNNI (onnxruntime's u8s8
kernels can saturate without it). Simulated by editing the recorded flags in a real bundle's manifest
so that they differ from this CPU's, whichever way this CPU goes."""

from __future__ import annotations

import json
import warnings
import zipfile

import pytest
from test_bundle import onnx_workdir, quantized_run  # noqa: F401 (fixtures: one quantized tiny run)

from lifecycle.bundle import write_bundle
from lifecycle.edge import VNNI_FLAGS, Predictor, cpu_flags, int8_isa_warning

RUNNING = cpu_flags() or set()
X86 = bool(RUNNING & {"avx2", "avx512f"})


@pytest.fixture(scope="module")
def int8_bundle(quantized_run, tmp_path_factory):  # noqa: F811
    return write_bundle(quantized_run, tmp_path_factory.mktemp("isa") / "model.zip")


def with_isa(src, dst, isa: list[str]):
    """The bundle with other ISA flags recorded in its manifest.json (not itself hashed; unsigned)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "manifest.json":
                manifest = json.loads(data)
                manifest["isa"] = isa
                data = json.dumps(manifest).encode()
            zout.writestr(info.filename, data)
    return dst


def other_vnni(running: set[str]) -> list[str]:
    """Flags of an x86 CPU that differs from `running` in VNNI only."""
    return ["avx2", "fma"] if running & VNNI_FLAGS else ["avx2", "avx512f", "avx512_vnni", "fma"]


def test_the_bundle_records_the_flags_and_the_int8_numerics(int8_bundle):
    with zipfile.ZipFile(int8_bundle) as z:
        manifest = json.loads(z.read("manifest.json"))
    assert set(manifest["isa"]) <= RUNNING and manifest["isa"] == manifest["environment"]["isa"]
    assert manifest["schema"]["int8"] == {"activations": "uint8", "weights": "int8", "reduce_range": False}


@pytest.mark.skipif(not X86, reason="u8s8 saturation without VNNI is an x86 matter")
def test_open_warns_on_a_cpu_that_differs_in_vnni(int8_bundle, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bundle as recorded, on the CPU it was gated on: silent
        assert Predictor.open(int8_bundle).isa_warning is None
    moved = with_isa(int8_bundle, tmp_path / "moved.zip", other_vnni(RUNNING))
    with pytest.warns(RuntimeWarning, match=r"u8s8 int8 model was gated on a CPU (with|without) VNNI.*reduce_range"):
        p = Predictor.open(moved)
    assert p.isa_warning and p.check() == 8  # a warning, not a refusal: it still answers


def test_the_rule_itself():
    """Only a u8s8 graph without reduce_range, on x86 at both ends, with VNNI on one end only."""
    int8 = {"int8": {"activations": "uint8", "weights": "int8", "reduce_range": False}}
    vnni, plain = {"avx2", "avx512f", "avx512_vnni"}, {"avx2", "fma"}
    assert "gated on a CPU with VNNI and runs on one without" in int8_isa_warning(int8, {"isa": sorted(vnni)}, plain, "m")
    assert "gated on a CPU without VNNI" in int8_isa_warning(int8, {"environment": {"isa": sorted(plain)}}, vnni, "m")
    assert int8_isa_warning(int8, {"isa": sorted(vnni)}, vnni, "m") is None
    assert int8_isa_warning({"int8": {**int8["int8"], "reduce_range": True}}, {"isa": sorted(vnni)}, plain, "m") is None
    assert int8_isa_warning({}, {"isa": sorted(vnni)}, plain, "m") is None  # fp32 graph
    assert int8_isa_warning(int8, {"isa": ["neon", "asimd"]}, plain, "m") is None  # gated on ARM
    assert int8_isa_warning(int8, None, plain, "m") is None  # no manifest: nothing recorded to compare
