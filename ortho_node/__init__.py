"""OrthoDiffusion Node: a DICOM node that runs the OrthoDiffusion MSK MRI model."""

__version__ = "0.1.0"
