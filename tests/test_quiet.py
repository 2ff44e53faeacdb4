"""caption_app/quiet.py's stderr filter: noise lines dropped, everything else byte for byte,
in work proportional to what is written (a huge line never stalls the writer).

No TensorFlow here: the filter is driven directly (`LineFilter.feed`) and through its
pump on a real pipe. Bounded work is shown by counting the bytes the filter's regular
expressions look at, never by timing.
"""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from caption_app import quiet

NOISE_LINE = b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. You may see\n"
CHUNK = 65536  # what the pump reads at a time


def _run(data: bytes, chunk: int = CHUNK, max_held: int = quiet.MAX_HELD_LINE) -> tuple[bytes, int]:
    """(what the filter passes on, bytes its regular expressions scanned) for `data` fed in `chunk`s."""
    lines = quiet.LineFilter(max_held=max_held)
    out = []
    for i in range(0, len(data), chunk):
        out.extend(lines.feed(data[i:i + chunk]))
    out.extend(lines.finish())
    return b"".join(out), lines.scanned


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, CHUNK])
def test_noise_is_dropped_and_other_lines_kept_byte_exact_across_chunk_boundaries(chunk):
    kept = [b"kept line\n", b"windows line\r\n", b"\r 50%|##", b"\r100%|###\n", b"\n", b"caf\xc3\xa9 \xff bytes\n",
            b"Traceback (most recent call last):\n"]
    data = NOISE_LINE + kept[0] + kept[1] + NOISE_LINE.replace(b"\n", b"\r\n") + b"".join(kept[2:]) \
        + NOISE_LINE + b"last line, no end"
    out, _ = _run(data, chunk)
    assert out == b"".join(kept) + b"last line, no end"


def test_a_cr_lf_split_across_chunks_is_one_line_end():
    lines = quiet.LineFilter()
    assert lines.feed(NOISE_LINE[:-1] + b"\r") == []  # held: a \n may follow
    assert lines.feed(b"\nkept\r") == []  # the noise line (with its \r\n) dropped; "kept\r" held
    assert lines.feed(b"next") == [b"kept\r"]  # no \n came: "kept\r" was a progress update
    assert lines.finish() == [b"next"]


def test_a_one_megabyte_line_costs_work_in_proportion_to_its_length():
    small, _ = _run(b"x" * 65536 + b"\n")
    assert small == b"x" * 65536 + b"\n"
    costs = []
    for size in (100_000, 1_000_000):
        line = b"y" * size + b"\n"
        out, scanned = _run(line)
        assert out == line
        assert scanned <= 2 * len(line) + CHUNK  # each byte scanned once for a line end, once for noise
        costs.append(scanned)
    # The old filter re-scanned the unfinished line for every chunk: 10x the line, ~100x the work.
    assert costs[1] / costs[0] < 11


def test_a_line_longer_than_the_cap_passes_through_undecided_in_bounded_memory():
    lines = quiet.LineFilter(max_held=1000)
    huge = b"z" * 5000
    passed = lines.feed(huge[:600]) + lines.feed(huge[600:])  # over the cap: out it goes
    assert b"".join(passed) == huge and lines._held_bytes == 0
    assert b"".join(lines.feed(b"\n" + NOISE_LINE + b"short\n")) == b"\nshort\n"  # the next lines are judged


def _pump_through_a_pipe(writes) -> tuple[str, int, int]:
    """Runs StderrFilter's pump on a real pipe; returns (sha256 of what it passed on, bytes, noise lines)."""
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    pump = threading.Thread(target=quiet.StderrFilter()._pump, args=(read_in, write_out), daemon=True)
    pump.start()
    digest, total, noise = hashlib.sha256(), 0, 0

    def drain():
        nonlocal total, noise
        while True:
            data = os.read(read_out, 1 << 20)
            if not data:
                break
            digest.update(data)
            total += len(data)
            noise += data.count(b"oneDNN")
        os.close(read_out)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    for data in writes():
        os.write(write_in, data)
    os.close(write_in)
    pump.join(timeout=120)
    reader.join(timeout=120)
    assert not pump.is_alive() and not reader.is_alive()
    return digest.hexdigest(), total, noise


def test_a_hundred_megabyte_stream_goes_through_the_pump_unchanged_except_noise():
    block = b"a" * 999 + b"\n"  # 1000-byte lines
    line = b"q" * (5 << 20)  # and a 5 MB line without end, over the cap

    def writes():
        for i in range(95):
            yield block * 1000 + (NOISE_LINE if i % 10 == 0 else b"")
        yield line

    expected = hashlib.sha256()
    for i in range(95):
        expected.update(block * 1000)
    expected.update(line)
    digest, total, noise = _pump_through_a_pipe(writes)
    assert noise == 0 and total == 95 * 1_000_000 + len(line)
    assert digest == expected.hexdigest()

    out, scanned = _run(b"".join(writes()))
    assert len(out) == total and scanned <= 2 * (95 * 1_000_000 + len(line) + 10 * len(NOISE_LINE))
