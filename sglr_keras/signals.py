"""A second Ctrl-C, or a SIGTERM, ends the process at once, even while the
main thread is inside one long TensorFlow call (a training step with a
100,000-step attack, an AutoAttack batch).

Python runs signal handlers only when the main thread returns to the
interpreter, which a long compiled call may not do for minutes. The C-level
handler does run at once, and with ``signal.set_wakeup_fd`` it writes the signal
number to a socket; a watcher thread reads it there. The first Ctrl-C is left to
the Python handlers (training stops at the next step end, with everything
saved); the second Ctrl-C and a SIGTERM end the process with ``os._exit``. Every
run-folder file is written atomically (write, then rename), so the folder keeps
the last finished epoch, as after a kill.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class PromptExit:
    """Context manager (main thread only; elsewhere it does nothing)."""

    def __init__(self, message: str = "stopped at once; the run folders keep their last finished epoch: rerun the "
                                      "same command to resume"):
        self.message = message
        self.interrupts = 0
        self._active = False

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        # Python must have a handler of its own for the C-level one to write the byte.
        self._previous_term = signal.signal(signal.SIGTERM, self._on_term)
        self._active = True
        threading.Thread(target=self._watch, name="sglr-prompt-exit", daemon=True).start()
        return self

    def _on_term(self, signum, frame):
        self._exit(signal.SIGTERM)

    def _exit(self, signum) -> None:
        sys.stderr.write(f"\n{'SIGTERM' if signum == signal.SIGTERM else 'second Ctrl-C'}: {self.message}\n")
        sys.stderr.flush()
        os._exit(EXIT_CODES[signum])

    def _watch(self) -> None:
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == signal.SIGTERM:
                    self._exit(signal.SIGTERM)
                if signum == signal.SIGINT:
                    self.interrupts += 1
                    if self.interrupts >= 2:
                        self._exit(signal.SIGINT)
                    sys.stderr.write("\nCtrl-C: stopping at the next safe point (a step end); "
                                     "press Ctrl-C again to stop at once\n")
                    sys.stderr.flush()

    def __exit__(self, *exc):
        if self._active:
            signal.set_wakeup_fd(self._previous_fd)
            signal.signal(signal.SIGTERM, self._previous_term)
            self._writer.close()
            self._reader.close()
            self._active = False
        return False
