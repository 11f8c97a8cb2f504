"""Small synthetic MR instances for network tests, written in any transfer syntax (dcmtk converts)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID, generate_uid

PATIENT_NAME = "SYNTHETIC^PHIPATIENT"
PATIENT_ID = "PHI-7731-0042"
#: Explicit VR Little Endian bytes no reader can parse: a sequence of undefined length whose item never ends.
UNTERMINATED_SEQUENCE = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x01" * 9


def mr_dataset(*, study_uid: str | None = None, series_uid: str | None = None, sop_uid: str | None = None,
               rows: int = 64, columns: int = 64, bits: int = 12, seed: int = 0,
               instance_number: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 2**bits, size=(rows, columns), dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["frame-of-reference", ds.SeriesInstanceUID])  # one per series
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.Modality = "MR"
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.BodyPartExamined = "KNEE"
    ds.Laterality = "R"
    ds.SeriesDescription = "SAG PD FS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.ImagePositionPatient = [float(instance_number) * 4.0, -100.0, 100.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 3.0
    ds.EchoTime = 30.0
    ds.RepetitionTime = 3000.0
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = "FS"
    ds.MRAcquisitionType = "2D"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# dcmtk command lines converting an Explicit VR Little Endian file into each transfer syntax.
DCMTK_CONVERSIONS = {
    "1.2.840.10008.1.2": ["dcmconv", "+ti"],
    "1.2.840.10008.1.2.1": ["dcmconv", "+te"],
    "1.2.840.10008.1.2.2": ["dcmconv", "+tb"],
    "1.2.840.10008.1.2.1.99": ["dcmconv", "+td"],
    "1.2.840.10008.1.2.4.50": ["dcmcjpeg", "+eb"],
    "1.2.840.10008.1.2.4.51": ["dcmcjpeg", "+ee"],
    "1.2.840.10008.1.2.4.57": ["dcmcjpeg", "+el"],
    "1.2.840.10008.1.2.4.70": ["dcmcjpeg", "+e1"],
    "1.2.840.10008.1.2.4.80": ["dcmcjpls", "+el"],
    "1.2.840.10008.1.2.4.81": ["dcmcjpls", "+en"],
    "1.2.840.10008.1.2.5": ["dcmcrle"],
}
LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
         "1.2.840.10008.1.2.4.91"}


def write_in_syntax(ds: Dataset, syntax: str, folder: Path) -> Path:
    """Write ``ds`` in transfer syntax ``syntax`` (dcmtk for most, pydicom's encoders for JPEG 2000)."""
    source = write(ds, folder / "source-elle.dcm")
    target = folder / f"{syntax}.dcm"
    if syntax in DCMTK_CONVERSIONS:
        tool, *options = DCMTK_CONVERSIONS[syntax]
        subprocess.run([f"/usr/bin/{tool}", *options, str(source), str(target)], check=True,
                       capture_output=True)
    else:
        copy = ds.copy()
        options = {"j2k_cr": [20]} if syntax in LOSSY else {}
        copy.compress(syntax, encoding_plugin="pylibjpeg", **options)
        copy.save_as(target, enforce_file_format=True)
    return target
