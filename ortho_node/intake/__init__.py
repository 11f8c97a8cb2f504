"""Intake: a received instance made durable before it is acknowledged (receive), the data folder (storage), the
catalog rows (catalog), header facts (header), association records (associations) and start-up recovery."""
