"""One OpenMP thread pool on the CPU: the engine thread's.

torch's CPU ops run their parallel parts on OpenMP, whose runtime keeps a pool of worker threads for each thread
that has started a parallel region. The pt engine loads the model on the caller's thread (the main thread, in
`infer` scripts) and then runs every step on its own engine thread: two pools, each worker of which spins for a
while after each region. With more such threads than cores the runtime stops spinning and parks them, and every
one of a step's ~150 short parallel ops pays for waking a worker: on the 2-core development machine the 57 linears
of a 30M-parameter decode step took 19-20 ms on the engine thread against 12-13 ms when one thread had done all the
work (benchmarks/RESULTS.md, criterion (f)). Releasing the loading thread's pool once start-up is done leaves the
engine thread's as the only one.

`omp_pause_resource_all(omp_pause_hard)` (OpenMP 5.0) frees the calling thread's pool; libgomp (torch's Linux
wheels), LLVM's libomp and Intel's libiomp5 export it. The pool comes back if that thread runs parallel ops again
(the caller's own torch code): slower then, never wrong.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

_OMP_PAUSE_HARD = 2
_RUNTIMES = ("libgomp", "libiomp5", "libomp")


def _loaded_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime this process has loaded (torch's own copy), found by its path in the process's maps."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if any(name in line for name in _RUNTIMES)}
    except OSError:  # not Linux
        return None
    for path in sorted(paths):
        if not path.startswith("/"):
            continue
        try:
            runtime = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(runtime, "omp_pause_resource_all"):
            return runtime
    return None


def release_calling_thread_pool() -> bool:
    """Free the OpenMP workers that the calling thread's parallel ops started; True if the runtime did."""
    runtime = _loaded_runtime()
    if runtime is None:
        return False
    released = runtime.omp_pause_resource_all(_OMP_PAUSE_HARD) == 0
    logger.debug("OpenMP pool of the loading thread released: %s", released)
    return released
