"""Sending DICOM objects to other nodes: C-ECHO / C-STORE SCU (scu), and the durable result delivery queue
(queue), its retry policy (policy) and worker (worker)."""
