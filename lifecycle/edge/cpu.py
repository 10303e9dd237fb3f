"""The CPU's instruction-set features, and the warning an int8 graph gets when it runs on a CPU that
differs in them from the one its gates were checked on."""

from __future__ import annotations

# x86 int8 dot-product instructions. Without one, onnxruntime's u8s8 kernels (uint8 activations, int8
# weights: what the quantize stage writes) add pairs of products in int16 and can saturate, so a graph
# answers differently on a CPU with VNNI than on one without; 7-bit weights (reduce_range) avoid it.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags() -> set[str] | None:
    """This CPU's instruction-set flags from /proc/cpuinfo; None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def int8_isa_warning(schema: dict, manifest: dict | None, running: set[str] | None, source) -> str | None:
    """Why this u8s8 int8 graph may answer differently here than on the CPU its gates were checked on
    (the manifest's `isa`, or its environment's), or None: only x86 on both sides, and only a change in
    VNNI matters."""
    int8 = schema.get("int8")
    if not int8 or int8.get("reduce_range") or not manifest or running is None:
        return None
    gated = set(manifest.get("isa") or (manifest.get("environment") or {}).get("isa") or ())
    x86 = {"avx2", "avx512f"}
    if not (gated & x86 and running & x86) or bool(gated & VNNI_FLAGS) == bool(running & VNNI_FLAGS):
        return None
    had, has = ("with", "without") if gated & VNNI_FLAGS else ("without", "with")
    return (f"{source}: this u8s8 int8 model was gated on a CPU {had} VNNI and runs on one {has} it; onnxruntime's "
            "u8s8 kernels can saturate without VNNI, so its answers may differ from the ones its gates checked. "
            "For such targets quantize with `reduce_range: true` (7-bit weights) and gate on such a CPU.")
