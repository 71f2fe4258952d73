"""runq: run the largest mixture-of-experts LLM a machine can hold, with llama.cpp."""

__version__ = "0.1.0"
