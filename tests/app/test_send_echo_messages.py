"""Issue 22, item 3: ``ortho-node send`` and ``echo`` say what went wrong the way dcmtk's tools do."""

from __future__ import annotations

import socket
import subprocess
import threading

from ortho_node.app.cli.main import main
from ortho_node.delivery.scu import Failure, RemoteNode, echo_peer
from tests.conftest import dcmtk
from tests.dicom_factory import mr_dataset, write
from tests.node_process import free_port


def test_send_of_a_text_file_says_it_is_not_dicom(start_node, tmp_path, capsys):
    node = start_node()
    text = tmp_path / "notdicom.txt"
    text.write_text("hello")
    good = tmp_path / "good.dcm"
    write(mr_dataset(), good)
    assert main(["send", str(text), str(good), "--to", f"ORTHODIFF@127.0.0.1:{node.scp.port}"]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"FAILED {text}: not a DICOM file (not sent)\n"
    assert captured.out.startswith("sent 1 of 2 to ")


def test_echo_and_send_to_a_wrong_called_ae_give_the_rejection_reason(start_node, tmp_path, capsys):
    node = start_node()
    wrong = f"WRONG@127.0.0.1:{node.scp.port}"
    assert main(["echo", wrong]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"C-ECHO to {wrong} as ORTHOSCU: association rejected: Called AE Title Not Recognized " \
                           "(permanent)\n"
    # dcmtk's echoscu says the same about the same rejection
    echoscu = subprocess.run([dcmtk("echoscu"), "-aec", "WRONG", "127.0.0.1", str(node.scp.port)],
                             check=False, capture_output=True, text=True, timeout=30)
    assert "Called AE Title Not Recognized" in echoscu.stdout + echoscu.stderr
    path = tmp_path / "one.dcm"
    write(mr_dataset(), path)
    assert main(["send", str(path), "--to", wrong]) == 1
    assert capsys.readouterr().err == f"FAILED {path}: association rejected: Called AE Title Not Recognized " \
                                      "(permanent)\n"


def test_echo_with_no_connection(capsys):
    port = free_port()
    assert main(["echo", f"ORTHODIFF@127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().err == (f"C-ECHO to ORTHODIFF@127.0.0.1:{port} as ORTHOSCU: cannot connect to "
                                       f"127.0.0.1:{port}\n")


def test_echo_to_a_peer_that_never_answers():
    """A port that accepts the connection and then stays silent: no response, not 'cannot connect'."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
        thread.start()
        result = echo_peer(RemoteNode("ANY", "127.0.0.1", server.getsockname()[1]), timeout=1.0)
        thread.join(5)
        for connection in accepted:
            connection.close()
    assert result.status is None and result.failure is Failure.NO_ASSOCIATION
    assert result.reason == "no response to the association request (timeout or abort)"
