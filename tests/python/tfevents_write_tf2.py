"""Writes TF2-style event files with TensorBoard's own EventFileWriter: rank-0 tensor scalars of
every dtype Periscope reads, in the typed *_val fields and in little-endian tensor_content, with
the `scalars` plugin metadata on each tag's first value only. Also writes tensors that are not
scalars (rank 1, other plugins, a tag whose first value has no metadata) and a graph event.

Usage: tfevents_write_tf2.py LOGDIR
"""
import math
import sys

import numpy as np
from tensorboard.compat.proto import (
    event_pb2,
    summary_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from tensorboard.summary.writer.event_file_writer import EventFileWriter

logdir = sys.argv[1] + "/tf2"
w = EventFileWriter(logdir)

FLOATS = [0.0, 1.5, -2.25, 1e-3, 65504.0, 1 / 3, float("nan"), float("inf"), float("-inf")]
INTS = [0, 7, -3, 2**31 - 1, -(2**31)]


def bf16_bits(v):
    return int(np.array([v], dtype=np.float32).view(np.uint32)[0] >> 16)


def half_bits(v):
    return int(np.array([v], dtype=np.float16).view(np.uint16)[0])


# name: (dtype, values, typed setter, little-endian bytes)
KINDS = {
    "float": (types_pb2.DT_FLOAT, FLOATS, lambda t, v: t.float_val.append(v),
              lambda v: np.array(v, "<f4").tobytes()),
    "double": (types_pb2.DT_DOUBLE, FLOATS, lambda t, v: t.double_val.append(v),
               lambda v: np.array(v, "<f8").tobytes()),
    "half": (types_pb2.DT_HALF, FLOATS, lambda t, v: t.half_val.append(half_bits(v)),
             lambda v: np.array(v, "<f2").tobytes()),
    "bfloat16": (types_pb2.DT_BFLOAT16, FLOATS,
                 lambda t, v: t.half_val.append(bf16_bits(v)),
                 lambda v: bf16_bits(v).to_bytes(2, "little")),
    "int32": (types_pb2.DT_INT32, INTS, lambda t, v: t.int_val.append(v),
              lambda v: np.array(v, "<i4").tobytes()),
    "int64": (types_pb2.DT_INT64, INTS + [2**40, -(2**50)],
              lambda t, v: t.int64_val.append(v),
              lambda v: np.array(v, "<i8").tobytes()),
}


def scalars_metadata():
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )


def write(tag, step, tensor, metadata=None):
    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
    if metadata is not None:
        value.metadata.CopyFrom(metadata)
    w.add_event(event_pb2.Event(
        wall_time=1700000000 + step * 0.25, step=step,
        summary=summary_pb2.Summary(value=[value])))


def rank0(dtype):
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto())


for packing in ("typed", "content"):
    for name, (dtype, values, set_typed, to_bytes) in KINDS.items():
        for step, v in enumerate(values):
            t = rank0(dtype)
            if packing == "typed":
                set_typed(t, v)
            else:
                t.tensor_content = to_bytes(v)
            write(f"{name}/{packing}", step, t, scalars_metadata() if step == 0 else None)

# Older writers: the scalars plugin without a data class.
t = rank0(types_pb2.DT_FLOAT)
t.float_val.append(0.75)
write("legacy/plugin_only", 0, t, summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")))

# Not scalars: a rank-1 tensor, a string tensor of the text plugin, a rank-0 float of another
# plugin, and a tag whose first value carries no metadata (later metadata does not count).
t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0],
                           tensor_shape=tensor_shape_pb2.TensorShapeProto(
                               dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]))
write("not/rank1", 0, t, scalars_metadata())
t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"hello"],
                           tensor_shape=tensor_shape_pb2.TensorShapeProto())
write("not/text", 0, t, summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text")))
t = rank0(types_pb2.DT_FLOAT)
t.float_val.append(5.0)
write("not/custom", 0, t, summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="custom")))
write("not/late_metadata", 0, t)
write("not/late_metadata", 1, t, scalars_metadata())

w.add_event(event_pb2.Event(wall_time=1700000100.0, step=0, graph_def=b"\x0a\x03abc"))
w.close()
