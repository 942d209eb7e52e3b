"""One launch stream and the CUDA graphs captured on it: the mechanics the decode step and the prefill share.

A Numba launch costs 25-90 us of host time (typing and marshalling its arguments); a CUDA graph replays a
recorded launch in about 1 us. ``cuda.core``'s GraphBuilder gives a stream that records instead of running, and
Numba launches onto it through ``cuda.external_stream``. So a user (``CudaDecoder``, ``CudaPrefill``) queues
every launch on ``GraphStream.stream``; ``capture`` points that attribute at the builder's stream while the
user's ``queue()`` runs, and back at the real stream afterwards.

What a user must guarantee: the launches of ``queue()`` are the same from call to call (kernel arguments are
frozen at capture: anything that changes lives in device memory) and they neither allocate nor free device
memory (neither is allowed while a stream captures; ``capture`` defers Numba's pending frees).

The policy (when to run directly, when to capture) is the user's: the decode step captures right after its
first direct run (every step repeats), the prefill only when a key comes back (a prompt length may be seen once).
"""
from __future__ import annotations

import collections

from numba import config, cuda


def graphs_supported() -> bool:
    """CUDA graphs need a real GPU and ``cuda.core`` (the simulator runs the launches directly)."""
    if config.ENABLE_CUDASIM:
        return False
    return _cuda_core() is not None


def _cuda_core():
    """``cuda.core`` (``cuda.core.experimental`` in releases before 0.4), or None."""
    for name in ("cuda.core", "cuda.core.experimental"):
        try:
            module = __import__(name, fromlist=["Device"])
        except ImportError:
            continue
        if hasattr(module, "Device"):
            return module
    return None


class GraphStream:
    """The launch stream of a fast path and its graphs by key (at most ``max_graphs``, least recently used
    closed first). Without graphs: a Numba stream on the GPU, the default stream (0) in the simulator."""

    def __init__(self, use_graph: bool, max_graphs: int | None = None):
        self.use_graph, self.max_graphs = use_graph, max_graphs
        self.graphs = collections.OrderedDict()          # key -> executable graph, least recently used first
        self._cc_stream = None
        if use_graph:
            self._device = _cuda_core().Device()
            self._device.set_current()
            self._cc_stream = self._device.create_stream()
            self.stream = cuda.external_stream(int(self._cc_stream.handle))
        else:
            self.stream = cuda.stream() if not config.ENABLE_CUDASIM else 0

    def get(self, key):
        """The graph captured for ``key`` (now the most recently used), or None."""
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
        return graph

    def capture(self, key, queue):
        """Record ``queue()``'s launches (queued on ``self.stream``) as a graph under ``key``; nothing runs."""
        builder = self._device.create_graph_builder().begin_building("thread_local")
        self.stream = cuda.external_stream(int(builder.stream.handle))
        try:
            with cuda.defer_cleanup():                   # a free (cuMemFree) would break the capture
                queue()
        finally:
            self.stream = cuda.external_stream(int(self._cc_stream.handle))
        graph = self.graphs[key] = builder.end_building().complete()
        while self.max_graphs is not None and len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)[1].close()
        return graph

    def launch(self, graph) -> None:
        """Queue one replay of ``graph`` on the stream."""
        graph.launch(self._cc_stream)

    def synchronize(self) -> None:
        """Wait for everything queued on the stream."""
        if self.stream == 0:                             # the simulator's default stream
            cuda.synchronize()
        else:
            self.stream.synchronize()

    def close(self) -> None:
        for graph in self.graphs.values():
            graph.close()
        self.graphs.clear()
