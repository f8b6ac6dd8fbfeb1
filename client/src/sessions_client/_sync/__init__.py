# Generated from sessions_client/_async/__init__.py by client/scripts/unasync.py: edit that file, then run
# `make unasync`. tests/test_client_unasync.py fails while this file differs from what it makes.
"""The clients' and the mirrors' I/O: async in `_async`, the source; sync in `_sync`, generated from it."""
