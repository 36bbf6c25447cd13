#!/usr/bin/env python3
"""A small training job for trying Periscope: it needs only the Python standard library.

It "trains" for a few epochs, printing progress to stdout and warnings to stderr, and records its
metrics in the two ways Periscope reads them:

* TensorBoard event files in $SUBMARINE_TENSORBOARD_LOG_DIR (plain TFRecord framing with masked
  CRC32C, and `Event` messages with `simple_value` scalars, as PyTorch's SummaryWriter writes them);
* a JSONL metrics file at $PERISCOPE_METRICS_FILE, one {"key","value","step","timestamp"} per line.

Usage: train.py [--epochs N] [--fail]
"""
import json
import math
import os
import random
import socket
import struct
import sys
import time

# --- TFRecord framing with masked CRC32C (Castagnoli), written out so no package is needed ---
_POLY = 0x82F63B78
_TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ _POLY if c & 1 else c >> 1
    _TABLE.append(c)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data):
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked(length)) + data + struct.pack("<I", masked(data))


# --- protobuf encoding of the few Event fields we write ---
def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, wire, payload):
    return varint((number << 3) | wire) + payload


def length_delimited(number, data):
    return field(number, 2, varint(len(data)) + data)


def event(wall_time, step, file_version=None, scalars=None):
    out = field(1, 1, struct.pack("<d", wall_time)) + field(2, 0, varint(step))
    if file_version is not None:
        out += length_delimited(3, file_version.encode())
    if scalars:
        summary = b"".join(
            length_delimited(1, length_delimited(1, tag.encode()) + field(2, 5, struct.pack("<f", value)))
            for tag, value in scalars
        )
        out += length_delimited(5, summary)
    return out


def main():
    epochs = 5
    if "--epochs" in sys.argv:
        epochs = int(sys.argv[sys.argv.index("--epochs") + 1])
    fail = "--fail" in sys.argv
    tb_dir = os.environ.get("SUBMARINE_TENSORBOARD_LOG_DIR", "tensorboard")
    metrics_path = os.environ.get("PERISCOPE_METRICS_FILE", "metrics.jsonl")
    os.makedirs(tb_dir, exist_ok=True)
    name = "events.out.tfevents.%d.%s.%d.0" % (time.time(), socket.gethostname(), os.getpid())
    events = open(os.path.join(tb_dir, name), "ab")
    events.write(record(event(time.time(), 0, file_version="brain.Event:2")))
    metrics = open(metrics_path, "a")
    random.seed(42)
    print("training on %s, code at %s" % (socket.gethostname(), os.environ.get("CODE_PATH", os.getcwd())), flush=True)
    loss = 2.5
    for epoch in range(epochs):
        for batch in range(10):
            step = epoch * 10 + batch
            loss = loss * 0.93 + random.uniform(-0.02, 0.02)
            accuracy = 1.0 - math.exp(-step / 20.0)
            events.write(record(event(time.time(), step, scalars=[("train/loss", loss), ("train/accuracy", accuracy)])))
            time.sleep(0.01)
        events.flush()
        now_ms = int(time.time() * 1000)
        metrics.write(json.dumps({"key": "epoch_loss", "value": round(loss, 6), "step": epoch, "timestamp": now_ms}) + "\n")
        metrics.flush()
        print("epoch %d/%d loss=%.4f accuracy=%.4f" % (epoch + 1, epochs, loss, accuracy), flush=True)
        if epoch == epochs // 2:
            print("warning: learning rate schedule is a demo", file=sys.stderr, flush=True)
    events.close()
    metrics.close()
    if fail:
        print("error: failing on purpose (--fail)", file=sys.stderr, flush=True)
        return 3
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
