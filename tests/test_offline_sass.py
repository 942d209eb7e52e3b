"""benchmarks/offline_sass.py's reading of nvdisasm output (the build itself needs ptxas and nvdisasm)."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "offline_sass", Path(__file__).resolve().parent.parent / "benchmarks" / "offline_sass.py")
offline_sass = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(offline_sass)

# nvdisasm -c layout: labels on lines of their own, /*address*/ before each instruction. An outer loop (.L_x_0)
# holds an inner one (.L_x_1) with the mma; a forward branch (.L_x_2) and a loop without mma (.L_x_3) follow.
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
.L_x_1:
        /*0020*/                   LDS R6, [R3] ;
        /*0030*/                   HMMA.16816.F32 R8, R12, R14, R8 ;
        /*0040*/                   LDG.E.64 R16, desc[UR4][R18.64] ;
        /*0050*/                   STS [R3], R16 ;
        /*0060*/                   STL [R1], R9 ;
        /*0070*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0080*/               @P0 BRA `(.L_x_1) ;
        /*0090*/              @!P1 BRA `(.L_x_0) ;
        /*00a0*/                   BRA `(.L_x_2) ;
.L_x_3:
        /*00b0*/                   IADD3 R0, R0, 0x1, RZ ;
        /*00c0*/               @P2 BRA `(.L_x_3) ;
.L_x_2:
        /*00d0*/                   EXIT ;
"""


def test_instructions_and_labels():
    ins, labels = offline_sass.instructions(SASS)
    assert len(ins) == 14
    assert ins[0] == (0, "MOV R1, c[0x0][0x28]")
    assert labels == {"L_x_0": 0x10, "L_x_1": 0x20, "L_x_3": 0xb0, "L_x_2": 0xd0}


def test_opcode_drops_the_predicate():
    assert offline_sass.opcode("@!P1 BRA `(.L_x_0)") == "BRA"
    assert offline_sass.opcode("@P0 LDG.E R2, desc[UR4][R4.64]") == "LDG.E"
    assert offline_sass.opcode("@!UP0 HMMA.16816.F32 R8, R12, R14, R8") == "HMMA.16816.F32"


def test_the_innermost_loop_with_an_mma():
    loop = offline_sass.mma_loop(SASS)
    assert [a for a, _ in loop] == list(range(0x20, 0x81, 0x10))      # .L_x_1 .. its backward branch
    summary = offline_sass.loop_summary(SASS)
    head, marks = summary.splitlines()
    assert marks == "sMLT!Bj"
    assert "7 instructions; global loads 1, mma 1, shared loads 1, shared stores 1, branches 1, local 1" in head


def test_no_mma_loop():
    assert offline_sass.loop_summary(SASS.replace("HMMA", "FFMA")) == "no loop with an mma"
