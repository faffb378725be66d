"""Process-wide settings: ``global_config`` and the default backend.

When no backend was set (``set_default_backend``) and a program runs without ``backend=``, the default is a local
`backends.local.Runtime` on the embedded default model, created once on first use."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backends.base import Backend


class GlobalConfig:
    """Settings read by every run. ``verbosity >= 2`` prints each program's text after ``run``;
    ``skip_special_tokens_in_output`` and ``spaces_between_special_tokens_in_out`` are sent to the backend
    when changed from their defaults; ``enable_precache_with_tracing`` lets ``run_batch`` compute the batch's
    shared prefix once before running the rest of the batch; with ``enable_batch_planning`` as well, it does so by
    a batch plan (`sglang_dsl.compiler.batch_plan`: every shared prefix once, depth-first) when the program
    traces; ``enable_segment_fusion`` runs queued text/gen/select nodes as one request on backends that run
    segments (`sglang_dsl.lang.fusion`)."""

    def __init__(self) -> None:
        self.verbosity = 0
        self.default_backend: Backend | None = None
        self.skip_special_tokens_in_output = True
        self.spaces_between_special_tokens_in_out = True
        self.enable_precache_with_tracing = True
        self.enable_batch_planning = True
        self.enable_segment_fusion = True

    def extra_sampling(self) -> dict[str, Any]:
        """The native sampling keys these settings add to every generation (none at their defaults)."""
        out: dict[str, Any] = {}
        if not self.skip_special_tokens_in_output:
            out["skip_special_tokens"] = False
        if not self.spaces_between_special_tokens_in_out:
            out["spaces_between_special_tokens"] = False
        return out


global_config = GlobalConfig()
_default_lock = threading.Lock()


def set_default_backend(backend: "Backend") -> None:
    """Run programs on ``backend`` unless ``run(backend=...)`` says otherwise."""
    global_config.default_backend = backend


def default_backend() -> "Backend":
    """The default backend, creating the local runtime on the embedded model if none was set."""
    with _default_lock:
        if global_config.default_backend is None:
            from backends.local import Runtime

            global_config.default_backend = Runtime()
        return global_config.default_backend


def resolve_backend(backend: "Backend | None") -> "Backend":
    """``backend``, or the default one."""
    return backend if backend is not None else default_backend()


def flush_cache(backend: "Backend | None" = None) -> bool:
    """Empty the backend's prefix cache; False when there is no backend yet or it cannot flush now."""
    backend = backend or global_config.default_backend
    return backend.flush_cache() if backend is not None else False


def get_server_info(backend: "Backend | None" = None) -> dict[str, Any]:
    """What the backend reports about itself (model, options, version); empty without a backend."""
    backend = backend or global_config.default_backend
    return backend.server_info() if backend is not None else {}
