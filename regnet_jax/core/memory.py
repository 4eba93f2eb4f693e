"""The host process's memory: handing the C heap's free pages back to the system after a compilation.

    release_free_heap() -> bool    # glibc's malloc_trim(0); False where there is no glibc (macOS, musl)

XLA's compiler (LLVM included) allocates and frees about a gigabyte while it compiles a RegNet train step on CPU,
and the step's first run frees up to 0.3 GB more (docs/performance.md, "Memory: where it goes"). glibc keeps freed
memory in its arenas, resident, for reuse, so without this the process holds it for as long as it lives: 0.8 GB of
a RegNetY-400MF benchmark's 3.3 GB. The benchmark (``benchmarking.timing.prepare``) and the trainer call it after
compiling and after the first step; not inside a timed loop (the pages it returns are faulted in again when reused).
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (no glibc: other C libraries return free memory differently)."""
    try:
        return ctypes.CDLL(None).malloc_trim  # the symbols already loaded into this process, libc's among them
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the C heap's free pages to the system (``malloc_trim(0)``: every arena, also pages inside the heap);
    True if glibc was there to do it. Memory in use is untouched."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
