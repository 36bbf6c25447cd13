"""Log shipping under Debian's logrotate for a long run: is every byte stored once?

An application writes numbered lines to logs/app.log at a steady rate; every ROTATE_EVERY seconds it
pauses, runs `logrotate -f -s STATE CONF` (as cron would) and carries on (reopening its file after a
`create` rotation, writing on through its handle under `copytruncate`). `periscope sidecar` follows
`logs/app.log*`, a glob that matches every rotated name, and is killed with -9 every KILL_EVERY
seconds and started again after RESTART_DELAY. At the end the sidecar drains, and the run checks:

- bytes stored / bytes written: the uncompressed bytes in the chunks of every stored name
  (`logs ls --json`, BYTES), over the bytes the application wrote: 1.00 when every byte is stored
  once (rotated names are links, not copies);
- lines lost and lines doubled: `logs cat …/app.log` (every generation) against the numbered lines
  written, each expected exactly once;
- each rotated file still on disk (decompressed for a .gz) against `logs cat` of its name's newest
  generation.

With --banner BYTES, every file starts with the same banner line of that size (written again after
each rotation, as an application that prints its configuration first would): generations then share
their first bytes.

Usage: python3 bench.py --bin PATH --work DIR [--seconds 600] [--rate-mib 2] [--rotate-every 20]
       [--kill-every 45] [--options "copytruncate,compress,delaycompress,rotate 5"] [--banner 4096]
"""

import argparse
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time


def logrotate_bin():
    return "/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else "logrotate"


class App:
    """The application: numbered lines at a steady rate, rotated by logrotate."""

    def __init__(self, logs, conf, state, reopen, banner):
        self.path = os.path.join(logs, "app.log")
        self.conf, self.state, self.reopen, self.banner = conf, state, reopen, banner
        self.f = open(self.path, "ab", buffering=0)
        self.seq = 0
        self.bytes = 0
        self.rotations = 0
        self.write_banner()

    def write_banner(self):
        if self.banner:
            self.f.write(self.banner)
            self.bytes += len(self.banner)

    def write(self, n):
        lines = []
        for _ in range(n):
            # Varied lengths, some long, so chunks end mid-line.
            pad = (self.seq * 7919) % 160 + (400 if self.seq % 997 == 0 else 0)
            lines.append(b"seq=%012d step %d loss %.6f %s\n" % (self.seq, self.seq // 10, 1.0 / (self.seq + 1), b"x" * pad))
            self.seq += 1
        data = b"".join(lines)
        self.f.write(data)
        self.bytes += len(data)

    def rotate(self):
        subprocess.run([logrotate_bin(), "-f", "-s", self.state, self.conf], check=True)
        self.rotations += 1
        if self.reopen:
            self.f.close()
            self.f = open(self.path, "ab", buffering=0)
        self.write_banner()


class Sidecar:
    def __init__(self, binary, work):
        self.binary, self.work = binary, work
        self.storage = "file://" + os.path.join(work, "store")
        self.log = open(os.path.join(work, "sidecar.log"), "ab")
        self.proc = None
        self.kills = 0

    def command(self):
        return [self.binary, "sidecar", "--storage", self.storage,
                "--logs", os.path.join(self.work, "logs", "app.log*"),
                "--state-dir", os.path.join(self.work, "state"),
                "--experiment-id", "bench", "--worker", "worker-0",
                "--listen", "127.0.0.1:0", "--mlflow-listen", "127.0.0.1:0",
                "--poll-interval", "0.5",
                "--exit-when-file", os.path.join(self.work, "exit-code"),
                "--drain-timeout", "120"]

    def start(self):
        env = dict(os.environ, PERISCOPE_TERMINATION_LOG="/dev/null", PERISCOPE_LOG_LEVEL="info")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.log, env=env)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def drain(self):
        with open(os.path.join(self.work, "exit-code"), "w") as f:
            f.write("0\n")
        return self.proc.wait(timeout=300)


def periscope(binary, *args):
    out = subprocess.run([binary, *args], capture_output=True, check=True,
                         env=dict(os.environ, PERISCOPE_TERMINATION_LOG="/dev/null"))
    return out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--rate-mib", type=float, default=2.0)
    ap.add_argument("--rotate-every", type=float, default=20)
    ap.add_argument("--kill-every", type=float, default=45)
    ap.add_argument("--restart-delay", type=float, default=0.5)
    ap.add_argument("--options", default="copytruncate,compress,delaycompress,rotate 5")
    ap.add_argument("--banner", type=int, default=0, help="bytes of the banner every file starts with")
    a = ap.parse_args()
    banner = b""
    if a.banner > 0:
        head = b"=== training job: model resnet50, 8 GPUs, config "
        banner = head + b"=" * max(0, a.banner - len(head) - 1) + b"\n"

    logs = os.path.join(a.work, "logs")
    os.makedirs(logs)
    options = [o.strip() for o in a.options.split(",") if o.strip()]
    conf = os.path.join(a.work, "logrotate.conf")
    with open(conf, "w") as f:
        f.write("%s/app.log {\n    missingok\n%s}\n" % (logs, "".join("    %s\n" % o for o in options)))
    app = App(logs, conf, os.path.join(a.work, "logrotate.state"), "copytruncate" not in options, banner)
    sidecar = Sidecar(a.bin, a.work)
    sidecar.start()

    rate = a.rate_mib * (1 << 20)
    start = time.time()
    next_rotation = start + a.rotate_every
    next_kill = start + a.kill_every if a.kill_every > 0 else float("inf")
    while time.time() - start < a.seconds:
        now = time.time()
        behind = rate * (now - start) - app.bytes
        if behind > 0:
            app.write(max(1, int(behind // 110)))
        if now >= next_rotation:
            app.rotate()
            next_rotation += a.rotate_every
        if now >= next_kill:
            sidecar.kill9()
            time.sleep(a.restart_delay)
            sidecar.start()
            next_kill += a.kill_every
        time.sleep(0.01)
    app.f.close()
    code = sidecar.drain()

    listed = [json.loads(l) for l in periscope(a.bin, "logs", "ls", "--json", sidecar.storage + "/bench").splitlines()]
    stored = sum(l["bytes"] for l in listed)
    stored_compressed = sum(l["stored_bytes"] for l in listed)
    counts = bytearray(app.seq)
    extra = 0
    cat = subprocess.Popen([a.bin, "logs", "cat", sidecar.storage + "/bench/worker-0/logs/app.log"],
                           stdout=subprocess.PIPE, env=dict(os.environ, PERISCOPE_TERMINATION_LOG="/dev/null"))
    pattern = re.compile(rb"^seq=(\d{12}) ")
    banners = 0
    for line in cat.stdout:
        if banner and line == banner:
            banners += 1
            continue
        m = pattern.match(line)
        seq = int(m.group(1)) if m else -1
        if 0 <= seq < app.seq:
            counts[seq] = min(255, counts[seq] + 1)
        else:
            extra += 1
    cat.wait()
    lost = counts.count(0)
    # One banner at the top of each generation written: the first file and one per rotation.
    if banner:
        extra += abs(banners - (app.rotations + 1))
    doubled = sum(1 for c in counts if c > 1) + extra

    mismatched = []
    for name in sorted(os.listdir(logs)):
        if name == "app.log":
            continue
        entry = next((l for l in listed if l["path"] == "worker-0/logs/" + name), None)
        if entry is None or entry.get("rotated_from") is None:
            mismatched.append(name + " (not a rotated name)")
            continue
        with open(os.path.join(logs, name), "rb") as f:
            on_disk = f.read()
        if name.endswith(".gz"):
            on_disk = gzip.decompress(on_disk)
        got = periscope(a.bin, "logs", "cat", "--generation", str(entry["rotated_from"]["generation"]),
                        sidecar.storage + "/bench/worker-0/logs/" + name)
        if got != on_disk:
            mismatched.append(name)

    with open(os.path.join(a.work, "sidecar.log"), "rb") as f:
        said = f.read().decode(errors="replace")
    reported_lost = len(re.findall(r"log bytes lost", said))
    print("run: %.0f s at %.1f MiB/s, logrotate {%s} every %.0f s, banner %d B, kill -9 every %s" % (
        a.seconds, a.rate_mib, ", ".join(options), a.rotate_every, len(banner),
        "%.0f s (restart after %.1f s)" % (a.kill_every, a.restart_delay) if a.kill_every > 0 else "never"))
    print("rotations %d, kills %d, sidecar exit %s, names stored %d" % (app.rotations, sidecar.kills, code, len(listed)))
    print("bytes written %d, bytes stored %d (%d compressed): stored/written = %.4f" % (
        app.bytes, stored, stored_compressed, stored / app.bytes))
    print("lines written %d, lines lost %d, lines doubled %d, losses reported by the sidecar %d" % (
        app.seq, lost, doubled, reported_lost))
    print("rotated files on disk that differ from logs cat of their name: %s" % (", ".join(mismatched) or "none"))
    ok = code == 0 and lost == 0 and doubled == 0 and stored == app.bytes and not mismatched
    print("RESULT: %s" % ("ok" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
