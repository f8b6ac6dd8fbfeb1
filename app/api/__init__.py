"""HTTP: the route table, its endpoints, problem details, auth and observing middleware, probes and
the OpenAPI document. Reads the store and the change stream."""
