"""The clients' and the mirrors' I/O: async in `_async`, the source; sync in `_sync`, generated from it."""
