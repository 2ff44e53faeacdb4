"""export.client against an address where nothing listens: one error line naming it, exit code 2.

Only 127.0.0.1 is contacted: a port is bound to get a free number, then closed, so the
connection is refused at once.
"""

from __future__ import annotations

import socket

import pytest

from export import client


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8 not looked at: the server is never reached")
    return str(path)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert captured.out == ""
    return lines[0]


def test_rest_with_nothing_listening_is_one_error_line(image, capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    assert client.main(["--rest", url, image]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: nothing is listening at " + url) and "--rest" in line


def test_grpc_with_nothing_listening_is_one_error_line(image, capsys):
    pytest.importorskip("grpc", reason="grpcio is not installed")
    pytest.importorskip("tensorflow_serving.apis", reason="tensorflow-serving-api is not installed")
    import tensorflow  # noqa: F401 (imported here: the client's quiet import then changes nothing in pytest)

    target = f"127.0.0.1:{_free_port()}"
    assert client.main(["--grpc", target, image]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: the gRPC server at {target} is not reachable: nothing is listening")


def test_an_image_that_does_not_read_is_one_error_line(tmp_path, capsys):
    assert client.main(["--rest", "http://127.0.0.1:1", str(tmp_path / "missing.jpg")]) == 2
    assert "cannot read image" in _one_error_line(capsys)
