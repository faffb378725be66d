"""Errors the runtime raises for bad input, each with a message that names what is wrong."""


class ModelLoadError(ValueError):
    """A model could not be found, read or built: a missing file, an unsupported architecture or quantization
    type, a corrupt checkpoint. The message names the file and the problem."""
