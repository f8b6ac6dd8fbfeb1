"""The change stream: the hub that fans the store's changes out to watches, their streams, events
and deadlines. Built on the store; knows nothing of routes."""
