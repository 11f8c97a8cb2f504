"""Deflated result objects (the summary images): sent deflated to a peer that accepts it, inflated for one that
accepts only Explicit VR Little Endian; the data set arrives unchanged either way."""

from __future__ import annotations

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom import AE, evt

from ortho_node.delivery.scu import RemoteNode, send_files
from tests.dicom_factory import mr_dataset, write
from tests.node_process import free_port


class Peer:
    """A Storage SCP accepting secondary captures in the given transfer syntaxes only; keeps what it got."""

    def __init__(self, syntaxes: list[str]) -> None:
        self.port = free_port()
        self.received: list[tuple[str, bytes]] = []  # (transfer syntax of the context, pixel data)
        ae = AE("PEER")
        ae.add_supported_context(SecondaryCaptureImageStorage, syntaxes)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event) -> int:
        self.received.append((str(event.context.transfer_syntax), event.dataset.PixelData))
        return 0x0000


@pytest.fixture
def deflated_file(tmp_path):
    ds = mr_dataset(rows=32, columns=32)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return write(ds, tmp_path / "summary.dcm"), ds.PixelData


@pytest.mark.parametrize("accepted", [[DeflatedExplicitVRLittleEndian], [ExplicitVRLittleEndian]])
def test_deflated_object_reaches_a_peer_in_the_syntax_it_accepts(deflated_file, accepted):
    path, pixels = deflated_file
    peer = Peer(accepted)
    try:
        [result] = send_files(RemoteNode("PEER", "127.0.0.1", peer.port), [path], timeout=10)
    finally:
        peer.server.shutdown()
    assert result.ok, result.reason
    assert peer.received == [(str(accepted[0]), pixels)]


def test_a_peer_refusing_both_syntaxes_gets_nothing(deflated_file):
    from pydicom.uid import JPEGBaseline8Bit

    from ortho_node.delivery.scu import Failure

    path, _ = deflated_file
    peer = Peer([JPEGBaseline8Bit])  # never transcoded into a lossy syntax
    try:
        [result] = send_files(RemoteNode("PEER", "127.0.0.1", peer.port), [path], timeout=10)
    finally:
        peer.server.shutdown()
    assert result.status is None and result.failure is Failure.NO_CONTEXT
    assert peer.received == []
