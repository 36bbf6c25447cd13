"""Writes scalars with tensorboardX's SummaryWriter for the metrics tests.

Usage:
  metrics_write_tbx.py basic LOGDIR    the fixed series tests/metrics_sqlite.rs expects
  metrics_write_tbx.py stream LOGDIR N  N points of train/loss, flushed every 5, paced ~2 ms apart

Wall times are given explicitly (1.7e9 s + step/100): Submarine's metric primary key holds the
timestamp in milliseconds, so points of one key must not share a millisecond.
"""
import sys
import time

from tensorboardX import SummaryWriter

BASE = 1_700_000_000.0


def basic(logdir):
    w = SummaryWriter(logdir)
    for step in range(30):
        value = {5: float("nan"), 6: float("inf"), 7: float("-inf")}.get(step, step * 0.25)
        w.add_scalar("train/loss", value, step, walltime=BASE + step / 100)
    w.close()
    e = SummaryWriter(logdir + "/eval")
    for step in range(5):
        e.add_scalar("acc", step / 8, step, walltime=BASE + step / 100)
    e.close()
    # The job restarted from its step-20 checkpoint: PyTorch writes a SessionLog START at 20.
    # (A suffix, because tensorboardX reuses and truncates a file name made in the same second.)
    r = SummaryWriter(logdir, purge_step=20, filename_suffix=".restarted")
    for step in range(20, 25):
        r.add_scalar("train/loss", 100.0 + step, step, walltime=BASE + 10 + step / 100)
    r.close()


def stream(logdir, n):
    w = SummaryWriter(logdir)
    for step in range(n):
        w.add_scalar("train/loss", step * 0.5, step, walltime=BASE + step / 100)
        if step % 5 == 4:
            w.flush()
            time.sleep(0.01)
    w.close()


if sys.argv[1] == "basic":
    basic(sys.argv[2])
else:
    stream(sys.argv[2], int(sys.argv[3]))
