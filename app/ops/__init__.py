"""Operating the service: metrics, logs and the offline folder check."""
