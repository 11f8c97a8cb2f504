"""DICOMweb STOW-RS receiver (PS3.18 10.5) at ``/dicomweb/studies``: multipart/related bodies spooled to disk and
split into parts (multipart), each part handed to the same intake as a C-STORE (stow), the Store Instances
Response in DICOM JSON (response), who may send (access: bearer tokens, HTTP basic against ``console.users``) and
the routes (routes), on the console's port or a listener of its own (``[dicomweb]``)."""
