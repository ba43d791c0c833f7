"""Test engine speaking protocol 2 (JSON lines on stdin/stdout), standard library only.

It "computes" by copying the tensors prepared in $REPLAY_DIR into each request's output_dir.
Knobs (environment): REPLAY2_LOG (append every request line there), REPLAY2_STARTS (append one
line per process start), REPLAY2_NOT_PRODUCED (a tap it reports as not produced),
REPLAY2_CRASH_ON (exit 3 on that forward of a process, 1-based), REPLAY2_HANG (never answer a
forward), REPLAY2_NOISE (print a non-JSON line on stdout before answering), REPLAY2_BLOCKS (a
JSON list of {path, input} announced as capabilities.blocks; a `block` request copies the tensors
of $REPLAY2_BLOCK_DIR, after checking that its input file exists).
"""

import json
import os
import shutil
import sys
import time


def main():
    env = os.environ
    if env.get("REPLAY2_STARTS"):
        with open(env["REPLAY2_STARTS"], "a") as f:
            f.write(f"{os.getpid()}\n")
    forwards = 0
    for line in sys.stdin:
        if env.get("REPLAY2_LOG"):
            with open(env["REPLAY2_LOG"], "a") as f:
                f.write(line)
        req = json.loads(line)
        op = req.get("op")
        if op == "shutdown":
            return 0
        reply = {"id": req.get("id"), "ok": True}
        if op == "load":
            reply["capabilities"] = {"decode": False, "blocks": json.loads(env.get("REPLAY2_BLOCKS", "[]"))}
            reply["info"] = "replay2 test engine"
        elif op == "forward":
            forwards += 1
            if str(forwards) == env.get("REPLAY2_CRASH_ON"):
                print("replay2: crashing as asked", file=sys.stderr)
                sys.exit(3)
            if env.get("REPLAY2_HANG"):
                time.sleep(3600)
            if env.get("REPLAY2_NOISE"):
                print("loading weights... done")
            for name in os.listdir(env["REPLAY_DIR"]):
                shutil.copy(os.path.join(env["REPLAY_DIR"], name), req["output_dir"])
            missing = env.get("REPLAY2_NOT_PRODUCED")
            reply["not_produced"] = {missing: "fused away"} if missing else {}
        elif op == "block" and env.get("REPLAY2_BLOCK_DIR"):
            if not os.path.isfile(req["input"]["file"]):
                reply = {"id": req.get("id"), "ok": False, "error": "no block input file"}
            else:
                for name in os.listdir(env["REPLAY2_BLOCK_DIR"]):
                    shutil.copy(os.path.join(env["REPLAY2_BLOCK_DIR"], name), req["output_dir"])
        else:
            reply = {"id": req.get("id"), "ok": False, "error": f"unknown op `{op}`"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
