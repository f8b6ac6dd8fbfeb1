"""The process: uvicorn's configuration, signals and the HTTP protocol. The only code that touches
uvicorn's internals."""
