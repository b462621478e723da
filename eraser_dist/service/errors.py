"""Service errors: user mistakes that carry the HTTP status they answer with.

All are :class:`~eraser_dist.errors.EraserError`, so the CLI prints them on one line; the HTTP
API answers ``{"error": {"status": ..., "message": ...}}`` with ``status``.
"""

from __future__ import annotations

from ..errors import EraserError


class ServiceError(EraserError):
    status = 400


class BadRequest(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class TooLarge(ServiceError):
    status = 413
