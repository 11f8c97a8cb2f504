"""The node's network edges: the DICOM Storage SCP (association policy, worker processes, the fast receiving
path in ``fastpath``), the metrics/health endpoint and the admin console (``console``)."""
