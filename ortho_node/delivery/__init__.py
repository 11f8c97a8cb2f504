"""Sending DICOM objects to other nodes: C-ECHO and C-STORE SCU (and, later, the durable result queue)."""
