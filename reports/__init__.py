"""DICOM result objects: DICOM-SEG (seg), TID 1500 SR (sr), summary series (summary); entry point results."""
