"""Sending DICOM objects to other nodes: C-ECHO / C-STORE SCU (scu), the STOW-RS sender for DICOMweb destinations
(stow), and the durable result delivery queue (queue), what each outcome means and the backoff (outcomes), and the
worker (worker) that picks the sender by the destination's protocol."""
