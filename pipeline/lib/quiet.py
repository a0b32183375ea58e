"""Keep TensorFlow's known start-up noise out of a stage's log, without changing what runs.

TensorFlow's C++ side writes straight to file descriptor 2, through absl, before
``TF_CPP_MIN_LOG_LEVEL`` is read: the oneDNN notice and CPU-feature lines, absl's
"before InitializeLog" warning, and at every epoch an ``E0000 ... NodeDef mentions attribute
use_unbounded_threadpool`` line (a tf.data graph attribute this TensorFlow build does not
know; harmless). Users read ``E`` and ``WARNING`` lines as failures, so a stage's stderr
goes through a pipe that drops exactly these lines and passes everything else through
as it arrives (progress bars included). Any other warning or error still shows.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading

NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} [\d:. ]+\d+ (port\.cc:\d+\] oneDNN custom operations are on"
    rb"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    rb"|node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool)"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)")
# A partial line that may still become noise is held back until its end arrives.
PREFIXES = (b"WARNING: All log", b"To enable the following", b"I0", b"W0", b"E0")


def install() -> None:
    """Route this process's fd 2 through the filter (once; a no-op if stderr is not a real fd)."""
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=_pump, args=(read_end, original), daemon=True, name="stderr-filter")
    thread.start()

    def restore() -> None:  # at exit: hand fd 2 back, let the pump drain what is left
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=5)

    atexit.register(restore)


def _pump(read_end: int, out: int) -> None:
    pending = b""
    while chunk := os.read(read_end, 65536):
        pending += chunk
        *lines, pending = re.split(rb"(?<=[\n\r])", pending)
        if pending and not _may_be_noise(pending):
            lines.append(pending)
            pending = b""
        _write(out, b"".join(line for line in lines if not NOISE.match(line)))
    if pending and not NOISE.match(pending):
        _write(out, pending)
    os.close(read_end)


def _may_be_noise(partial: bytes) -> bool:
    return any(partial.startswith(p) or p.startswith(partial) for p in PREFIXES)


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
