"""The size and sha256 of one S3 object, read with boto3 (the endpoint and keys from the
standard AWS variables), streamed so a large object is never held in memory.

Usage: s3_sha256.py BUCKET KEY
Prints one JSON object: {"size", "sha256"}.
"""
import hashlib
import json
import sys

import boto3

bucket, key = sys.argv[1:3]
body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
digest, size = hashlib.sha256(), 0
for chunk in iter(lambda: body.read(8 << 20), b""):
    digest.update(chunk)
    size += len(chunk)
print(json.dumps({"size": size, "sha256": digest.hexdigest()}))
