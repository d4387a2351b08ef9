"""The model layer: the transformer, optimizers, LoRA, sampling, Hugging Face weight and tokenizer maps, the
quantized-weights format. Imports only `slmkit.base`.
"""
