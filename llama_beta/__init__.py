"""llama-beta: LLM inference on GGUF files, readable from the bytes on disk to the generated text."""
__version__ = "0.1.0"
