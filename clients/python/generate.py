#!/usr/bin/env python3
"""Regenerates chatroom_client/_gen/ from the proto (../../proto) with grpcio-tools.

    python clients/python/generate.py           # rewrite the generated modules
    python clients/python/generate.py --check   # exit 1 if they differ from the proto's

The generated modules import each other as `chatroom.v1`; they are rewritten to import
relatively, so they live inside this package without a top-level `chatroom` module
that could clash with anything else on the path. scripts/test.sh runs --check.
"""

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
OUT = os.path.join(HERE, "chatroom_client", "_gen")
MODULES = ("chatroom_pb2.py", "chatroom_pb2.pyi", "chatroom_pb2_grpc.py")


def generate(into):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
         f"--python_out={into}", f"--pyi_out={into}", f"--grpc_python_out={into}",
         "chatroom/v1/chatroom.proto"],
        check=True)
    made = {}
    for name in MODULES:
        with open(os.path.join(into, "chatroom", "v1", name)) as f:
            text = f.read()
        made[name] = text.replace("from chatroom.v1 import chatroom_pb2", "from . import chatroom_pb2")
    made["__init__.py"] = '"""Generated from proto/chatroom/v1/chatroom.proto by generate.py; do not edit."""\n'
    return made


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        made = generate(tmp)
    stale = []
    for name, text in made.items():
        path = os.path.join(OUT, name)
        current = open(path).read() if os.path.exists(path) else None
        if current != text:
            stale.append(name)
            if not args.check:
                with open(path, "w") as f:
                    f.write(text)
    if args.check and stale:
        print(f"chatroom_client/_gen is stale ({', '.join(stale)}): run python clients/python/generate.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
