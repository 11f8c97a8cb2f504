"""The node's HTTP edge on one framework (Starlette, served by uvicorn): a listener runs an ASGI application on
its own thread and event loop (listener), shared response headers (headers), and the operations application:
Prometheus ``/metrics`` and ``/healthz`` (operations). The console's routes live in ``listeners.console``."""
