"""Writes scalars with tensorboardX's SummaryWriter a few at a time, flushing between batches, so
a follower sees the event file grow. Usage: tfevents_write_slowly.py LOGDIR STEPS"""
import sys
import time

from tensorboardX import SummaryWriter

logdir, steps = sys.argv[1], int(sys.argv[2])
w = SummaryWriter(logdir + "/run-a", flush_secs=3600)
for step in range(steps):
    w.add_scalar("train/loss", 1.0 / (step + 1), step)
    w.add_scalar("train/lr", 0.1 * 0.99 ** step, step)
    if step % 25 == 0:
        w.flush()
        time.sleep(0.05)
w.close()
