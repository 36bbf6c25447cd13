"""Scalars per second: `periscope tfevents scalars` vs TensorBoard's EventFileLoader, and vs the
floor (read the bytes and check CRCs only). Run through bench/tfevents/run.

Usage: bench.py PERISCOPE TFRECORD_CRC WORKDIR
Writes a 200,000-scalar TF2-style file with TensorBoard's EventFileWriter (4 tags x 50,000
steps, rank-0 float tensors, plugin metadata on each tag's first value), then times the readers
in alternation and prints medians and ratios from this one run.
"""
import os
import statistics
import subprocess
import sys
import time

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

SCALARS = 200_000
TAGS = ["train/loss", "train/acc", "lr", "grad_norm"]

periscope, crc_floor, workdir = sys.argv[1:4]


def write_file():
    logdir = os.path.join(workdir, "run")
    w = EventFileWriter(logdir, max_queue_size=1000)
    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR)
    for step in range(SCALARS // len(TAGS)):
        for i, tag in enumerate(TAGS):
            t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0 / (step + i + 1)],
                                       tensor_shape=tensor_shape_pb2.TensorShapeProto())
            v = summary_pb2.Summary.Value(tag=tag, tensor=t)
            if step == 0:
                v.metadata.CopyFrom(meta)
            w.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                        summary=summary_pb2.Summary(value=[v])))
    w.close()
    (name,) = os.listdir(logdir)
    return os.path.join(logdir, name)


def tensorboard_loader(path):
    """The loader plus the cheapest value access, so it is measured at its best."""
    initial, n = {}, 0
    for event in EventFileLoader(path).Load():
        for v in event.summary.value:
            meta = initial.setdefault(v.tag, v.metadata)
            if meta.data_class == summary_pb2.DATA_CLASS_SCALAR:
                _ = v.tensor.float_val[0]
                n += 1
    assert n == SCALARS, n


def command(args, expect=None):
    def run():
        out = subprocess.run(args, check=True, stdout=subprocess.PIPE).stdout
        if expect is not None:
            assert expect(out), out[:200]
    return run


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    path = write_file()
    size = os.path.getsize(path)
    contenders = {
        "periscope scalars --format table": command(
            [periscope, "tfevents", "scalars", "--format", "table", path],
            lambda out: b"50000" in out),
        "periscope scalars --format jsonl": command(
            [periscope, "tfevents", "scalars", "--format", "jsonl", path],
            lambda out: out.count(b"\n") == SCALARS),
        "read + CRC only (floor)": command(
            [crc_floor, path], lambda out: int(out) == SCALARS + 1),
        "TensorBoard EventFileLoader": lambda: tensorboard_loader(path),
    }
    rounds = {name: 5 for name in contenders}
    rounds["TensorBoard EventFileLoader"] = 3
    times = {name: [] for name in contenders}
    # Alternate the contenders round by round so that neither side is favoured by the machine.
    for r in range(max(rounds.values())):
        for name, fn in contenders.items():
            if r < rounds[name]:
                times[name].append(timed(fn))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"file: {SCALARS} scalars, {size / 1e6:.1f} MB ({path})")
    for name, m in med.items():
        print(f"  {name:36} median {m * 1000:9.1f} ms  {SCALARS / m / 1e6:7.2f} M scalars/s")
    ours = med["periscope scalars --format table"]
    print(f"ratio TensorBoard loader / periscope (table): {med['TensorBoard EventFileLoader'] / ours:7.1f}x  (goal >= 50x)")
    print(f"ratio periscope (table) / read+CRC floor:     {ours / med['read + CRC only (floor)']:7.2f}x  (goal <= 2x)")
    print(f"ratio periscope (jsonl) / read+CRC floor:     {med['periscope scalars --format jsonl'] / med['read + CRC only (floor)']:7.2f}x")


main()
