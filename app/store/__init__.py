"""Files and freshness: reading session files, the index, the cache, the change log, the watcher
and the reconciler. Knows nothing of HTTP: it raises the domain errors of `app.errors`."""
