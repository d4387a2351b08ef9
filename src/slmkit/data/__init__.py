"""The data pipeline: sources (documents) -> prepare (token shards + meta) -> loader (batches).

Import from the submodules (`slmkit.data.sources`, `.prepare`, `.dataset`, `.loader`); this package stays light
(no torch) so worker processes and `slm --help` start fast.
"""
