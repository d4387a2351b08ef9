"""The base layer: errors, atomic writes, the config tree, tokenizers, metrics, statistics, console output.

Imports nothing else of slmkit; every other layer may import it.
"""
