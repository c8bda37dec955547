"""The ground layer: errors, atomic I/O, results and provenance, config plumbing, safe file reading.

Imports nothing else of ``lightning_sparse_mtl`` (tests/test_layers.py; docs/architecture.md "Layers").
"""
