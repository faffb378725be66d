"""sglang-dsl: write language-model programs in Python and run them on a bundled radix-cache runtime."""

__version__ = "0.1.0"
