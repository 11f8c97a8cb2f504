"""Several processes on one PostgreSQL database and one store (issue 25): roles (``roles``), the lease under which
work is claimed (``lease``), the nodes table and its heartbeats (``registry``, ``heartbeat``) and the PostgreSQL
LISTEN/NOTIFY wake-ups of idle processors (``wakeup``). SQLite keeps one process doing everything."""
