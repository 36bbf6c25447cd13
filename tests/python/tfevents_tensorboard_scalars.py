"""Prints every scalar TensorBoard serves for a log folder, as `tensorboard --logdir LOGDIR` reads it.

Usage: tfevents_tensorboard_scalars.py LOGDIR
Runs are found and loaded by TensorBoard's own multiplexer: every folder holding files whose name
contains `tfevents` is a run, and its files are read in name order, one after the other, with
TensorBoard's purge of orphaned data on. No point is sampled away. One JSON line per point,
sorted by run and tag, points in the order TensorBoard keeps them.
"""
import json
import sys

from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.util import tensor_util


multiplexer = plugin_event_multiplexer.EventMultiplexer(
    size_guidance={"tensors": 0, "scalars": 0}, purge_orphaned_data=True)
multiplexer.AddRunsFromDirectory(sys.argv[1])
multiplexer.Reload()
scalars = multiplexer.PluginRunToTagToContent("scalars")
for run in sorted(scalars):
    for tag in sorted(scalars[run]):
        for event in multiplexer.Tensors(run, tag):
            value = float(tensor_util.make_ndarray(event.tensor_proto).item())
            # NaN and infinities print as json.dumps writes them; both trees go through this.
            print(json.dumps({"run": run, "tag": tag, "step": event.step,
                              "wall_time": event.wall_time, "value": value}))
