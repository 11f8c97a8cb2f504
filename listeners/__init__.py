"""The node's network edges: the DICOM Storage SCP (association policy, worker processes, the fast receiving
path in ``fastpath``) and the HTTP edge on Starlette + uvicorn (``web``: listeners, /metrics and /healthz),
with the admin console (``console``) and the REST API (``api``) on the console's port."""
