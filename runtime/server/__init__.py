"""The HTTP server: SGLang's native API and the OpenAI API over an ``Engine``.

- ``app.py``: ``create_app`` (routes, API key, error shape); ``native.py`` and ``openai_api.py``: the two APIs;
- ``schemas.py``: request bodies; ``dispatch.py``: running and streaming requests on the engine; ``sse.py``:
  server-sent events; ``errors.py``: error responses; ``state.py``: what the routes share;
- ``launch.py``: ``serve`` (blocking) and ``BackgroundServer`` (a thread, for tests)."""

from runtime.server.app import create_app
from runtime.server.launch import BackgroundServer, serve

__all__ = ["BackgroundServer", "create_app", "serve"]
