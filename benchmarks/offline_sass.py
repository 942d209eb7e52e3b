"""The SASS of a prefill product kernel (matmul v11) for sm_90, built without a GPU: registers, spills, and the
order of the instructions in its K-loop. For sessions without a device: it shows where ptxas put the global
loads relative to the mma (a load issued after the mma waits out its whole latency every K-step).

    python benchmarks/offline_sass.py TYPE [--plain] [--config=WIDE|MID|LONG|NARROW] [--launch-bounds=T,B]
                                      [--x16] [--out=DIR]
    python benchmarks/offline_sass.py f16w [--plain] [--config=0|1|2|3] [--out=DIR]

TYPE: a GGML type name (Q4_K, Q6_K, F16 ...); the SwiGLU kernel (gate and up of TYPE) unless ``--plain``;
``--x16``: the kernel that reads x as float16 pairs (``PrefillProduct(..., x16=True)``). ``f16w``: v23's GEMM
over float16 weights (``matmul._gemm_kernel``, the tile ``matmul.F16W_CONFIGS[config]``; no TYPE: its weights
are already float16).
Needs libnvvm and ptxas (the CUDA toolkit) and nvdisasm on PATH; nvdisasm comes in NVIDIA's
``nvidia-cuda-nvdisasm`` wheel (``pip download --no-deps nvidia-cuda-nvdisasm``, unzip, ``nvidia/*/bin``).

The loop is printed as one character per instruction: L global load, M mma, s shared load, T shared store,
B barrier, j branch, ! local memory (spills), . anything else.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

MARKS = (("LDG", "L"), ("HMMA", "M"), ("LDS", "s"), ("STS", "T"), ("BAR", "B"), ("BRA", "j"), ("LDL", "!"),
         ("STL", "!"))


def instructions(sass: str) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """nvdisasm text -> ([(address, instruction)], {label: address of its first instruction})."""
    ins, labels, pending = [], {}, []
    for line in sass.splitlines():
        s = line.strip()
        label = re.match(r"\.(L_x_\d+):", s)
        if label:
            pending.append(label.group(1))
            continue
        m = re.match(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", s)
        if m:
            addr = int(m.group(1), 16)
            labels.update((p, addr) for p in pending)
            pending = []
            ins.append((addr, m.group(2)))
    return ins, labels


def opcode(instruction: str) -> str:
    """The opcode of one SASS instruction, without its predicate (``@!P1 BRA ...`` -> ``BRA``)."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0]


def mark(instruction: str) -> str:
    op = opcode(instruction)
    return next((m for prefix, m in MARKS if op.startswith(prefix)), ".")


def mma_loop(sass: str) -> list[tuple[int, str]]:
    """The instructions of the innermost loop holding an mma: the shortest range [target, branch] of a backward
    branch that contains an HMMA. Empty if there is none."""
    ins, labels = instructions(sass)
    mma = [a for a, t in ins if opcode(t).startswith("HMMA")]
    best = None
    for addr, text in ins:
        target = re.search(r"\(\.?(L_x_\d+)\)", text) if opcode(text) == "BRA" else None
        lo = labels.get(target.group(1)) if target else None
        if lo is not None and lo < addr and any(lo <= a <= addr for a in mma):
            if best is None or addr - lo < best[1] - best[0]:
                best = (lo, addr)
    return [(a, t) for a, t in ins if best and best[0] <= a <= best[1]]


def loop_summary(sass: str, width: int = 100) -> str:
    """A count of the loop's loads, mma, shared accesses and branches, then its instructions as marks."""
    loop = mma_loop(sass)
    if not loop:
        return "no loop with an mma"
    seq = "".join(mark(t) for _, t in loop)
    head = (f"loop {loop[0][0]:#x}-{loop[-1][0]:#x}: {len(seq)} instructions; global loads {seq.count('L')}, "
            f"mma {seq.count('M')}, shared loads {seq.count('s')}, shared stores {seq.count('T')}, "
            f"branches {seq.count('j')}, local {seq.count('!')}")
    return "\n".join([head] + [seq[i:i + width] for i in range(0, len(seq), width)])


def _offline_numba():
    """Make Numba compile for sm_90 with no GPU and no NVRTC (the PTX goes to ptxas by hand). The stand-in
    device has the H100's and H200's 132 SMs, so that the kernels' launch choices (tiles, block shapes: they
    read ``MULTIPROCESSOR_COUNT``) are the GPU's, not the simulator's (which has none)."""
    os.environ["NUMBA_FORCE_CUDA_CC"] = "9.0"
    import numba.cuda.cuda_paths as cuda_paths
    cuda_paths._get_nvrtc_path = lambda: ("offline", None)
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher
    dispatcher.get_current_device = cuda.get_current_device = lambda: SimpleNamespace(
        compute_capability=(9, 0), MULTIPROCESSOR_COUNT=132)
    return cuda


def build_v11(type_name: str, swiglu: bool, config: str, launch_bounds, out: Path,
              x16: bool = False) -> tuple[str, str]:
    """(ptxas's resource lines, SASS) of ``matmul._mma_kernel`` for sm_90; the PTX, cubin and SASS land in out."""
    cuda = _offline_numba()
    import numpy as np
    from numba import from_dtype, types as nt

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from numba_kernels import matmul as mm
    from ref.ggml import GGMLType
    if type_name not in GGMLType.__members__ or GGMLType[type_name] not in mm.DECODERS:
        raise SystemExit(f"offline_sass: TYPE must be one of {', '.join(t.name for t in mm.DECODERS)}, got {type_name!r}")
    if not hasattr(mm, f"MMA_{config}"):
        raise SystemExit(f"offline_sass: --config must be WIDE, MID, LONG or NARROW, got {config!r}")
    t = GGMLType[type_name]
    kernel = mm._mma_kernel(t, t, getattr(mm, f"MMA_{config}"), swiglu, 1, x16)
    f32, i32 = nt.Array(nt.float32, 1, "C"), nt.Array(nt.int32, 1, "C")
    wa, wb = (nt.Array(from_dtype(np.dtype(v)), 2, "C") for v in mm._VIEWS.get(t, (np.uint16, np.float16)))
    x_type = nt.Array(nt.uint32, 1, "C") if x16 else f32          # float16 pairs, or float32
    sig = (x_type, nt.int64, nt.int64, wa, wb, wa, wb, nt.int64, nt.int64, f32, nt.boolean, nt.boolean, f32, f32, i32)
    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0), launch_bounds=launch_bounds)
    return _ptxas_and_sass(ptx, out / f"v11-{type_name}-{'swiglu' if swiglu else 'plain'}-{config.lower()}"
                                      f"{'-x16' if x16 else ''}")


def _ptxas_and_sass(ptx: str, stem: Path) -> tuple[str, str]:
    """Write the PTX, assemble it for sm_90, disassemble: (ptxas's resource lines, SASS); files next to stem."""
    stem.with_suffix(".ptx").write_text(ptx)
    cubin = stem.with_suffix(".cubin")
    r = subprocess.run(["ptxas", "-arch=sm_90", "-v", str(stem.with_suffix(".ptx")), "-o", str(cubin)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"ptxas failed: {r.stderr.strip()}")
    info = "\n".join(line.split("info    : ")[-1].strip() for line in r.stderr.splitlines()
                     if "registers" in line or "spill" in line)
    sass = subprocess.run(["nvdisasm", "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    stem.with_suffix(".sass").write_text(sass)
    return info, sass


def build_v23(swiglu: bool, index: int, out: Path) -> tuple[str, str]:
    """(ptxas's resource lines, SASS) of ``matmul._gemm_kernel`` (v23) for sm_90, tile F16W_CONFIGS[index]."""
    cuda = _offline_numba()
    from numba import types as nt

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from numba_kernels import matmul as mm
    cfg = mm.F16W_CONFIGS[index]
    kernel = mm._gemm_kernel(cfg, swiglu, 1)
    f32, i32, u32 = (nt.Array(t, 1, "C") for t in (nt.float32, nt.int32, nt.uint32))
    sig = (u32, nt.int64, nt.int64, u32, nt.int64, f32, nt.boolean, nt.boolean, f32, f32, i32)
    bounds = mm._f16w_jit_options(cfg).get("launch_bounds")
    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0), launch_bounds=bounds)
    return _ptxas_and_sass(ptx, out / f"v23-{'swiglu' if swiglu else 'plain'}-{index}")


def main(argv: list[str]) -> None:
    args = [a for a in argv if not a.startswith("--")]
    opt = {a.split("=")[0]: a.split("=", 1)[1] for a in argv if a.startswith("--") and "=" in a}
    if not args:
        raise SystemExit(__doc__)
    bounds = tuple(int(v) for v in opt["--launch-bounds"].split(",")) if "--launch-bounds" in opt else None
    out = Path(opt.get("--out") or tempfile.mkdtemp(prefix="offline-sass-"))
    out.mkdir(parents=True, exist_ok=True)
    if args[0] == "f16w":
        info, sass = build_v23("--plain" not in argv, int(opt.get("--config", "0")), out)
    else:
        info, sass = build_v11(args[0], "--plain" not in argv, opt.get("--config", "WIDE"), bounds, out,
                               "--x16" in argv)
    print(info)
    print(loop_summary(sass))
    print(f"(PTX, cubin and SASS in {out})")


if __name__ == "__main__":
    main(sys.argv[1:])
