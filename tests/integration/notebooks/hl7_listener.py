"""python-hl7's MLLP server as a process of its own (the stand-in for a hospital's interface engine).

    python -m tests.integration.notebooks.hl7_listener RECEIVED_FILE

Prints ``mllp  mllp://127.0.0.1:PORT`` once it listens (ephemeral port, loopback only), appends
every message it receives to RECEIVED_FILE (messages separated by a blank line), and runs until
SIGTERM or SIGINT. The test stops it by PID.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from tests.integration.hl7_peer import PythonHl7Server


def main(received_file: str) -> None:
    out = Path(received_file)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with PythonHl7Server({}) as server, out.open("a", encoding="utf-8") as sink:
        print(f"mllp  mllp://127.0.0.1:{server.port}", flush=True)
        written = 0
        while not stop.wait(0.05):
            new = server.received[written:]
            for message in new:
                sink.write(message.replace("\r", "\n").rstrip("\n") + "\n\n")
            if new:
                sink.flush()
                written += len(new)


if __name__ == "__main__":
    main(sys.argv[1])
