"""Verbs that study runs: the run queue, ablations, scaling laws, comparisons, reports and plots.

Imports the engine and everything below it; never `slmkit.ship` or the CLI.
"""
