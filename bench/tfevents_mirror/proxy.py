"""A TCP proxy on 127.0.0.1 that counts the bytes clients send upstream (requests with their
bodies): what a client wrote to the storage server behind it.

Usage: proxy.py UPSTREAM_PORT COUNT_FILE   prints its own port on the first line of stdout, and
rewrites COUNT_FILE with the running total after every chunk it forwards.
"""
import os
import socket
import sys
import threading

upstream_port, count_file = int(sys.argv[1]), sys.argv[2]
total = 0
lock = threading.Lock()


def record(n):
    global total
    with lock:
        total += n
        tmp = count_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(total))
        os.replace(tmp, count_file)


def pipe(src, dst, count):
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            if count:
                record(len(data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
record(0)
while True:
    client, _ = listener.accept()
    server = socket.create_connection(("127.0.0.1", upstream_port))
    threading.Thread(target=pipe, args=(client, server, True), daemon=True).start()
    threading.Thread(target=pipe, args=(server, client, False), daemon=True).start()
