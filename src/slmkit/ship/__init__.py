"""Verbs that adapt and ship a model: fine-tuning, quantization, export (hf, gguf), serving, chat.

Imports the engine and everything below it; never `slmkit.study` or the CLI.
"""
