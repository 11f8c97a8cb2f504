"""The REST API under ``/api/v1`` on the console's port: read-only JSON views of studies (with the console's
filters), a study's timeline, results and findings, jobs, deliveries and destinations (routes), and its
OpenAPI 3.1 document at ``/api/v1/openapi.json`` (openapi). Data from ``ortho_node.audit.views``."""
