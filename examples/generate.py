"""Generate with the runtime's Python API on the embedded default model (SmolLM2-135M-Instruct).

    python examples/generate.py
"""

from runtime.args import RuntimeArgs
from runtime.generate import GenerationParams, generate
from runtime.model_runner import ModelRunner
from runtime.tokenizer import load_tokenizer

runner = ModelRunner(RuntimeArgs(model="smollm2-135m"))
tokenizer = load_tokenizer(runner.source)
questions = ["What is the boiling point of water?", "Give me a synonym for 'happy'."]
prompts = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}]), add_special_tokens=False)
           for q in questions]
for question, generation in zip(questions, generate(runner, prompts, GenerationParams(max_new_tokens=48),
                                                     tokenizer.eos_token_ids)):
    print(f"Q: {question}\nA: {tokenizer.decode(list(generation.token_ids), skip_special_tokens=True)}\n")
