"""The summary series for viewers that draw neither SEG nor SR: secondary capture images (PS3.3 A.8.1).

One key image per analysed series (the slice where the structures cover most pixels) with the mask blended
in and a colour legend, and one page with the findings table. Every image carries a burned-in banner
"AI-generated - not for diagnostic use", the configured series description and Content Qualification
RESEARCH. No patient identifier is burned in (Burned In Annotation NO).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from highdicom import ContentQualificationValues
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from ortho_node.config import ResultsSettings
from ortho_node.labels import DIAGNOSIS_NAMES, Plane
from ortho_node.prediction import StudyPrediction
from reports import codes
from reports.seg import software_versions
from reports.sources import SourceSeries, key_slice, result_uid

BANNER = "AI-generated - not for diagnostic use"
_LEGEND_WIDTH = 300
_BANNER_HEIGHT = 56
_MIN_IMAGE_SIZE = 512  # small source images are enlarged (nearest neighbour) so the text stays legible
_ALPHA = 0.45


def build_summary(prediction: StudyPrediction, sources: Sequence[SourceSeries],
                  settings: ResultsSettings) -> list[SCImage]:
    """Key images (one per series with segmented structures) and the findings table page."""
    pages = [_key_image(prediction, source) for source in sources if source.segmentation.mask.any()]
    if prediction.findings:
        pages.append(_findings_page(prediction))
    series_uid = result_uid(prediction, "summary-series")
    return [_secondary_capture(prediction, sources[0], rgb, settings, series_uid, number)
            for number, rgb in enumerate(pages, start=1)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _grey(pixels: np.ndarray) -> np.ndarray:
    """Window a slice to its 1st-99th percentile as 8-bit grey."""
    low, high = np.percentile(pixels, (1, 99))
    scaled = (pixels.astype(np.float32) - low) / max(float(high - low), 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _key_image(prediction: StudyPrediction, source: SourceSeries) -> np.ndarray:
    seg = source.segmentation
    index = key_slice(seg.mask > 0)
    ref = seg.slices[index]
    pixels = dcmread(ref.path).pixel_array
    if ref.frame_number is not None:
        pixels = pixels[ref.frame_number - 1]
    rgb = np.repeat(_grey(pixels)[..., None], 3, axis=2).astype(np.float32)
    labels = seg.mask[index]
    present = [value for value in range(1, len(seg.structures)) if (labels == value).any()]
    for value in present:
        colour = np.asarray(codes.structure(seg.structures[value]).rgb, dtype=np.float32)
        inside = labels == value
        rgb[inside] = (1 - _ALPHA) * rgb[inside] + _ALPHA * colour
    image = Image.fromarray(rgb.astype(np.uint8))
    scale = max(1, -(-_MIN_IMAGE_SIZE // max(image.size)))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (image.width + _LEGEND_WIDTH, image.height + _BANNER_HEIGHT), "black")
    canvas.paste(image, (0, _BANNER_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    _banner(draw, prediction, f"{seg.plane.value} series, slice {index + 1} of {len(seg.slices)}")
    y = _BANNER_HEIGHT + 10
    for value in present:
        name = seg.structures[value]
        draw.rectangle((image.width + 12, y + 2, image.width + 30, y + 20), fill=codes.structure(name).rgb)
        draw.text((image.width + 40, y), name, fill="white", font=_font(16))
        y += 26
    return np.asarray(canvas)


def _findings_page(prediction: StudyPrediction) -> np.ndarray:
    columns = (("Finding", 20), ("Result", 470), ("Probability", 590), ("Threshold", 730),
               ("Sagittal / coronal / axial weight", 860))
    width, row_height = 1280, 34
    canvas = Image.new("RGB", (width, _BANNER_HEIGHT + 70 + row_height * len(prediction.findings)), "black")
    draw = ImageDraw.Draw(canvas)
    _banner(draw, prediction, f"{prediction.joint.value} findings")
    y = _BANNER_HEIGHT + 20
    for title, x in columns:
        draw.text((x, y), title, fill=(180, 180, 180), font=_font(18))
    for finding in prediction.findings:
        y += row_height
        weights = finding.plane_weights or {}
        cells = (
            DIAGNOSIS_NAMES[finding.label],
            "PRESENT" if finding.present else "absent",
            f"{finding.probability * 100:.1f} %",
            f"{finding.threshold * 100:.1f} %",
            # A plane the study lacks has no weight (the fusion ran over the others): shown as "-".
            " / ".join(f"{weights[p]:.2f}" if p in weights else "-" for p in (Plane.SAGITTAL, Plane.CORONAL,
                                                                               Plane.AXIAL))
            if weights else "-",
        )
        colour = (255, 120, 90) if finding.present else "white"
        for (_title, x), text in zip(columns, cells):
            draw.text((x, y), text, fill=colour, font=_font(18))
    return np.asarray(canvas)


def _banner(draw: ImageDraw.ImageDraw, prediction: StudyPrediction, subtitle: str) -> None:
    draw.rectangle((0, 0, draw.im.size[0], _BANNER_HEIGHT - 4), fill=(120, 20, 20))
    draw.text((10, 4), BANNER, fill="white", font=_font(22))
    draw.text((10, 30), f"{prediction.model.name} {prediction.model.version} - {subtitle}", fill="white",
              font=_font(16))


def patient_orientation(iop: Sequence[float]) -> tuple[str, str]:
    """PS3.3 C.7.6.1.1.1 Patient Orientation of the row and column directions (dominant axis only)."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    result = []
    for vector in (iop[:3], iop[3:]):
        axis = int(np.argmax(np.abs(vector)))
        result.append(letters[axis][0 if vector[axis] > 0 else 1])
    return result[0], result[1]


def _secondary_capture(prediction: StudyPrediction, source: SourceSeries, rgb: np.ndarray,
                       settings: ResultsSettings, series_uid: str, number: int) -> SCImage:
    # The patient coordinate system needs an orientation; every page takes the first series' orientation.
    iop = [float(v) for v in source.first.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    image = SCImage.from_ref_dataset(
        ref_dataset=source.first,
        pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=patient_orientation(iop),
        laterality=prediction.laterality,
        series_instance_uid=series_uid,
        series_number=settings.summary_series_number,
        sop_instance_uid=result_uid(prediction, "summary", str(number)),
        instance_number=number,
        manufacturer=settings.manufacturer,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=settings.summary_series_description.format(plane=""),
        institution_name=settings.institution_name or None,
        content_qualification=ContentQualificationValues.RESEARCH,
        manufacturer_model_name=prediction.model.name[:64],
        software_versions=software_versions(prediction.model),
        device_serial_number=settings.device_serial_number,
    )
    image.BurnedInAnnotation = "NO"
    image.ImageComments = BANNER
    # Stored and sent deflated (lossless, allowed for every SOP class, no codec needed): nearest-neighbour
    # enlarged grey slices, black margins and a text page shrink 15-40x (a real GE key image 1.38 MB -> 80 kB;
    # RLE gave 590 kB, JPEG-LS 162 kB). highdicom builds it uncompressed; pydicom deflates it when written.
    # ortho_node.delivery.scu also offers Explicit VR Little Endian and inflates for a peer that refuses it.
    image.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return image
