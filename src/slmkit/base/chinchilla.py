"""Chinchilla's compute-optimal rule (Hoffmann et al. 2022): about 20 training tokens per model parameter.

The one copy of the constant: the doctor's under-training rule, the report, `slm scaling` and its CLI defaults
all read it from here.
"""

TOKENS_PER_PARAM = 20.0
