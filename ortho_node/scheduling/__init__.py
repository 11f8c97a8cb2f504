"""Scheduling: completeness timers per study, the durable job queue, the worker pool, start-up recovery."""
