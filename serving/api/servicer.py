"""Registers ``tessera.v1.VideoGeneration`` on a gRPC server so that undecodable request bytes
get ``INVALID_ARGUMENT``, not ``UNKNOWN: Unexpected <class '...DecodeError'>``.

Why this exists: in Ray Serve's gRPC proxy the request bytes are parsed by grpcio itself, with
the ``request_deserializer`` of the method handlers that the servicer function registers (Ray's
``gRPCGenericServer._override_method_handler`` in ``ray/serve/_private/grpc_util.py`` replaces
the handlers' behaviours and ``response_serializer`` but keeps their ``request_deserializer``).
When ``GenerateRequest.FromString`` raises ``DecodeError``, grpcio's asyncio server
(``_handle_exceptions`` in ``grpc/_cython/_cygrpc/aio/server.pyx.pxi``) answers
``UNKNOWN`` with ``'Unexpected %s: %s' % (type(e), e)``, before Ray, authentication or the
Gateway see the call; and Ray's ``gRPCGenericServer`` takes no server interceptors
(``interceptors=()``).

So :func:`add_VideoGenerationServicer_to_server` (a drop-in for the generated function of the
same name, given to Ray as ``grpc_servicer_functions``) registers the same service with

1. request deserializers that never raise: bytes that do not parse become an
   :class:`UndecodableRequest` marker instead, and
2. behaviours wrapped *after* Ray replaced them: a marker is answered with
   ``context.abort(INVALID_ARGUMENT, ...)`` right there, in the proxy; any real message goes on
   to Ray's behaviour (and from there to the Gateway) unchanged.

Only generic handlers are registered (not grpcio's "registered method" fast path, whose
handler table Ray builds privately where it cannot be wrapped); clients calling with
``_registered_method=True`` are served through the generic handlers all the same.

On a plain ``grpc.aio`` server (tests, no Ray) the same function works: the wrapped behaviour
is then the servicer's own method.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.metrics import record_rejection

SERVICE = "tessera.v1.VideoGeneration"

# method -> (request type, response type, response is a stream)
METHODS: dict[str, tuple[type, type, bool]] = {
    "Generate": (pb.GenerateRequest, pb.GenerateEvent, True),
    "SubmitJob": (pb.GenerateRequest, pb.Job, False),
    "GetJob": (pb.GetJobRequest, pb.Job, False),
    "WatchJob": (pb.WatchJobRequest, pb.GenerateEvent, True),
    "CancelJob": (pb.CancelJobRequest, pb.Job, False),
    "ListJobs": (pb.ListJobsRequest, pb.ListJobsResponse, False),
    "SubmitBatch": (pb.SubmitBatchRequest, pb.Batch, False),
    "GetBatch": (pb.GetBatchRequest, pb.Batch, False),
    "ListBatches": (pb.ListBatchesRequest, pb.ListBatchesResponse, False),
    "CancelBatch": (pb.CancelBatchRequest, pb.Batch, False),
    "RetryBatch": (pb.RetryBatchRequest, pb.Batch, False),
}


@dataclasses.dataclass(frozen=True)
class UndecodableRequest:
    """What the request deserializer returns for bytes that are not a valid message."""

    type_name: str
    size: int

    @property
    def message(self) -> str:
        return (
            f"the request body ({self.size} bytes) is not a valid {self.type_name} message: "
            f"send a serialized tessera.v1 protobuf"
        )


def safe_deserializer(message_type: type) -> Callable[[bytes], Any]:
    """``message_type.FromString`` that returns an :class:`UndecodableRequest` instead of raising."""
    type_name = message_type.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError, TypeError, RuntimeError):  # upb raises DecodeError; be safe with the rest
            return UndecodableRequest(type_name, len(data) if data is not None else 0)

    deserialize.__qualname__ = deserialize.__name__ = f"safe_{message_type.__name__}_FromString"
    return deserialize


async def _abort(request: UndecodableRequest, context) -> None:
    record_rejection("grpc", "invalid")  # counted here, in the proxy: the Gateway never sees the call
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


def _guard_unary(behaviour: Callable) -> Callable:
    @functools.wraps(behaviour)
    async def unary(request, context):
        if isinstance(request, UndecodableRequest):
            await _abort(request, context)
        result = behaviour(request, context)
        if hasattr(result, "__await__"):
            result = await result
        return result

    return unary


def _guard_stream(behaviour: Callable) -> Callable:
    @functools.wraps(behaviour)
    async def stream(request, context):
        if isinstance(request, UndecodableRequest):
            await _abort(request, context)
        result = behaviour(request, context)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        else:  # a synchronous generator (plain servicers in tests)
            for item in result:
                yield item

    return stream


def guard_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with its request-side behaviour answering undecodable requests itself."""
    if handler.request_streaming:  # no client-streaming methods in tessera.v1; leave any as they are
        return handler
    if handler.response_streaming:
        return handler._replace(unary_stream=_guard_stream(handler.unary_stream))
    return handler._replace(unary_unary=_guard_unary(handler.unary_unary))


def method_handlers(servicer, methods: dict[str, tuple[type, type, bool]] = METHODS) -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers, with deserializers that never raise."""
    handlers = {}
    for name, (request_type, response_type, streaming) in methods.items():
        factory = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
        handlers[name] = factory(
            getattr(servicer, name),
            request_deserializer=safe_deserializer(request_type),
            response_serializer=response_type.SerializeToString,
        )
    return handlers


def add_VideoGenerationServicer_to_server(servicer, server) -> None:  # noqa: N802 - the generated function's name
    """Register ``tessera.v1.VideoGeneration``; drop-in for the generated function of this name."""
    add_guarded_service(server, SERVICE, method_handlers(servicer))


def add_guarded_service(server, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
    """Register ``service`` (its handlers from :func:`method_handlers`) so that undecodable
    requests are answered INVALID_ARGUMENT in the proxy, as described above."""
    generic = grpc.method_handlers_generic_handler(service, handlers)
    # Ray's gRPCGenericServer swaps in its own behaviours here, in place, in generic._method_handlers.
    server.add_generic_rpc_handlers((generic,))
    # Then guard whatever behaviours the server ended up with (Ray's, or the servicer's own).
    table = getattr(generic, "_method_handlers", None)
    if not isinstance(table, dict):  # grpcio changed its generic handler: fail loudly at start-up
        raise RuntimeError("grpc.method_handlers_generic_handler has no _method_handlers table to guard")
    for method, handler in list(table.items()):
        table[method] = guard_handler(handler)
