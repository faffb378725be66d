"""Tokenizers for the runtime, loaded from a Hugging Face directory or a GGUF file."""

from runtime.tokenizer.detokenizer import IncrementalDetokenizer
from runtime.tokenizer.tokenizer import Tokenizer, load_tokenizer

__all__ = ["IncrementalDetokenizer", "Tokenizer", "load_tokenizer"]
