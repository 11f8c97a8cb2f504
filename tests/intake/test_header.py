"""Header facts read from the bytes as received (ortho_node.intake.header.EncodedHeader) equal pydicom's."""

from __future__ import annotations

import datetime as dt
import struct

import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from ortho_node.intake.header import HEADER_KEYWORDS, EncodedHeader, InstanceHeader
from tests.conftest import GE_SERIES
from tests.dicom_factory import DCMTK_CONVERSIONS, UNTERMINATED_SEQUENCE, mr_dataset, write, write_in_syntax


def _data_set_bytes(path) -> tuple[bytes, str]:
    """The data set after the file meta group, and its transfer syntax."""
    raw = path.read_bytes()
    (group_length,) = struct.unpack_from("<I", raw, 140)  # (0002,0000) UL value, after preamble and DICM
    return raw[144 + group_length:], str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _both(path) -> tuple[InstanceHeader, InstanceHeader]:
    body, syntax = _data_set_bytes(path)
    return InstanceHeader.from_dataset(EncodedHeader(body, syntax)), InstanceHeader.from_dataset(dcmread(path))


def test_real_big_endian_series_gives_pydicoms_facts():
    for path in sorted(GE_SERIES.glob("*.dcm"))[:5]:
        encoded, reference = _both(path)
        assert encoded == reference
        assert encoded.instance["rows"] and encoded.instance["echo_time"] and encoded.sop_uid


@pytest.mark.parametrize("syntax", sorted(set(DCMTK_CONVERSIONS) - {"1.2.840.10008.1.2.4.50"}))
def test_every_transfer_syntax_gives_pydicoms_facts(syntax, tmp_path):
    ds = mr_dataset(bits=8 if syntax == "1.2.840.10008.1.2.4.51" else 12)
    ds.ImageOrientationPatient = [0.0, 0.99, -0.01, 0.0, 0.01, -0.99]
    ds.EchoNumbers = 2
    encoded, reference = _both(write_in_syntax(ds, syntax, tmp_path))
    assert encoded == reference
    assert encoded.instance["echo_number"] == 2 and encoded.instance["image_type"].endswith("\\PRIMARY\\M\\ND")


@pytest.mark.parametrize("charset, description", [
    ("ISO_IR 192", "Kniegelenk rechts – Übersicht"),
    ("ISO_IR 100", "Genou droit à 3T"),
    (["", "ISO 2022 IR 87"], "膝関節 MRI"),
])
def test_character_sets_give_pydicoms_text(charset, description, tmp_path):
    ds = mr_dataset()
    ds.SpecificCharacterSet = charset
    ds.SeriesDescription = description
    ds.StudyDescription = description
    encoded, reference = _both(write(ds, tmp_path / "charset.dcm"))
    assert encoded == reference
    assert encoded.series["series_description"] == description


def test_malformed_and_missing_values_become_none_as_with_pydicom(tmp_path):
    ds = mr_dataset()
    ds.PixelSpacing = [0.5, 0.5, 0.5]  # three values where two belong
    del ds.EchoTime
    ds.SeriesDescription = ""
    path = write(ds, tmp_path / "odd.dcm")
    raw = path.read_bytes()
    # A value pydicom would refuse to write: an IS that is not a number.
    path.write_bytes(raw.replace(b"IS\x02\x001 ", b"IS\x02\x00x ", 1))
    encoded, reference = _both(path)
    assert encoded == reference
    assert encoded.instance["pixel_spacing"] is None and encoded.instance["echo_time"] is None
    assert encoded.series["series_description"] is None


def test_reading_stops_before_the_pixel_data():
    ds = mr_dataset()
    del ds.PixelData
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    # Garbage where the pixel data would be: never read, so no error.
    header = EncodedHeader(buffer.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00\xff\xff\xff\xff" + b"\x01" * 3,
                           "1.2.840.10008.1.2.1")
    assert InstanceHeader.from_dataset(header).sop_uid == ds.SOPInstanceUID


def test_header_keywords_are_exactly_what_the_facts_read():
    read: set[str] = set()

    class Recording(Dataset):
        def get(self, keyword, default=None):
            read.add(keyword)
            return super().get(keyword, default)

    InstanceHeader.from_dataset(Recording(mr_dataset()))
    assert read == set(HEADER_KEYWORDS)


def test_unparseable_data_set_raises():
    with pytest.raises(OSError):
        EncodedHeader(UNTERMINATED_SEQUENCE, "1.2.840.10008.1.2.1")


def test_patient_facts_and_study_date_for_the_consoles_search():
    ds = mr_dataset()
    ds.AccessionNumber, ds.PatientID, ds.PatientName, ds.StudyDate = "A-1", "PID-1", "DOE^JANE", "20250301"
    study = InstanceHeader.from_dataset(ds).study
    assert (study["accession_number"], study["patient_id"], study["patient_name"]) == ("A-1", "PID-1", "DOE^JANE")
    assert study["study_date"] == dt.date(2025, 3, 1)
    for value in ("2025.03.01", "20250301 "):  # ACR-NEMA's form, a padded value
        ds.StudyDate = value
        assert InstanceHeader.from_dataset(ds).study["study_date"] == dt.date(2025, 3, 1)
    for value in ("20251301", "2025", "yesterday", ""):
        ds.StudyDate = value
        assert InstanceHeader.from_dataset(ds).study["study_date"] is None, value
