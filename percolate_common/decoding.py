"""Requests whose bytes are not a valid protobuf message get INVALID_ARGUMENT.

grpc.aio decodes a request before the handler runs; when that fails it logs a traceback
and answers UNKNOWN ("Unexpected DecodeError"), which a client cannot tell from a server
bug. This interceptor gives every method a deserializer that returns a marker instead of
raising, and a handler that answers the marker with INVALID_ARGUMENT before the real
handler sees it. Both servers install it (``grpc.aio.server(interceptors=[...])``).
"""
from __future__ import annotations

import inspect

import grpc


class _Undecodable:
    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _safe(deserializer):
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)  # Message.FromString is a bound classmethod
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "protobuf")

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as err:  # DecodeError, or anything a custom deserializer raises
            return _Undecodable(f"the request is not a valid {name} message ({err})")
    return deserialize


async def _reject(request, context) -> None:
    if isinstance(request, _Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


async def _checked(requests, context):
    async for request in requests:
        await _reject(request, context)
        yield request


def _wrap(behavior, streaming_request: bool):
    """``behavior`` with its requests checked first, of the same kind (coroutine or async
    generator), since grpc.aio picks how to call a handler by its kind."""
    def first(request, context):
        return _checked(request, context) if streaming_request else request

    if inspect.isasyncgenfunction(behavior):
        async def generator(request, context):
            if not streaming_request:
                await _reject(request, context)
            async for response in behavior(first(request, context), context):
                yield response
        return generator
    if inspect.iscoroutinefunction(behavior):
        async def coroutine(request, context):
            if not streaming_request:
                await _reject(request, context)
            return await behavior(first(request, context), context)
        return coroutine
    return None  # a synchronous handler: left as it is


_FACTORIES = {
    ("unary_unary", False): grpc.unary_unary_rpc_method_handler,
    ("unary_stream", False): grpc.unary_stream_rpc_method_handler,
    ("stream_unary", True): grpc.stream_unary_rpc_method_handler,
    ("stream_stream", True): grpc.stream_stream_rpc_method_handler,
}


def _guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    for (kind, streaming_request), factory in _FACTORIES.items():
        behavior = getattr(handler, kind)
        if behavior is None:
            continue
        wrapped = _wrap(behavior, streaming_request)
        if wrapped is None:
            return handler
        return factory(wrapped, request_deserializer=_safe(handler.request_deserializer),
                       response_serializer=handler.response_serializer)
    return handler


class RejectUndecodableRequests(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT, without a traceback, for request bytes that do not decode."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method not in self._handlers:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None  # unknown method: gRPC answers UNIMPLEMENTED
            self._handlers[method] = _guarded(handler)
        return self._handlers[method]
