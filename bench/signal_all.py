#!/usr/bin/env python3
"""What signalling every other process of a container costs its init, as the
host fills up: `kill(-1, 0)` (the kernel walks every task of the host) against
a walk of the container's own /proc (what `vassal init` does).

Run as root: python3 bench/signal_all.py [--host 0,5000,20000]
For each count it starts that many idle host processes (`sleep`), measures
both ways 200 times inside a new pid namespace with its own /proc, and
stops them again.
"""
import argparse
import ctypes
import os
import subprocess
import sys
import time


def inside():
    libc = ctypes.CDLL("libc.so.6", use_errno=True)

    def median(f):
        ts = []
        for _ in range(200):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return sorted(ts)[100] * 1e6

    def walk():
        for n in os.listdir("/proc"):
            if n.isdigit() and int(n) > 1:
                os.kill(int(n), 0)

    print(f"{median(lambda: libc.kill(-1, 0)):.0f} {median(walk):.0f}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        return inside()
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="0,5000,20000")
    args = ap.parse_args()
    print("| idle host processes | kill(-1) | the container's /proc walk |\n|---:|---:|---:|")
    for n in (int(x) for x in args.host.split(",")):
        procs = [subprocess.Popen(["sleep", "600"]) for _ in range(n)]
        try:
            out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                                  os.path.abspath(__file__), "--inside"],
                                 capture_output=True, text=True, check=True).stdout.split()
            print(f"| {n} | {out[0]} us | {out[1]} us |")
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()


if __name__ == "__main__":
    main()
