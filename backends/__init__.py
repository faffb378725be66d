"""Backends that run programs: the in-process runtime, native-API servers, OpenAI-compatible APIs."""
