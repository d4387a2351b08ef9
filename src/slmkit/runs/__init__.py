"""The run-dir layer: checkpoints, parent runs (resolve, check, load their weights) and the run table.

Imports the data, model and base layers.
"""
