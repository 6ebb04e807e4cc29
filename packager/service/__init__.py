"""The packaging service layer: one accepted request in, a ZIP in the store and a terminal event out.

It composes the domain with the adapters and knows nothing of Faust or of the HTTP ingress, so the packer
agents, the tests and the benchmarks run the same code.
"""
