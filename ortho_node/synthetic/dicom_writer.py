"""DICOM MR Image Storage instances for a synthetic series: complete, consistent headers, one file per slice.

Every date, time and UID derives from the study seed, never from the clock, so output is byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

import ortho_node
from ortho_node.synthetic.protocol import PROTOCOLS
from ortho_node.synthetic.generator import SyntheticSeries, SyntheticStudy
from ortho_node.synthetic.render import SequenceParams

MANUFACTURER = "OrthoDiffusion Node"
MODEL_NAME = "Synthetic MSK MRI"


def _ds(value: float, digits: int = 6) -> str:
    """A DS string of at most 16 characters."""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text[:16]


def _vector(values: np.ndarray, digits: int = 6) -> list[str]:
    return [_ds(float(v), digits) for v in values]


def _study_header(study: SyntheticStudy) -> Dataset:
    """Patient, study, equipment and frame-of-reference attributes shared by every instance."""
    protocol, patient = PROTOCOLS[study.joint], study.patient
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age_years:03d}Y"
    ds.PatientSize = _ds(patient.height_m, 2)
    ds.PatientWeight = _ds(patient.weight_kg, 1)
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = "093000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{study.seed % 10**8}"
    ds.AccessionNumber = f"SYN{study.seed:010d}"[:16]
    ds.StudyDescription = f"MRI {protocol.body_part} {'RIGHT' if study.laterality == 'R' else 'LEFT'} (SYNTHETIC)"
    ds.Modality = "MR"
    ds.BodyPartExamined = protocol.body_part
    ds.Laterality = study.laterality
    ds.PatientPosition = protocol.patient_position
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.InstitutionName = "Synthetic"
    ds.StationName = "SYNTH"
    ds.SoftwareVersions = ortho_node.__version__
    ds.DeviceSerialNumber = "0"
    ds.ReceiveCoilName = protocol.coil
    ds.TransmitCoilName = "Body"
    return ds


def _sequence_header(ds: Dataset, seq: SequenceParams) -> None:
    """Scanning sequence, variant, options and name: fast spin echo, or the steady-state gradient echo."""
    if seq.weighting.gradient_echo:
        # DESS: a gradient echo in steady state, FID (SS) and time-reversed echo (TRSS), water-only excitation
        # (Siemens writes WE among the scan options). Geometry stays the protocol's multi-slice one.
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = ["SS", "TRSS"]
        ds.ScanOptions = ["WE"] if seq.weighting.fat_suppressed else ""
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = "de2d1"
        return
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = ["SK", "SP"]
    ds.ScanOptions = ["FS"] if seq.weighting.fat_suppressed else ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = f"tse2d1_{seq.echo_train_length}"


def _series_header(ds: Dataset, study: SyntheticStudy, series: SyntheticSeries) -> None:
    geometry, seq = series.geometry, series.sequence
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.ProtocolName = f"{ds.BodyPartExamined} {series.description}"
    ds.SeriesDate = study.study_date
    ds.SeriesTime = f"0930{series.number:02d}"
    ds.AcquisitionNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    _sequence_header(ds, seq)
    ds.RepetitionTime = _ds(seq.repetition_time, 1)
    ds.EchoTime = _ds(seq.echo_time, 2)
    ds.EchoTrainLength = seq.echo_train_length
    ds.EchoNumbers = 1
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(seq.imaging_frequency, 6)
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = _ds(seq.field_strength, 1)
    ds.FlipAngle = _ds(seq.flip_angle, 1)
    ds.SliceThickness = _ds(geometry.slice_thickness, 3)
    ds.SpacingBetweenSlices = _ds(geometry.slice_spacing, 3)
    ds.PixelSpacing = _vector(np.array([geometry.pixel_spacing, geometry.pixel_spacing]), 6)
    ds.ImageOrientationPatient = _vector(np.concatenate([geometry.row_dir, geometry.col_dir]), 6)
    ds.ImagesInAcquisition = geometry.n_slices
    ds.AcquisitionMatrix = [0, geometry.cols, geometry.rows, 0]
    ds.InPlanePhaseEncodingDirection = "ROW" if series.plane.value == "sagittal" else "COL"
    ds.PixelBandwidth = "200"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = geometry.rows, geometry.cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "1000", "2000"


def instances(study: SyntheticStudy, series: SyntheticSeries) -> list[Dataset]:
    """One dataset per slice of ``series``, with file meta, ready to save."""
    header = _study_header(study)
    _series_header(header, study, series)
    geometry, out = series.geometry, []
    for k in range(geometry.n_slices):
        ds = Dataset()
        ds.update(header)
        sop_uid = generate_uid(entropy_srcs=[series.uid, str(k)])
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ContentDate = ds.AcquisitionDate = study.study_date
        ds.ContentTime = ds.AcquisitionTime = f"0930{series.number:02d}.{k:03d}"
        position = geometry.slice_position(k)
        ds.ImagePositionPatient = _vector(position, 4)
        ds.SliceLocation = _ds(float(position @ geometry.normal), 4)
        pixels = series.pixels[k]
        ds.SmallestImagePixelValue, ds.LargestImagePixelValue = int(pixels.min()), int(pixels.max())
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        out.append(ds)
    return out


def write_series(study: SyntheticStudy, series: SyntheticSeries, directory: Path) -> list[Path]:
    """Write ``series`` as ``directory/IM%04d.dcm`` files; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in instances(study, series):
        path = directory / f"IM{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

