"""The receiving fast path: event-driven pynetdicom reactors, the PDU length guard, and the DIMSE bytes of a
C-STORE decoded and encoded directly."""
