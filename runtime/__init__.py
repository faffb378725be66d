"""The bundled inference runtime: models over a paged KV cache, attention backends, weight loading, the engine
and its HTTP server."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("sglang-dsl")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
