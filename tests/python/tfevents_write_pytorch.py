"""Writes PyTorch-style event files (simple_value) with tensorboardX's SummaryWriter.

Usage: tfevents_write_pytorch.py LOGDIR
Also writes things that are not scalars (histogram, image, text) and a restarted writer with a
purge_step (a SessionLog START) in its own run folder.
"""
import sys

import numpy as np
from tensorboardX import SummaryWriter

logdir = sys.argv[1]
w = SummaryWriter(logdir + "/pytorch")
for step in range(20):
    w.add_scalar("train/loss", 1.0 / (step + 1), step)
    w.add_scalar("train/acc", step / 20.0, step)
w.add_scalar("odd/nan", float("nan"), 20)
w.add_scalar("odd/inf", float("inf"), 20)
w.add_scalar("odd/neg_inf", float("-inf"), 21)
w.add_scalar("odd/big", 3.4e38, 22)
w.add_scalar("odd/tiny", 1e-45, 22)
w.add_histogram("weights", np.arange(100), 0)
w.add_image("image", np.zeros((3, 4, 4)), 0)
w.add_text("notes", "not a scalar", 0)
w.add_scalar("train/loss", 0.01, 10**12)
w.close()

w = SummaryWriter(logdir + "/pytorch_restarted", purge_step=15)
w.add_scalar("train/loss", 0.5, 15)
w.close()
