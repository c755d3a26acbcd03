"""ftcompare: full fine-tuning vs LoRA vs QLoRA on small language models, reproducibly."""
__version__ = "0.1.0"
