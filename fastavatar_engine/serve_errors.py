"""The two ways a request handler of ``fastavatar serve`` ends without a result, shared by
:mod:`.serve` and the handler mixins (:mod:`.serve_expressions`): a :class:`RequestError`
(answered with an ``error`` frame of its kind) and :class:`Cancelled` (the client's ``cancel``
frame arrived; answered with kind ``cancelled``)."""

from __future__ import annotations


class RequestError(Exception):
    """A request that cannot be served; ``kind`` is one of protocol.ERROR_KINDS."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Cancelled(Exception):
    """The client cancelled the running request."""
