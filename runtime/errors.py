"""Errors the runtime raises for problems a user can fix.

Each carries a one-line message that names the offending file, model or
template and what is wrong with it, so callers can show it as is instead of
a traceback from deep inside a library.
"""


class ModelLoadError(ValueError):
    """A model, its weights or its tokenizer could not be found, read or built: a missing file, an
    unsupported architecture or quantization type, a corrupt checkpoint."""


class ChatTemplateError(ValueError):
    """A chat template is missing, malformed, or refused the conversation."""
