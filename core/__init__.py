"""Low-level libraries: the etcd client, operator identity and keys, settings, logging, the matrix
watcher, process helpers and the Temporal connection.

The bottom layer: nothing here imports contracts, manual, activities, workflows, the simulator or
the CLI (tests/test_layers.py fails on an import against the direction).
"""
