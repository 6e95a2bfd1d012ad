#!/usr/bin/env python3
"""How soon the API's event stream tells a change: a real emperor (release
build) with one site; a reader on `GET /v1/events` over the admin's socket;
`POST /v1/vassals/s/suspend` and `.../resume` in turn, each timed from the
moment the call is sent to the moment its `state` event is read.

    bench/events.py [--runs 100]      (after `cargo build --release`)
"""
import argparse, json, os, shutil, socket, statistics, subprocess, tempfile, time

from php import exchange  # bench/php.py, beside this file
from start import remove_cgroups  # bench/start.py, beside this file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release")


def call(sock, method, path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    return exchange(s, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="imperium-events-bench-")
    cg = f"imperium-bench-events-{os.getpid()}"
    run = os.path.join(work, "run")
    os.makedirs(os.path.join(work, "vassals"))
    open(os.path.join(work, "vassals", "s.toml"), "w").write('kind = "site"\n[limits]\nmemory = "64M"\n')
    emperor = subprocess.Popen([f"{BIN}/emperor", "--run-dir", run, "serve", "--vassals", f"{work}/vassals",
                                "--home-root", f"{work}/home", "--state-dir", f"{work}/state",
                                "--cgroup-root", cg, "--network", "off", "--lxcfs", "off"],
                               stderr=open(os.path.join(work, "emperor.log"), "w"))
    try:
        api = os.path.join(run, "api.sock")
        deadline = time.time() + 20
        while time.time() < deadline and '"state":"running"' not in (call(api, "GET", "/v1/vassals") if os.path.exists(api) else ""):
            time.sleep(0.05)
        reader = socket.socket(socket.AF_UNIX)
        reader.connect(api)
        reader.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while b": subscribed" not in buf:
            buf += reader.recv(65536)
        buf = b""
        lat = []
        for i in range(args.runs):
            verb, want = ("suspend", "suspended") if i % 2 == 0 else ("resume", "running")
            t0 = time.perf_counter()
            call(api, "POST", f"/v1/vassals/s/{verb}")
            while f'"state":"{want}"'.encode() not in buf:
                buf += reader.recv(65536)
            lat.append((time.perf_counter() - t0) * 1000)
            buf = b""
        lat.sort()
        res = {"runs": len(lat), "median_ms": round(statistics.median(lat), 3),
               "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 3), "max_ms": round(lat[-1], 3)}
        print(json.dumps(res, indent=2))
    finally:
        subprocess.run([f"{BIN}/emperor", "--run-dir", run, "shutdown"], capture_output=True, timeout=60)
        try:
            emperor.wait(timeout=20)
        except subprocess.TimeoutExpired:
            emperor.kill()
        remove_cgroups(cg)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
