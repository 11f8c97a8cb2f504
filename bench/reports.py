"""Result objects benchmark: build SEG + SR + summary for a three-plane synthetic knee study, then deliver
them to a real Orthanc over loopback through the durable queue (one association).

The study comes from ``ortho_node.synthetic`` (sagittal, coronal, axial series with exact ground truth);
its ground-truth labels stand in for the model's masks. Prints seconds per stage, median of ``--repeat``.

    python3 bench/reports.py [--seed 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ortho_node.config import load_settings  # noqa: E402
from ortho_node.db import migrations  # noqa: E402
from ortho_node.db.engine import make_engine, make_session_factory  # noqa: E402
from ortho_node.delivery.scu import RemoteNode, send_files  # noqa: E402
from ortho_node.delivery.worker import DeliveryService  # noqa: E402
from ortho_node.labels import DIAGNOSIS_LABELS, MODEL_PLANES, Joint  # noqa: E402
from ortho_node.prediction import Finding, ModelIdentity, SeriesSegmentation, SliceRef, StudyPrediction  # noqa: E402
from reports.results import build_results, write_result_objects  # noqa: E402
from tests.reports.orthanc import Orthanc  # noqa: E402


def synthetic_prediction(folder: Path, seed: int) -> tuple[StudyPrediction, list[Path]]:
    from ortho_node.synthetic.dicom_writer import write_series
    from ortho_node.synthetic.structures import structure_names
    from ortho_node.synthetic.generator import generate_study

    study = generate_study(Joint.KNEE, seed)
    segmentations, files = [], []
    for series in study.series:
        paths = write_series(study, series, folder / series.uid)
        refs = tuple(SliceRef(_sop_uid(p), p) for p in paths)
        segmentations.append(SeriesSegmentation(series.uid, series.plane, refs, series.labels,
                                                structure_names(Joint.KNEE)))
        files += paths
    findings = tuple(Finding(label, probability=0.9 if value else 0.1, threshold=0.5,
                             plane_weights=dict(zip(MODEL_PLANES, (0.5, 0.3, 0.2))))
                     for label, value in study.diagnosis.items())
    assert tuple(study.diagnosis) == DIAGNOSIS_LABELS[Joint.KNEE]
    prediction = StudyPrediction(study.study_uid, Joint.KNEE, study.laterality, tuple(segmentations), findings,
                                 ModelIdentity("OrthoDiffusion-knee", "bench"))
    return prediction, files


def _sop_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        work = Path(tmp)
        prediction, sources = synthetic_prediction(work / "study", args.seed)
        shapes = [seg.mask.shape for seg in prediction.segmentations]
        orthanc = Orthanc(work / "orthanc")
        try:
            remote = RemoteNode(Orthanc.AE_TITLE, "127.0.0.1", orthanc.dicom_port)
            assert all(r.ok for r in send_files(remote, sources))
            build, write, deliver = [], [], []
            for run in range(args.repeat):
                settings = load_settings(environ={}, overrides={
                    "storage.data_dir": str(work / f"node-{run}"), "destinations": [f"PACS={remote}"]})
                start = time.perf_counter()
                objects = build_results(prediction, settings).datasets
                build.append(time.perf_counter() - start)
                start = time.perf_counter()
                files = write_result_objects(objects, work / f"results-{run}")
                write.append(time.perf_counter() - start)
                size = sum(f.stat().st_size for f in files) / 1e6
                engine = make_engine(settings.database_url)
                migrations.upgrade(engine)
                service = DeliveryService(settings, make_session_factory(engine))
                start = time.perf_counter()
                service.enqueue_files(files)
                service.worker.run_once()
                deliver.append(time.perf_counter() - start)
                engine.dispose()
        finally:
            orthanc.stop()
    print(f"three-plane knee study {shapes}: {len(objects)} result objects, {size:.1f} MB")
    for name, values in (("build SEG + SR + summary", build), ("write (fsync)", write),
                         ("deliver to Orthanc (queue + C-STORE)", deliver)):
        print(f"{name:40s} {statistics.median(values):6.2f} s   (runs: {', '.join(f'{v:.2f}' for v in values)})")
    total = statistics.median(build) + statistics.median(write) + statistics.median(deliver)
    print(f"{'total':40s} {total:6.2f} s   goal < 3 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
