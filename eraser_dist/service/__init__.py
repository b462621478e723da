"""The bulk multi-tenant erase service: registry, request journal, batch worker, HTTP API.

``EraseService`` (facade) is what the CLI and the HTTP API call; ``registry`` holds tenants
and versions, ``journal`` the requests, ``batching`` decides what runs together, ``worker``
runs batches crash-safely, ``certificate`` writes what a tenant gets back.
"""

from .facade import EraseService

__all__ = ["EraseService"]
