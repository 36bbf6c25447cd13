"""Runs a command in a new pseudo-terminal, as a person at a terminal would, and presses Ctrl-C.

Usage: pty_run.py MARKER PRESSES -- COMMAND ARGS...

The command gets the terminal's slave side as its stdin, stdout and stderr, in a new session
whose controlling terminal it is, so the terminal driver turns a ^C byte into SIGINT for the
foreground process group, as it does for a person. Once MARKER has appeared in the output,
PRESSES ^C bytes are written, a second after one another. Prints one JSON object: the exit code
(or the signal that ended the command, negative) and everything the terminal showed.
"""
import json
import os
import pty
import select
import signal
import sys
import time

marker = sys.argv[1].encode()
presses = int(sys.argv[2])
command = sys.argv[sys.argv.index("--") + 1:]

pid, fd = pty.fork()
if pid == 0:
    # A shell gives a foreground command the default SIGINT and SIGQUIT, whatever it inherited
    # (a background job of a non-interactive shell, such as a CI runner's, ignores both, and an
    # ignored SIGINT would stay ignored in the job: Python then raises no KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    os.execvp(command[0], command)

shown = b""
pressed = 0
next_press = None
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    if next_press is None and marker in shown:
        next_press = time.monotonic()
    if next_press is not None and pressed < presses and time.monotonic() >= next_press:
        os.write(fd, b"\x03")
        pressed += 1
        next_press = time.monotonic() + 1.0
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
print(json.dumps({"code": code, "pressed": pressed, "shown": shown.decode("utf-8", "replace")}))
