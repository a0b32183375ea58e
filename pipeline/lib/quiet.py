"""Keep TensorFlow's known start-up noise out of a stage's log, without changing what runs.

TensorFlow's C++ side writes straight to file descriptor 2, through absl, before
``TF_CPP_MIN_LOG_LEVEL`` is read: the oneDNN notice and CPU-feature lines, absl's
"before InitializeLog" warning, and at every epoch an ``E0000 ... NodeDef mentions attribute
use_unbounded_threadpool`` line (a tf.data graph attribute this TensorFlow build does not
know; harmless). Users read ``E`` and ``WARNING`` lines as failures. No setting silences
them at their source: absl ignores its threshold until ``InitializeLog`` (abseil-cpp#1718,
still open as #1957), and ``TF_ENABLE_ONEDNN_OPTS=0`` would hide the notice by turning
oneDNN off, changing speed and results.

So ``python -m pipeline NAME`` (pipeline/__main__.py, the only caller of ``install``)
sends fd 2 through a pipe to a small filter *process* that drops exactly these lines and
passes everything else on as it arrives (progress bars included). A process, not a thread:
when the stage dies (an abort in a native library, a segfault, SIGKILL) the filter is still
there to read what the pipe holds, so the last lines before a crash are never lost.
The filter ignores SIGINT, SIGTERM and SIGHUP (sent to the whole process group) and ends
when the last writer of the pipe is gone.

At a normal exit the stage writes an end mark into the pipe and waits until the filter has
passed on everything before it (the filter closes a second pipe, ``done``), not until the pipe
closes: a process the stage started may still hold the pipe (multiprocessing's resource
tracker, started by the first worker pool, lives until the stage has ended), and the filter
goes on passing its lines until it has.

The patterns are TensorFlow's texts, not an interface, written for tensorflow 2.21
(``WRITTEN_FOR``): on another version the filter stays off and says so in one line, and
tests/test_logs.py shows that this build still prints them without the filter
(docs/internals.md).
"""
from __future__ import annotations

import atexit
import os
import re
import select
import signal
import subprocess
import sys

WRITTEN_FOR = "2.21"  # tensorflow
NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} [\d:. ]+\d+ (port\.cc:\d+\] oneDNN custom operations are on"
    rb"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    rb"|node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool)"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)")
# A partial line that may still become noise is held back until its end arrives.
PREFIXES = (b"WARNING: All log", b"To enable the following", b"I0", b"W0", b"E0")


def install() -> None:
    """Route this process's fd 2 through the filter process (a no-op if fd 2 is not open)."""
    from pipeline.lib import compat

    if not compat.matches("tensorflow", WRITTEN_FOR):
        print(f"pipeline: the stderr filter was written for tensorflow {WRITTEN_FOR}, not "
              f"{compat.installed('tensorflow') or 'none installed'}: TensorFlow's start-up lines are shown as they are "
              "(pipeline/lib/quiet.py, docs/internals.md)", file=sys.stderr)
        return
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return
    read_end, write_end = os.pipe()
    done_read, done_write = os.pipe()
    # -I: the filter needs nothing but the standard library, and no site or environment
    child = subprocess.Popen([sys.executable, "-I", __file__, str(done_write)], stdin=read_end, stdout=original,
                             pass_fds=(done_write,))
    os.close(read_end)
    os.close(done_write)
    os.dup2(write_end, 2)
    os.close(write_end)

    def restore() -> None:  # at a normal exit: the filter passes on all this process wrote, then fd 2 is handed back
        try:
            sys.stderr.flush()
            _write(2, END)
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)
        ready, _, _ = select.select([done_read], [], [], 10)  # closed by the filter (or its end): EOF
        if not ready:
            print("pipeline: the stderr filter did not answer in 10 s; its last lines may come later", file=sys.stderr)
        child.poll()

    atexit.register(restore)


# Written into the pipe by ``restore``: one write under PIPE_BUF, so never split by other writers
END = b"\0pipeline.lib.quiet: end of the stage's output\n"


def pump(read_end: int, out: int, done: int | None = None) -> None:
    """Copy ``read_end`` to ``out`` until EOF, less the noise lines; at the ``END`` line, close ``done``."""
    pending = b""
    while chunk := os.read(read_end, 65536):
        pending += chunk
        *lines, pending = re.split(rb"(?<=[\n\r])", pending)
        if pending and not _may_be_noise(pending):
            lines.append(pending)
            pending = b""
        _write(out, b"".join(line for line in lines if not NOISE.match(line) and line != END))
        if END in lines and done is not None:
            os.close(done)
            done = None
    if pending and not NOISE.match(pending):
        _write(out, pending)


def _may_be_noise(partial: bytes) -> bool:
    return any(partial.startswith(p) or p.startswith(partial) for p in PREFIXES + (END,))


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


if __name__ == "__main__":  # the filter process: stdin is the pipe, stdout the real stderr
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # outlive the stage; EOF ends the filter
    try:
        pump(0, 1, int(sys.argv[1]))
    except OSError:  # the reader of our stdout went away: nothing left to show
        pass
