"""The engine layer: runtime (device, dtype), distributed processes, the training loop, evaluation, the doctor.

Imports the run-dir, data, model and base layers; the verbs (ship, study) and the CLI build on it.
"""
