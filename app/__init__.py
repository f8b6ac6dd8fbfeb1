"""Job-session service: job-session documents served from memory, kept fresh by a file watcher."""

__version__ = "1.0.0"
