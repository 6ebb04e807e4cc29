"""The read side: pure folds `apply(state, event) -> state` over the event log, and the stores they fill.

The live service and the replay tooling run the same fold code.
"""
