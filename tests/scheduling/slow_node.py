"""``python -m tests.scheduling.slow_node DATA_DIR PORT``: a real node whose pipeline blocks (a stand-in for
a long GPU stage), for killing it while a job runs. Settings come from ORTHO_NODE_* like ``serve``."""

from __future__ import annotations

import sys
import threading
import time

from ortho_node.app.node import Node
from ortho_node.config import load_settings
from ortho_node.app.logs import configure_logging
from ortho_node.scheduling.pipeline import Pipeline


class BlockingPipeline(Pipeline):
    def run(self, assembled, *, job_id=None):
        time.sleep(600)
        return super().run(assembled, job_id=job_id)


def main() -> None:
    data_dir, port = sys.argv[1], int(sys.argv[2])
    settings = load_settings(overrides={"storage.data_dir": data_dir, "dicom.port": port, "dicom.host": "127.0.0.1",
                                        "dicom.workers": 1})
    configure_logging("INFO")
    node = Node(settings, pipeline_factory=BlockingPipeline)
    node.prepare()
    node.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
