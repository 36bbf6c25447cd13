"""Prints the scalars TensorBoard's own loader reads, as `periscope tfevents scalars` prints them.

Usage: tfevents_load.py PATH
PATH is an event file (printed as given) or a folder (every file whose name contains `tfevents`,
recursively, in sorted relative-path order). A value is a scalar when its tag's first value
(after TensorBoard's own data_compat/dataclass_compat migration in EventFileLoader) has the
scalar data class, as TensorBoard's scalars plugin decides. Values come from TensorBoard's
make_ndarray (rank-0 tensors only), except bfloat16, which its TensorFlow-free build cannot convert: the top 16 bits of
a float32, by definition.
"""
import json
import math
import os
import struct
import sys

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto import summary_pb2, types_pb2
from tensorboard.util import tensor_util


def files(path):
    if not os.path.isdir(path):
        return [(path, path)]
    found = []
    for d, _, names in os.walk(path):
        for n in names:
            if "tfevents" in n:
                full = os.path.join(d, n)
                found.append((os.path.relpath(full, path).split(os.sep), full))
    found.sort()
    return [("/".join(rel), full) for rel, full in found]


def number(v):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def value_of(tensor):
    if tensor.dtype == types_pb2.DT_BFLOAT16:
        if tensor.tensor_content:
            bits = int.from_bytes(tensor.tensor_content, "little")
        else:
            bits = tensor.half_val[0]
        return struct.unpack("<f", struct.pack("<I", bits << 16))[0]
    return float(tensor_util.make_ndarray(tensor).item())


for shown, full in files(sys.argv[1]):
    initial = {}
    for event in EventFileLoader(full).Load():
        for v in event.summary.value:
            meta = initial.setdefault(v.tag, v.metadata)
            if meta.data_class != summary_pb2.DATA_CLASS_SCALAR:
                continue
            if v.tensor.tensor_shape.dim:
                continue  # TensorBoard cannot show a rank-1 "scalar" either
            print(json.dumps({
                "file": shown, "tag": v.tag, "step": event.step,
                "wall_time": number(event.wall_time), "value": number(value_of(v.tensor)),
            }))
