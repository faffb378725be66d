"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

from runtime.model_files import DEFAULT_MODEL, ModelSource, resolve_model


@pytest.fixture(scope="session")
def smollm2_source() -> ModelSource:
    """The embedded SmolLM2-135M-Instruct Q4_1 GGUF, fetched into the model cache on first use."""
    return resolve_model(DEFAULT_MODEL)
