"""The tenants' HTTP API on the Ray cluster: Ray Serve replicas of the one-process app.

``eraser serve --workers … --http HOST:PORT`` serves the API this way, so that it scales with
the cluster rather than with the serve process: each replica builds the same FastAPI app as
the one-process service (:func:`eraser_dist.service.app.make_app`) over the same data root,
and Ray Serve's proxies route to them. Every answer comes from the root (the journal, the
registry, the certificates, the serve's recorded state), so a replica needs no link to the
batch worker; the root must be reachable at the same path from every node that runs one.

What differs from the one-process server (:mod:`eraser_dist.service.http`):

- Ray Serve's proxy, not this project's uvicorn protocol, reads the connections, so its own
  keep-alive and request timeouts apply to a client that never finishes a request.
- The failed-authentication limit (:class:`~eraser_dist.service.auth_limit.FailedAuthLimit`)
  is counted per replica: N replicas allow up to N times the limit in all.
"""

from __future__ import annotations

from ray import serve
from ray.serve.config import HTTPOptions

from eraser_dist.errors import EraserError
from eraser_dist.service.app import make_app
from eraser_dist.service.facade import EraseService

APP_NAME = "eraser-api"


@serve.ingress()
class EraseApi:
    """One replica: the FastAPI app of the data root at ``root``, built on the replica."""

    def __init__(self, root: str):
        self.root = root

    def __serve_build_asgi_app__(self):
        return make_app(EraseService(self.root))


def start_api(root: str, host: str, port: int, replicas: int = 1) -> str:
    """Deploy the API of the data root ``root`` on this process's Ray cluster with
    ``replicas`` replicas (0 CPUs each: the worker ranks keep theirs); returns its URL once
    every replica answers. Ray Serve listens on ``host:port`` (a fixed port: Serve cannot
    pick one)."""
    if port == 0 or replicas < 1:
        raise EraserError("the HTTP API on Ray Serve needs a fixed port (not 0) and at least "
                          f"one replica; got port {port}, {replicas} replica(s)")
    serve.start(http_options=HTTPOptions(host=host, port=port))
    deployment = serve.deployment(EraseApi, name="EraseApi", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": 0})
    serve.run(deployment.bind(str(root)), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def stop_api() -> None:
    """Take the API's deployment down (the cluster's other Serve applications stay)."""
    serve.delete(APP_NAME)
