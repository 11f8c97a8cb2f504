"""Audit and operations: the append-only audit trail (trail), per-study timeline and results (timeline), the
read-only views shared by the CLI and the console (views), and Prometheus metrics (prometheus)."""
