"""Checkpoint readers: each yields Hugging Face-named tensors for ``LlamaForCausalLM.load_weights``."""
