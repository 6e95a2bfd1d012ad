#!/usr/bin/env python3
"""The vassal's own figures, run as a plain process on a temporary home:
resident memory idle and with 20 supervised processes, and the time from a
killed child to its replacement running (kill -> the new process's spawn,
with no back-off: every death follows a healthy run).

  python3 bench/vassal.py [--runs 50] [--dynamic]
      (after scripts/build-pid1 --release: the statically linked vassal, as
      installed; --dynamic: cargo's own build, target/release/vassal)
"""
import argparse, json, os, re, signal, statistics, subprocess, tempfile, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = os.environ.get("VASSAL", os.path.join(REPO, "target", "pid1", "release", "vassal"))
DYNAMIC = os.path.join(REPO, "target", "release", "vassal")


def mem(pid):
    """RSS, PSS and anonymous memory in KiB. The file pages (the binary, libc)
    are shared by every vassal of the host: the anonymous part is what one more
    site adds."""
    status = open(f"/proc/{pid}/status").read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    anon = int(re.search(r"RssAnon:\s+(\d+)", status).group(1))
    pss = int(re.search(r"^Pss:\s+(\d+)", open(f"/proc/{pid}/smaps_rollup").read(), re.M).group(1))
    return rss, pss, anon


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--dynamic", action="store_true")
    args = ap.parse_args()
    vassal = DYNAMIC if args.dynamic else STATIC
    with tempfile.TemporaryDirectory() as home:
        os.makedirs(f"{home}/vassals")
        env = dict(os.environ, HOME=home, IMPERIUM_CGROUP_DIR="/nonexistent")
        sup = subprocess.Popen([vassal, "init", "--healthy-after", "0"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def status():
            out = subprocess.run([vassal, "status", "--json"], env=env, capture_output=True, text=True)
            return json.loads(out.stdout)["processes"] if out.returncode == 0 else None

        try:
            deadline = time.time() + 10
            while status() is None:
                assert time.time() < deadline, "no control socket"
                time.sleep(0.01)
            time.sleep(1)
            idle = mem(sup.pid)
            for i in range(20):
                with open(f"{home}/vassals/p{i}.toml", "w") as f:
                    f.write('command = ["sleep", "1000"]\n')
            while sum(r["state"] == "running" for r in status()) < 20:
                time.sleep(0.05)
            time.sleep(1)
            busy = mem(sup.pid)

            lat = []
            for _ in range(args.runs):
                row = next(r for r in status() if r["name"] == "p0")
                t0 = time.time_ns() // 1000
                os.kill(row["pid"], signal.SIGKILL)
                while True:
                    new = next(r for r in status() if r["name"] == "p0")
                    if new["pid"] and new["pid"] != row["pid"] and new["state"] == "running":
                        break
                    time.sleep(0.002)
                lat.append((new["started_at_us"] - t0) / 1000)
            lat.sort()
            res = {
                "binary": vassal,
                "idle": {"rss_kib": idle[0], "pss_kib": idle[1], "anon_kib": idle[2]},
                "with_20_processes": {"rss_kib": busy[0], "pss_kib": busy[1], "anon_kib": busy[2]},
                "kill_to_replacement_ms": {"n": len(lat), "median": round(statistics.median(lat), 3),
                                           "p95": round(lat[int(len(lat) * 0.95)], 3), "min": round(lat[0], 3)},
            }
            print(json.dumps(res, indent=2))
        finally:
            sup.send_signal(signal.SIGTERM)
            try:
                sup.wait(timeout=20)
            except subprocess.TimeoutExpired:
                sup.kill()


if __name__ == "__main__":
    main()
