#!/usr/bin/env python3
"""Start-up benchmark of the emperor, side by side with crun, runc and the floor.

Run as root from the repository (bench/run does the build and installs):
  python3 bench/start.py [--runs 100] [--sites 1000]

Measures in one run:
  * drop -> running: a site file renamed into the vassal directory, until the
    emperor's runtime record of its init appears (written once the init has
    exec'd); median and p95 over --runs;
  * spawn only: the emperor's own figure for the same starts (spec, skeleton,
    cgroup, clone, exec), from its log;
  * 1000 sites from cold: the emperor started on a directory of --sites files,
    until every init runs; and the shutdown of them all;
  * the resident memory (RSS and PSS) of one idle site's vassal;
  * crun and runc running the same site's OCI spec (from `emperor spec`) with
    /bin/true as the process, run to exit, through hyperfine; and crun with
    each container's network made by the CNI bridge plugin (bench/crun_cni.py);
  * the floor: clone3 with the same namespaces + exec /bin/true + wait, in
    process (sys example `floor`), the same with the child's eth0 made on a
    bridge before its exec (`floor --link`, in a network namespace of the
    bench's own), and `unshare` doing the same from a shell.
Everything it creates (directories, cgroups, processes) is removed at the end.
"""
import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

IN_CREATE, IN_DELETE, IN_MOVED_TO = 0x100, 0x200, 0x80
libc = ctypes.CDLL("libc.so.6", use_errno=True)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release")
# PID 1 of the containers as installed: the statically linked vassal (scripts/build-pid1 --release).
PID1 = os.path.join(REPO, "target", "pid1", "release", "vassal")


class Inotify:
    def __init__(self, path, mask):
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, path.encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify on " + path)

    def wait_for(self, name, mask, timeout=30.0):
        deadline = time.monotonic() + timeout
        import select
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(name)
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                continue
            data = os.read(self.fd, 65536)
            off = 0
            while off < len(data):
                _wd, m, _cookie, ln = __import__("struct").unpack_from("iIII", data, off)
                n = data[off + 16: off + 16 + ln].rstrip(b"\0").decode()
                off += 16 + ln
                if n == name and m & mask:
                    return

    def close(self):
        os.close(self.fd)


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


class Emperor:
    def __init__(self, root, cgroup_root, netns=None, extra=()):
        self.root = root
        self.extra = list(extra)
        self.cg = cgroup_root
        # With a network namespace (the bench's own): sites get their network
        # there; without, --network off. The machine's network is never touched.
        self.netns = netns
        self.paths = {k: os.path.join(root, k) for k in ("vassals", "home", "state", "run")}
        os.makedirs(self.paths["vassals"], exist_ok=True)
        # The run directory on a tmpfs of its own, as /run is on a host.
        os.makedirs(self.paths["run"], exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "imperium-bench-run", self.paths["run"]], check=True)
        self.proc = None

    def start(self):
        log = open(os.path.join(self.root, "emperor.log"), "a")
        wrap = ["nsenter", f"--net=/run/netns/{self.netns}", "--"] if self.netns else []
        net = [] if self.netns else ["--network", "off"]
        self.proc = subprocess.Popen(
            wrap + [f"{BIN}/emperor", "--run-dir", self.paths["run"], "serve", "--vassals", self.paths["vassals"],
                    "--home-root", self.paths["home"], "--state-dir", self.paths["state"], "--cgroup-root", self.cg,
                    "--stop-grace", "2", "--vassal-bin", PID1] + net + self.extra,
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(self.paths["run"], "emperor.sock")):
            if time.monotonic() > deadline:
                raise TimeoutError("emperor socket")
            time.sleep(0.002)

    def cli(self, *args):
        return subprocess.run([f"{BIN}/emperor", "--run-dir", self.paths["run"], *args],
                              capture_output=True, text=True, check=True).stdout

    def status(self):
        return json.loads(self.cli("status", "--json"))

    def write(self, name, text):
        tmp = os.path.join(self.paths["vassals"], f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, os.path.join(self.paths["vassals"], f"{name}.toml"))

    def shutdown(self):
        if self.proc and self.proc.poll() is None:
            subprocess.run([f"{BIN}/emperor", "--run-dir", self.paths["run"], "shutdown"], capture_output=True)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        """Shuts down, removes the cgroups left and unmounts the run directory."""
        try:
            self.shutdown()
        finally:
            remove_cgroups(self.cg)
            subprocess.run(["umount", "-l", self.paths["run"]])

    def spawn_times(self):
        text = open(os.path.join(self.root, "emperor.log")).read()
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        out = []
        for m in re.finditer(r"started vassal=\S+ pid=\d+ uid=\d+ elapsed_us=(\d+)", text):
            out.append(int(m.group(1)) / 1000)
        return out


def cgroup_roots():
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return ["/sys/fs/cgroup"]
    return [os.path.join("/sys/fs/cgroup", d) for d in os.listdir("/sys/fs/cgroup")
            if os.path.isdir(os.path.join("/sys/fs/cgroup", d)) and not os.path.islink(os.path.join("/sys/fs/cgroup", d))]


def remove_cgroups(name):
    """Kills what is left under a cgroup subtree and removes it, everywhere."""
    for root in cgroup_roots():
        top = os.path.join(root, name)
        if not os.path.isdir(top):
            continue
        for d, _, _ in os.walk(top):
            for f in ("freezer.state", "cgroup.freeze"):
                p = os.path.join(d, f)
                if os.path.exists(p):
                    try:
                        open(p, "w").write("THAWED" if f == "freezer.state" else "0")
                    except OSError:
                        pass
            try:
                for pid in open(os.path.join(d, "cgroup.procs")).read().split():
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        for d, _, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
            for _ in range(200):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


SITE = 'kind = "site"\n[limits]\nmemory = "64M"\npids = 64\n'


def drop_latency(e, prefix, runs, text=SITE, pause=0.0):
    """Milliseconds from a site file renamed into the directory to its init's
    record, `runs` times after 5 warm-up starts (each site removed again, then
    `pause` seconds: on a full host the emperor paces its scans, and a drop
    after a quiet while is what an operator sees)."""
    records = os.path.join(e.paths["run"], "vassals")
    ino = Inotify(records, IN_MOVED_TO | IN_DELETE)
    lat = []
    for i in range(runs + 5):
        name = f"{prefix}{i}"
        t0 = time.perf_counter()
        e.write(name, text)
        ino.wait_for(f"{name}.json", IN_MOVED_TO)
        dt = (time.perf_counter() - t0) * 1000
        if i >= 5:
            lat.append(dt)
        os.remove(os.path.join(e.paths["vassals"], f"{name}.toml"))
        ino.wait_for(f"{name}.json", IN_DELETE)
        time.sleep(pause)
    ino.close()
    return lat


class LoopBtrfs:
    """A btrfs on a loop device of the bench's own, mounted at `mnt` (removed by close())."""

    def __init__(self, work, mnt):
        self.img, self.mnt, self.dev = os.path.join(work, "btrfs.img"), mnt, None
        with open(self.img, "wb") as f:
            f.truncate(8 << 30)
        self.dev = subprocess.run(["losetup", "--find", "--show", self.img], check=True,
                                  capture_output=True, text=True).stdout.strip()
        subprocess.run(["mkfs.btrfs", "-q", self.dev], check=True)
        os.makedirs(mnt, exist_ok=True)
        subprocess.run(["mount", self.dev, mnt], check=True)

    def close(self):
        subprocess.run(["umount", self.mnt])
        subprocess.run(["losetup", "-d", self.dev])
        os.unlink(self.img)


def bench_quota(work, runs):
    """Drop -> running with the home root on a btrfs of the bench's own (a
    loop device): each start makes a subvolume home and caps its qgroup."""
    root = os.path.join(work, "quota")
    os.makedirs(root)
    e = Emperor(root, f"imperium-bench-quota-{os.getpid()}")
    fs = None
    try:
        fs = LoopBtrfs(root, e.paths["home"])
        e.start()
        lat = drop_latency(e, "q", runs, SITE + 'storage = "100M"\n')
        return {"drop_to_running_quota_ms": summary(lat), "spawn_quota_ms": summary(e.spawn_times()[5:])}
    finally:
        e.close()
        if fs:
            fs.close()


def bench_network(work, runs):
    """Drop -> running with each site's network (veth, addresses, routes) in a
    network namespace of the bench's own."""
    ns = f"imp-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    e = Emperor(os.path.join(work, "net"), f"imperium-bench-net-{os.getpid()}", netns=ns)
    try:
        e.start()
        lat = drop_latency(e, "net", runs)
        return {"drop_to_running_network_ms": summary(lat), "spawn_network_ms": summary(e.spawn_times()[5:])}
    finally:
        e.close()
        subprocess.run(["ip", "netns", "del", ns])


def bench_latency(work, runs):
    e = Emperor(os.path.join(work, "lat"), f"imperium-bench-{os.getpid()}")
    try:
        e.start()
        lat = drop_latency(e, "lat", runs)
        spawn = e.spawn_times()[5:]
        # One idle site for memory, and its spec for crun and runc.
        e.write("idle", 'kind = "site"\n[limits]\nmemory = "64M"\npids = 64\n')
        deadline = time.monotonic() + 10
        pid = None
        while pid is None and time.monotonic() < deadline:
            pid = next((r["pid"] for r in e.status() if r["name"] == "idle" and r["state"] == "running"), None)
            time.sleep(0.01)
        time.sleep(1.0)
        rss = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))
        pss = int(re.search(r"Pss:\s+(\d+)", open(f"/proc/{pid}/smaps_rollup").read()).group(1))
        oci = {k: run_oci(tool, e, "idle", work, runs) for k, tool in (("crun", "crun"), ("runc", "runc"))}
        oci.update(run_crun_cni(e, "idle", work, runs))
        return {"drop_to_running_ms": summary(lat), "spawn_ms": summary(spawn),
                "vassal_rss_kib": rss, "vassal_pss_kib": pss, **oci}
    finally:
        e.close()


def summary(xs):
    if not xs:
        return None
    return {"n": len(xs), "median": round(statistics.median(xs), 3), "p95": round(pct(xs, 95), 3), "min": round(min(xs), 3)}


def oci_bundle(e, name, work, tag):
    """The site `name`'s bundle, as `emperor spec --bundle` writes it (its
    own root, home and sockets), running /bin/true in a cgroup of the
    bench's own; returns the bundle's path and that cgroup's name."""
    bundle = os.path.join(work, f"bundle-{tag}")
    e.cli("spec", name, "--bundle", bundle)
    spec = json.load(open(os.path.join(bundle, "config.json")))
    spec["process"]["args"] = ["/bin/true"]
    cg = f"imperium-bench-{tag}-{os.getpid()}"
    spec["linux"]["cgroupsPath"] = f"/{cg}/ctr"
    json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
    return bundle, cg


def run_oci(tool, e, name, work, runs):
    """`tool run` of the site `name`'s container, as `emperor spec --bundle`
    writes it (its own root, home and sockets), running /bin/true."""
    if not shutil.which(tool):
        return None
    bundle, cg = oci_bundle(e, name, work, tool)
    out = os.path.join(work, f"{tool}.json")
    cmd = f"{tool} run --bundle {bundle} bench-{tool}-{os.getpid()}"
    hf = f"hyperfine -N --warmup 5 --runs {runs} --export-json {out} '{cmd}' >/dev/null"
    if os.path.exists("/sys/fs/cgroup/unified"):
        # crun refuses a hybrid host unless the cgroup2 mount is hidden (private mount namespace).
        hf = f"unshare -m --propagation private sh -c 'mount -t tmpfs tmpfs /sys/fs/cgroup/unified && {hf.replace(chr(39), chr(34))}'"
    try:
        subprocess.run(["sh", "-c", hf], check=True, timeout=600)
        times = [t * 1000 for t in json.load(open(out))["results"][0]["times"]]
        return summary(times)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        return {"error": str(err)}
    finally:
        remove_cgroups(cg)


def run_crun_cni(e, name, work, runs):
    """crun with each container's network made by the CNI bridge plugin,
    and crun alone, timed by the same driver (bench/crun_cni.py) in a
    network namespace of the bench's own."""
    if not (shutil.which("crun") and os.path.exists("/usr/lib/cni/bridge")):
        return {}
    bundle, cg = oci_bundle(e, name, work, "crun-cni")
    ns = f"imp-cni-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    driver = f"python3 {os.path.join(REPO, 'bench', 'crun_cni.py')} {bundle} {work} {runs}"
    if os.path.exists("/sys/fs/cgroup/unified"):
        # crun refuses a hybrid host unless the cgroup2 mount is hidden (private mount namespace).
        driver = f"mount -t tmpfs tmpfs /sys/fs/cgroup/unified && {driver}"
    try:
        out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "unshare", "-m", "--propagation", "private",
                              "sh", "-c", driver], check=True, capture_output=True, text=True, timeout=900).stdout
        r = json.loads(out)
        return {"crun_driver": r["crun"], "crun_cni": r["crun_cni"]}
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError) as err:
        return {"crun_cni": {"error": str(err)[:500]}}
    finally:
        subprocess.run(["ip", "netns", "del", ns])
        remove_cgroups(cg)


def bench_cold(work, sites, quotas=False, launcher=True):
    """`sites` sites from cold, then again after a shutdown (homes and uids
    exist); with `quotas`, the home root on a btrfs of the bench's own and
    every site capped (a subvolume and a qgroup each); without `launcher`,
    the emperor clones every container itself (`--launcher off`)."""
    name = ("cold-quota" if quotas else "cold") + ("" if launcher else "-nolauncher")
    e = Emperor(os.path.join(work, name), f"imperium-bench-{name}-{os.getpid()}",
                extra=() if launcher else ("--launcher", "off"))
    fs = None
    try:
        fs = LoopBtrfs(os.path.join(work, name), e.paths["home"]) if quotas else None
        for i in range(sites):
            with open(os.path.join(e.paths["vassals"], f"s{i}.toml"), "w") as f:
                f.write('kind = "site"\n[limits]\nmemory = "32M"\npids = 32\n' + ('storage = "100M"\n' if quotas else ""))
        records = os.path.join(e.paths["run"], "vassals")
        t0 = time.perf_counter()
        e.start()
        deadline = time.monotonic() + 300
        while True:
            n = len([f for f in os.listdir(records) if f.endswith(".json")]) if os.path.isdir(records) else 0
            if n >= sites:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n}/{sites} sites up")
            # Looked at every 50 ms: the bench's own polling stays off the
            # machine it measures (every 5 ms cost about 6 % of it).
            time.sleep(0.05)
        up = time.perf_counter() - t0
        t1 = time.perf_counter()
        e.shutdown()
        down = time.perf_counter() - t1
        # Again, now that the homes and uids exist (a host's reboot).
        t2 = time.perf_counter()
        e.start()
        while len([f for f in os.listdir(records) if f.endswith(".json")]) < sites:
            if time.monotonic() > deadline + 300:
                raise TimeoutError("second cold start")
            time.sleep(0.05)
        again = time.perf_counter() - t2
        return {"sites": sites, "up_s": round(up, 3), "shutdown_s": round(down, 3), "up_again_s": round(again, 3)}
    finally:
        e.close()
        if fs:
            fs.close()


def settle(limit=2.5, timeout=300):
    """Waits (up to `timeout` s) for the load average to fall under `limit`:
    the kernel frees a run's namespaces and cgroups in the background."""
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] > limit and time.monotonic() < deadline:
        time.sleep(5)


def floor_example(runs, *extra, netns=None):
    wrap = ["ip", "netns", "exec", netns] if netns else []
    out = subprocess.run(wrap + ["cargo", "run", "--release", "-q", "-p", "sys", "--example", "floor", "--", str(runs), *extra],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    f = json.loads(out)
    return {"n": f["runs"], "median": f["median_us"] / 1000, "p95": f["p95_us"] / 1000, "min": f["min_us"] / 1000}


def floor(runs):
    inproc = floor_example(runs)
    # With a network: each child's namespace given its eth0 on a bridge
    # (the emperor's own netlink steps), in a namespace of the bench's own.
    ns = f"imp-floor-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        link = floor_example(runs, "--link", netns=ns)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
    work = tempfile.mkdtemp()
    try:
        out = os.path.join(work, "u.json")
        subprocess.run(["hyperfine", "-N", "--warmup", "5", "--runs", str(runs), "--export-json", out,
                        "unshare --pid --fork --mount --uts --ipc --net --cgroup /bin/true"],
                       check=True, capture_output=True)
        shell = summary([t * 1000 for t in json.load(open(out))["results"][0]["times"]])
    finally:
        shutil.rmtree(work)
    return {"floor_in_process_ms": inproc, "floor_in_process_link_ms": link, "floor_unshare_ms": shell}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--sites", type=int, default=1000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    work = tempfile.mkdtemp(prefix="imperium-bench-")
    try:
        res = {"load_before": os.getloadavg()[0]}
        res.update(floor(args.runs))
        res.update(bench_latency(work, args.runs))
        res.update(bench_network(work, args.runs))
        res.update(bench_quota(work, args.runs))
        # Each cold start on a settled machine: the runs before leave the
        # kernel tearing down their namespaces and cgroups.
        settle()
        res["cold"] = bench_cold(work, args.sites)
        settle()
        res["cold_no_launcher"] = bench_cold(work, args.sites, launcher=False)
        settle()
        res["cold_quota"] = bench_cold(work, args.sites, quotas=True)
        res["load_after"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=2))
    med = lambda k: (res.get(k) or {}).get("median")
    if all(med(k) for k in ("crun", "runc", "drop_to_running_ms", "spawn_ms", "floor_in_process_ms")):
        print(f"\ncrun / emperor drop->running: {med('crun') / med('drop_to_running_ms'):.2f}x;"
              f" runc / emperor: {med('runc') / med('drop_to_running_ms'):.2f}x;"
              f" emperor / in-process floor: {med('drop_to_running_ms') / med('floor_in_process_ms'):.2f}x;"
              f" emperor spawn / floor: {med('spawn_ms') / med('floor_in_process_ms'):.2f}x")
    if med("drop_to_running_quota_ms"):
        print(f"with each home a btrfs subvolume capped by its qgroup: drop->running"
              f" {med('drop_to_running_quota_ms')} ms ({med('drop_to_running_quota_ms') / med('drop_to_running_ms'):.2f}x without)")
    if res.get("cold_no_launcher"):
        c, n = res["cold"], res["cold_no_launcher"]
        print(f"{c['sites']} sites cold, cloned by the launcher: {c['up_s']} s (again {c['up_again_s']} s);"
              f" by the emperor itself: {n['up_s']} s (again {n['up_again_s']} s)")
    if res.get("cold_quota"):
        c, q = res["cold"], res["cold_quota"]
        print(f"{c['sites']} sites cold: {c['up_s']} s; with a capped subvolume each: {q['up_s']} s"
              f" ({q['up_s'] / c['up_s']:.2f}x); again after a shutdown: {c['up_again_s']} s / {q['up_again_s']} s")
    if med("drop_to_running_network_ms") and med("crun"):
        print(f"with each site's network: drop->running {med('drop_to_running_network_ms')} ms"
              f" ({med('drop_to_running_network_ms') / med('drop_to_running_ms'):.2f}x without;"
              f" crun / emperor: {med('crun') / med('drop_to_running_network_ms'):.2f}x)")
    if med("drop_to_running_network_ms") and med("crun_cni"):
        print(f"crun with each container's network by the CNI bridge plugin: {med('crun_cni')} ms"
              f" (crun alone by the same driver {med('crun_driver')} ms);"
              f" crun+CNI / emperor with each site's network:"
              f" {med('crun_cni') / med('drop_to_running_network_ms'):.2f}x")
    if med("drop_to_running_network_ms") and med("floor_in_process_link_ms"):
        print(f"in-process floor with a link: {med('floor_in_process_link_ms')} ms;"
              f" emperor with each site's network / that floor:"
              f" {med('drop_to_running_network_ms') / med('floor_in_process_link_ms'):.2f}x")


if __name__ == "__main__":
    main()
