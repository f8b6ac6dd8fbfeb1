"""Job-session service: job-session documents served from memory, kept fresh by a file watcher."""

from importlib.metadata import PackageNotFoundError, version

# The version lives in one place, the package metadata (pyproject.toml); `python -m app
# --version`, /openapi.json and the sessions_build_info metric all show this value.
try:
    __version__ = version("job-session-service")
except PackageNotFoundError:  # a source tree that was never installed (make install installs it)
    __version__ = "0+unknown"
