"""What every route of one server shares: the engine, the names it serves under, the requests in flight."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from runtime.server.dispatch import ActiveRequests


@dataclass
class ServerState:
    engine: Any
    served_model_name: str
    model_aliases: frozenset[str]
    api_key: str | None = None
    active: ActiveRequests = field(default_factory=ActiveRequests)
    started: float = field(default_factory=time.time)

    def context_length(self) -> int | None:
        engine = self.engine
        length = getattr(engine, "context_length", None)
        if length is None:
            length = getattr(getattr(engine, "args", None), "context_length", None)
        if length is None:
            length = getattr(getattr(engine, "model_config", None), "max_position_embeddings", None)
        return length


def server_state(request: Request) -> ServerState:
    return request.app.state.server
