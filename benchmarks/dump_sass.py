"""Dump the SASS of every CUDA kernel a decode step compiles (needs nvdisasm on PATH).

    python benchmarks/dump_sass.py MODEL.gguf OUT_DIR

One file per kernel and signature, plus a summary line each: instructions and the most
frequent opcodes (a quick way to see what a decoder's inner loop costs).
"""
import collections
import gc
import pathlib
import re
import sys

from numba.cuda.dispatcher import CUDADispatcher

import llama_beta
from llama_beta.backends.cuda_decode import CudaDecoder

model = llama_beta.load(sys.argv[1], backend="cuda", progress=False)
out = pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
cache = model.new_cache(640)
dec = CudaDecoder(model, cache, use_graph=False)
dec.next_token(1, 512, 1)
for obj in gc.get_objects():
    if isinstance(obj, CUDADispatcher) and obj.overloads:
        for i, (sig, sass) in enumerate(obj.inspect_sass().items()):
            name = f"{obj.py_func.__module__.split('.')[-1]}.{obj.py_func.__qualname__.replace('<locals>.', '')}-{i}"
            (out / f"{name}.sass").write_text(str(sig) + "\n" + sass)
            ops = collections.Counter(m.group(1).split(".")[0] for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass))
            print(f"{name}: {sum(ops.values())} instructions; " + ", ".join(f"{k} {v}" for k, v in ops.most_common(12)))
