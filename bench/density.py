#!/usr/bin/env python3
"""Density: how many idle sites one host holds, and what it costs.

The emperor (release build) in a network namespace of the bench's own (the
machine's network is never touched), every site with its network (address,
veth, firewall), brought up from cold with --sites files at once, then each
given one process of its tenant's (`sleep`, through ~/vassals/). Reported:
the time until every init runs (and how far it got if it did not), the
emperor's RSS, CPU and open files at rest afterwards, `emperor status`
latency, kernel memory (slab) and MemAvailable per site, the vassals' unshared memory
(private pages, sampled), the bridges made, and what broke first (the
emperor's first errors). Everything is removed at the end.

    bench/density.py [--sites 2000] [--timeout 900]     (bench/run-density builds)
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from start import BIN, Emperor, drop_latency, settle, summary  # noqa: E402  (bench/start.py)


def meminfo():
    m = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":")
        m[k] = int(v.split()[0])
    return m


def tasks():
    """Tasks on the host now (threads included: each takes a pid)."""
    return int(open("/proc/loadavg").read().split()[3].split("/")[1])


def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def private_kib(pid):
    """Pages only this process has (anonymous and file): what one more site costs."""
    t = open(f"/proc/{pid}/smaps_rollup").read()
    return sum(int(re.search(rf"^{k}:\s+(\d+)", t, re.M).group(1)) for k in ("Private_Clean", "Private_Dirty"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=2000)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--no-process", action="store_true",
                    help="leave the sites empty (by default each then runs one small process of its tenant's)")
    ap.add_argument("--launcher", choices=["on", "off"], default="on",
                    help="off: the emperor clones every container itself")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    # The kernel tears network namespaces down in the background: a run right
    # after another would measure that teardown too.
    settle(limit=3)
    work = tempfile.mkdtemp(prefix="imperium-density-")
    ns = f"imp-density-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    e = Emperor(os.path.join(work, "e"), f"imperium-density-{os.getpid()}", netns=ns,
                extra=("--launcher", args.launcher))
    res = {"sites": args.sites, "launcher": args.launcher, "load_before": os.getloadavg()[0]}
    try:
        for i in range(args.sites):
            with open(os.path.join(e.paths["vassals"], f"s{i}.toml"), "w") as f:
                f.write('kind = "site"\n[limits]\nmemory = "32M"\npids = 32\n')
        subprocess.run(["sync"])
        before = meminfo()
        tasks_before = tasks()
        records = os.path.join(e.paths["run"], "vassals")
        count = lambda: len([f for f in os.listdir(records) if f.endswith(".json")]) if os.path.isdir(records) else 0
        t0 = time.perf_counter()
        e.start()
        n, last_n, last_t = 0, 0, time.monotonic()
        # How it grew: every 1,000 sites, the time, kernel memory and load.
        res["growth"], mark = [], 1000
        while True:
            n = count()
            while n >= mark:
                m = meminfo()
                res["growth"].append({"sites": mark, "s": round(time.perf_counter() - t0, 1),
                                      "slab_mib": m["Slab"] // 1024, "available_mib": m["MemAvailable"] // 1024,
                                      "load": os.getloadavg()[0]})
                print(json.dumps(res["growth"][-1]), file=sys.stderr, flush=True)
                mark += 1000
            if n >= args.sites:
                break
            if n != last_n:
                last_n, last_t = n, time.monotonic()
            # Stalled for 60 s, or the deadline: report how far it got.
            if time.monotonic() - last_t > 60 or time.perf_counter() - t0 > args.timeout:
                break
            time.sleep(0.05)
        res["running"] = n
        res["up_s"] = round(time.perf_counter() - t0, 2)
        if not args.no_process:
            # Each tenant's own process, as a tenant adds one: a file in ~/vassals.
            t1 = time.perf_counter()
            for i in range(n):
                home = os.path.join(e.paths["home"], f"s{i}")
                try:
                    st = os.stat(home)
                    d = os.path.join(home, "vassals")
                    tmp, dst = os.path.join(d, ".idle.tmp"), os.path.join(d, "idle.toml")
                    with open(tmp, "w") as f:
                        f.write('command = ["sleep", "infinity"]\n')
                    os.chown(tmp, st.st_uid, st.st_gid)
                    os.rename(tmp, dst)
                except OSError as err:
                    res.setdefault("plant_errors", []).append(f"s{i}: {err}")
            with_process = 0
            while time.perf_counter() - t1 < args.timeout:
                rows = e.status()
                with_process = sum(1 for r in rows if (r.get("usage") or {}).get("pids", 0) >= 2)
                if with_process >= n:
                    break
                time.sleep(1)
            res["with_process"] = with_process
            res["process_up_s"] = round(time.perf_counter() - t1, 2)
        # What follows is measured at rest: after a mass start the machine
        # is busy for minutes (the load passed 9,000 at 10,000 sites).
        settle(limit=4, timeout=900)
        res["load_at_rest"] = os.getloadavg()[0]
        # At rest: the emperor's memory and CPU over 10 s.
        time.sleep(5)
        c0 = proc_cpu(e.proc.pid)
        time.sleep(10)
        res["emperor_cpu_at_rest"] = round((proc_cpu(e.proc.pid) - c0) / 10, 4)
        res["emperor_rss_kib"] = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{e.proc.pid}/status").read()).group(1))
        res["emperor_open_files"] = len(os.listdir(f"/proc/{e.proc.pid}/fd"))
        # Every task takes a pid (kernel.pid_max) and a kernel stack.
        res["tasks_per_site"] = round((tasks() - tasks_before) / max(n, 1), 2)
        lat = []
        for _ in range(5):
            t = time.perf_counter()
            rows = e.status()
            lat.append((time.perf_counter() - t) * 1000)
        # The first call opens every site's usage files; the next ones read
        # the files it kept open.
        res["status_ms"] = {"first": round(lat[0], 1), "median": round(statistics.median(lat), 1),
                            "max": round(max(lat), 1), "rows": len(rows) if isinstance(rows, list) else None}
        # One more site on a full host, 20 times (each removed again, then a
        # second's pause): what a start costs once the emperor holds every
        # other site. Without the pause the drops come faster than the
        # emperor lets a reseller's changes be scanned (bench: paced).
        for key, prefix, pause in (("drop_to_running_on_full_host_ms", "more", 1.0),
                                   ("drop_to_running_on_full_host_paced_ms", "paced", 0.0)):
            c0 = proc_cpu(e.proc.pid)
            try:
                res[key] = summary(drop_latency(e, prefix, 20, pause=pause))
            except TimeoutError as err:
                res[key] = f"no record within 30 s: {err}"
            # The emperor's CPU for one site added and removed again (25
            # each: 5 warm-up starts), its share at rest taken off.
            cpu = proc_cpu(e.proc.pid) - c0 - res["emperor_cpu_at_rest"] * (20 * pause)
            res[key.replace("_ms", "_emperor_cpu_ms")] = round(cpu / 25 * 1000, 2)
        after = meminfo()
        per = lambda k: round((after[k] - before[k]) / max(n, 1), 1)
        res["per_site_kib"] = {"slab": per("Slab"), "slab_unreclaimable": per("SUnreclaim"),
                               "kernel_stack": per("KernelStack"), "page_tables": per("PageTables"),
                               "mem_available_drop": round((before["MemAvailable"] - after["MemAvailable"]) / max(n, 1), 1)}
        pids = []
        for f in sorted(os.listdir(records))[:50] if os.path.isdir(records) else []:
            try:
                pids.append(json.load(open(os.path.join(records, f)))["pid"])
            except (OSError, ValueError, KeyError):
                pass
        priv = [private_kib(p) for p in pids if os.path.exists(f"/proc/{p}")]
        res["vassal_private_kib"] = {"median": statistics.median(priv), "max": max(priv)} if priv else None
        links = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
        res["bridges"] = sorted(re.findall(r"\d+: (imperium\d+)", links))
        log = re.sub(r"\x1b\[[0-9;]*m", "", open(os.path.join(e.root, "emperor.log")).read())
        errors = [l for l in log.splitlines() if " ERROR " in l or " WARN " in l]
        res["emperor_warnings"] = len(errors)
        res["first_warnings"] = [l[:300] for l in errors[:5]]
        t1 = time.perf_counter()
        e.shutdown()
        res["shutdown_s"] = round(time.perf_counter() - t1, 2)
        res["load_after"] = os.getloadavg()[0]
    except BaseException as err:
        res["stopped_by"] = repr(err)
        raise
    finally:
        # What was measured, even when a step failed.
        print(json.dumps(res, indent=2), flush=True)
        e.close()
        subprocess.run(["ip", "netns", "del", ns])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
