"""Key images for the admin console: a stored result image (the summary secondary captures) as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread

MAX_WIDTH = 900


def dicom_to_png(path: Path, *, max_width: int = MAX_WIDTH) -> bytes:
    """The first frame of a DICOM image as PNG: RGB as stored, monochrome windowed to its 1st-99th
    percentile (MONOCHROME1 inverted); wider images are scaled down to ``max_width``."""
    ds = dcmread(path)
    pixels = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="RGB")
    else:
        grey = pixels.astype(np.float32)
        low, high = np.percentile(grey, (1, 99))
        grey = np.clip((grey - low) / max(float(high - low), 1e-6), 0.0, 1.0) * 255
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        image = Image.fromarray(grey.astype(np.uint8), mode="L")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
