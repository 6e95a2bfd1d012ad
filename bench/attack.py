#!/usr/bin/env python3
"""A neighbour's req/s through the router while another tenant attacks, on 127.0.0.1 only.

One router, two sites: "neighbour" (neighbour.test, nginx on its socket) and
"attacker" (attacker.test and *.attacker.test, its own nginx on 16 sockets). The
neighbour's req/s (wrk -t1 -c16) is measured right before each flood and during
it, in the same run:

- idle:       6,000 TCP connections that send nothing, from 12 loopback addresses
- plain-load: the attacker's own domain, one backend, 4 clients (the control for amplify)
- amplify:    16 backends of weight 100/99 on one domain, 4 clients hammering it
- subscribe:  two processes sending signed subscriptions as fast as they can
- drop-spam:  a reseller's drop directory rewritten with junk files in a loop
              (a real emperor with a group, watching it)
- fork-bomb:  a site whose tenant process is a fork bomb (pids 100, cpu 0.5)

The attacker's own processes (wrk, the subscription flooder, the drop-directory
writer) run as a tenant's (or the reseller's) uid, in a cgroup with a site's CPU
budget, 0.5 core, as a tenant's would. Cgroups as on a systemd host: the router
(CPUWeight=1000, as its unit) and the emperor in `system`, the sites, their
backends and the attacker's tools in `machine`; the neighbour's wrk, standing for
the Internet, in a cgroup of its own with a high weight. Each row also gives the
cores the router and the emperor used during the flood.
Every flood is bounded in time (--seconds) and stops by itself; everything
made is removed at the end.

    bench/attack.py [--seconds 6]      (bench/run-attack builds and installs)
"""
import argparse, base64, json, os, re, resource, shutil, signal, socket, subprocess, tempfile, threading, time

from router import stop_all, wait_port  # bench/router.py, beside this file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(REPO, "target", "release")
HTTP = 19080
TENANT = 39999  # the attacker's uid: a tenant's, never root's


def wrk(host, seconds, conns=16, cgroup=None):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-H", f"Host: {host}", f"http://127.0.0.1:{HTTP}/"],
                         capture_output=True, text=True, timeout=seconds + 30,
                         preexec_fn=cgroup.enter() if cgroup else None).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"req_s": round(rps), "non_2xx": int(errs.group(1)) if errs else 0}


def wait_path(path, deadline=20):
    t = time.time() + deadline
    while time.time() < t and not os.path.exists(path):
        time.sleep(0.05)
    if not os.path.exists(path):
        raise TimeoutError(path)


class Budget:
    """A cgroup for a group of the benchmark's processes: with `cores`, a
    site's CPU budget (the attacker's own tools run under one, as a tenant's
    would); with `weight`, a CPU weight relative to the default (the
    neighbour's clients stand for the Internet: what the attacker burns on
    this machine must not slow the instrument itself)."""

    def __init__(self, name, cores=None, weight=None):
        period = 100000
        v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        self.dirs = [f"/sys/fs/cgroup/{name}" if v2 else f"/sys/fs/cgroup/cpu/{name}"]
        os.makedirs(self.dirs[0], exist_ok=True)
        d = self.dirs[0]
        if cores is not None and v2:
            open(f"{d}/cpu.max", "w").write(f"{int(cores * period)} {period}")
        elif cores is not None:
            open(f"{d}/cpu.cfs_period_us", "w").write(str(period))
            open(f"{d}/cpu.cfs_quota_us", "w").write(str(int(cores * period)))
        if weight is not None and v2:
            open(f"{d}/cpu.weight", "w").write(str(100 * weight))
        elif weight is not None:
            open(f"{d}/cpu.shares", "w").write(str(1024 * weight))

    def enter(self):
        """A preexec_fn: the child joins the cgroup and keeps its uid."""
        def enter():
            for d in self.dirs:
                open(f"{d}/cgroup.procs", "w").write(str(os.getpid()))
        return enter

    def enter_as(self, uid):
        """A preexec_fn: the child joins the budget, then becomes `uid` (a tenant is never root)."""
        def enter():
            for d in self.dirs:
                open(f"{d}/cgroup.procs", "w").write(str(os.getpid()))
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        return enter

    def remove(self):
        for d in self.dirs:
            try:
                os.rmdir(d)
            except OSError:
                pass


class Idle:
    """Connections that send nothing, held until stop()."""

    def __init__(self, count):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 1024)), hard))
        self.socks, self.refused = [], 0
        for i in range(count):
            s = socket.socket()
            try:
                s.bind((f"127.0.0.{2 + i % 12}", 0))
                s.connect(("127.0.0.1", HTTP))
                self.socks.append(s)
            except OSError:
                self.refused += 1
                s.close()

    def stop(self):
        for s in self.socks:
            s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=6)
    args = ap.parse_args()
    S = args.seconds
    work = tempfile.mkdtemp(prefix="imperium-attack-bench-")
    os.chmod(work, 0o755)  # the attacker's tools run as a tenant's uid
    cgroot = f"imperium-attack-{os.getpid()}"
    procs, emperor, groups = [], None, []
    try:
        # The placement of a systemd host (see configs/): the router and the
        # emperor in system.slice, the router with its unit's CPUWeight=1000;
        # every site (its processes, its backend) in machine.slice. Parents
        # come before their children here and are removed after them.
        clients = Budget(f"{cgroot}-clients", weight=8)
        system, machine = Budget(f"{cgroot}-system"), Budget(f"{cgroot}-machine")
        routerg = Budget(f"{cgroot}-system/router", weight=10)
        emperorg = Budget(f"{cgroot}-system/emperor")
        budget = Budget(f"{cgroot}-machine/attacker-tools", cores=0.5)
        backends = {site: Budget(f"{cgroot}-machine/{site}", cores=1.0) for site in ("neighbour", "attacker")}
        groups = [clients, system, machine, routerg, emperorg, budget, *backends.values()]
        assert groups[5] is budget
        socks = os.path.join(work, "sockets")
        for site in ("neighbour", "attacker"):
            os.makedirs(os.path.join(socks, site))
        os.makedirs(os.path.join(work, "run", "router"))
        # Each site's backend in its own nginx: the attacker's load on its
        # backend must not slow the neighbour's down through a shared worker.
        listens = "".join(f"listen unix:{socks}/attacker/b{i}.sock; " for i in range(16))
        for name, server in (("neighbour", f'listen unix:{socks}/neighbour/app.sock; location / {{ return 200 "neighbour"; }}'),
                             ("attacker", f'{listens} location / {{ return 200 "attacker"; }}')):
            open(f"{work}/{name}.conf", "w").write(f"""
worker_processes 1; pid {work}/{name}.pid; error_log {work}/{name}.err; daemon off;
events {{ worker_connections 4096; }}
http {{ access_log off; server {{ {server} }} }}
""")
            procs.append(subprocess.Popen(["nginx", "-c", f"{work}/{name}.conf", "-p", work], preexec_fn=backends[name].enter()))
        wait_path(f"{socks}/neighbour/app.sock")
        keys, pubs = {}, {}
        for site in ("neighbour", "attacker"):
            keys[site] = f"{work}/{site}.key"
            open(keys[site], "w").write(base64.b64encode(os.urandom(32)).decode() + "\n")
        sock = f"{work}/run/router/subscribe.sock"
        sub = lambda site, backend: [f"{REL}/examples/subscriber", sock, site, keys[site], backend]
        for site in keys:
            pubs[site] = subprocess.run(sub(site, "-")[:4] + ["-", "pubkey"], capture_output=True, text=True, check=True).stdout.strip()
        uid = os.getuid()
        dominion = {"schemaVersion": 1, "sites": {
            "neighbour": {"publicKey": pubs["neighbour"], "domains": ["neighbour.test"], "sockets": f"{socks}/neighbour", "uid": uid},
            "attacker": {"publicKey": pubs["attacker"], "domains": ["attacker.test", "*.attacker.test"], "sockets": f"{socks}/attacker", "uid": uid},
        }}
        json.dump(dominion, open(f"{work}/run/router/dominion.json", "w"))
        router = subprocess.Popen([f"{REL}/router", "serve", "--http", f"127.0.0.1:{HTTP}", "--https", f"127.0.0.1:{HTTP + 1}",
                                   "--run-dir", f"{work}/run", "--state-dir", f"{work}/state", "--ttl", "3600"],
                                  stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="off"), preexec_fn=routerg.enter())
        procs.append(router)
        wait_port(HTTP)
        subprocess.run(sub("neighbour", "app.sock") + ["one", "neighbour.test"], check=True)

        # A real emperor for the floods that go through it.
        ev = f"{work}/emperor"
        os.makedirs(f"{ev}/vassals")
        open(f"{ev}/vassals/grp.toml", "w").write('kind = "group"\nmode = "overcommit"\n[limits]\nmemory = "256M"\ncpu = 1.0\npids = 400\n')
        open(f"{ev}/vassals/bomb.toml", "w").write('kind = "site"\n[limits]\nmemory = "64M"\ncpu = 0.5\npids = 100\n')
        emperor = subprocess.Popen([f"{REL}/emperor", "--run-dir", f"{ev}/run", "serve", "--vassals", f"{ev}/vassals",
                                    "--home-root", f"{ev}/home", "--state-dir", f"{ev}/state", "--cgroup-root", f"{cgroot}-machine/sites",
                                    "--network", "off"],
                                   stderr=open(f"{work}/emperor.log", "w"), preexec_fn=emperorg.enter())
        wait_path(f"{ev}/home/grp/vassals")
        wait_path(f"{ev}/home/bomb/vassals")

        res = {"seconds": S, "load_before": os.getloadavg()[0]}
        wrk("neighbour.test", 2, cgroup=clients)  # warm up: connections to the backend pooled

        def cpu(p):
            """CPU seconds `p` has used so far (user + system)."""
            f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

        def during(name, start, stop):
            # A baseline right before each flood: this machine's speed drifts within a run.
            base = wrk("neighbour.test", S, cgroup=clients)
            state = start()
            used = cpu(router), cpu(emperor)
            r = wrk("neighbour.test", S, cgroup=clients)
            r["router_cores"], r["emperor_cores"] = (round((cpu(p) - u) / S, 2) for p, u in zip((router, emperor), used))
            extra = stop(state)
            r["baseline_req_s"] = base["req_s"]
            r["ratio"] = round(r["req_s"] / base["req_s"], 3)
            if extra:
                r.update(extra)
            res[name] = r

        def idle_start():
            return Idle(6000)

        def idle_stop(i):
            i.stop()
            return {"held": len(i.socks), "refused_at_connect": i.refused}
        during("idle", idle_start, idle_stop)

        def amp_start():
            # Weights 100 and one 99: the longest ring a domain can have.
            subprocess.run(sub("attacker", "b{}.sock") + ["backends", "attacker.test", "0", "15", "100"], check=True)
            subprocess.run(sub("attacker", "b{}.sock") + ["backends", "attacker.test", "15", "16", "99"], check=True)
            return subprocess.Popen(["wrk", "-t1", "-c4", f"-d{S + 2}s", "-H", "Host: attacker.test", f"http://127.0.0.1:{HTTP}/"],
                                    stdout=subprocess.PIPE, text=True, preexec_fn=budget.enter_as(TENANT))

        def amp_stop(p):
            out = p.communicate(timeout=S + 30)[0]
            m = re.search(r"Requests/sec:\s+([\d.]+)", out)
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            return {"attacker_req_s": round(float(m.group(1))) if m else None, "attacker_non_2xx": int(bad.group(1)) if bad else 0}
        def plain_start():
            subprocess.run(sub("attacker", "b0.sock") + ["one", "plain.attacker.test"], check=True)
            return subprocess.Popen(["wrk", "-t1", "-c4", f"-d{S + 2}s", "-H", "Host: plain.attacker.test", f"http://127.0.0.1:{HTTP}/"],
                                    stdout=subprocess.PIPE, text=True, preexec_fn=budget.enter_as(TENANT))
        during("plain-load", plain_start, amp_stop)
        during("amplify", amp_start, amp_stop)

        def flood_start():
            return [subprocess.Popen(sub("attacker", "b0.sock") + ["flood", "attacker.test", str(S)], stdout=subprocess.PIPE, text=True,
                                     preexec_fn=budget.enter_as(TENANT))
                    for _ in range(2)]

        def flood_stop(ps):
            got = [json.loads(p.communicate(timeout=S + 30)[0]) for p in ps]
            return {k: sum(g[k] for g in got) for k in ("taken", "refused", "connections_refused")}
        during("subscribe", flood_start, flood_stop)

        def spam_start():
            drop = f"{ev}/home/grp/vassals"
            loop = f"""
import os, time
t = time.time() + {S + 1}
n = 0
while time.time() < t:
    body = b'kind = "site"\\n[limits]\\nmemory = "' + os.urandom(64).hex().encode() + b'"\\n'
    open("{drop}/.t", "wb").write(body)
    os.rename("{drop}/.t", "{drop}/s%d.toml" % (n % 500))
    n += 1
print(n)
"""
            reseller = os.stat(drop).st_uid
            return subprocess.Popen(["python3", "-c", loop], stdout=subprocess.PIPE, text=True,
                                    preexec_fn=budget.enter_as(reseller)), drop

        def spam_stop(st):
            p, drop = st
            n = int(p.communicate(timeout=S + 30)[0])
            for f in os.listdir(drop):
                os.unlink(os.path.join(drop, f))
            return {"files_written": n}
        during("drop-spam", spam_start, spam_stop)

        def bomb_start():
            home = f"{ev}/home/bomb"
            st = os.stat(home)
            path = f"{home}/vassals/bomb.toml"
            open(path, "w").write('command = ["sh", "-c", "b() { b | b & }; b"]\n')
            os.chown(path, st.st_uid, st.st_gid)
            return path

        def bomb_stop(path):
            os.unlink(path)
            return None
        during("fork-bomb", bomb_start, bomb_stop)

        res["load_after"] = os.getloadavg()[0]
        print(json.dumps(res, indent=2))
        print("| flood | neighbour req/s before | during | ratio | router cores | emperor cores |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in ("idle", "plain-load", "amplify", "subscribe", "drop-spam", "fork-bomb"):
            r = res[name]
            print(f"| {name} | {r['baseline_req_s']:,} | {r['req_s']:,} | {r['ratio']:.2f} | {r['router_cores']} | {r['emperor_cores']} |")
    finally:
        for g in groups[5:]:  # the attacker's tools and the backends (not the router and the emperor)
            for d in g.dirs:
                for pid in open(f"{d}/cgroup.procs").read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
        if emperor:
            subprocess.run([f"{REL}/emperor", "--run-dir", f"{work}/emperor/run", "shutdown"], capture_output=True, timeout=60)
            try:
                emperor.wait(timeout=20)
            except subprocess.TimeoutExpired:
                emperor.kill()
        stop_all(procs)
        # Whatever the emperor left (it removes its own on shutdown): v1 controllers, or the v2 tree.
        sites = f"{cgroot}-machine/sites"
        for d in [f"/sys/fs/cgroup/{c}/{sites}" for c in os.listdir("/sys/fs/cgroup")] + [f"/sys/fs/cgroup/{sites}"]:
            for root, _, _ in sorted(os.walk(d), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(root)
                except OSError:
                    pass
        time.sleep(0.2)
        for g in reversed(groups):
            g.remove()
        for c in os.listdir("/sys/fs/cgroup"):  # the emperor's sites' parents in other controllers
            for d in (f"/sys/fs/cgroup/{c}/{cgroot}-machine",):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
