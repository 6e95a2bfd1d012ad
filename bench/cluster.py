#!/usr/bin/env python3
"""Cluster mode: sites placed over several emperor hosts through etcd.

Three etcd members (Debian's etcd-server) and --hosts emperors (release
builds, --network off), each in a network namespace of the bench's own on
one bridge; the driver puts files through etcd's JSON gateway from a
namespace of its own. The machine's network is never touched. Reported:

  * --sites admin sites (64M each) put at once, spread over the hosts by
    their `host` key: the time until every one runs on its host;
  * one more site, put -> its init's record on its host (inotify on the
    host's run directory), --runs times, each removed again; beside it, the
    same drop into a single host's own directory (no etcd) in the same run;
  * etcd's database size with the running sites, then with --files files in
    all (the rest placed on a host that runs nothing), and how long a host's
    agent takes to list them all at its start.

    bench/cluster.py [--hosts 2] [--sites 1000] [--runs 30] [--files 10000]
"""
import argparse, base64, ctypes, http.client, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from start import SITE, Emperor, Inotify, IN_DELETE, IN_MOVED_TO, drop_latency, settle, summary  # noqa: E402

LAN = "192.0.2"
libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000


def ip(*args):
    subprocess.run(["ip", *args], check=True)


class Lan:
    def __init__(self, tag):
        self.switch, self.nodes = f"imp-b{tag}-lan", []
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        self.tag = tag

    def node(self, last):
        ns = f"imp-b{self.tag}-{last}"
        ip("netns", "add", ns)
        self.nodes.append(ns)
        port = f"p{last}"
        ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", self.switch, "link", "set", port, "master", "br0")
        ip("-n", self.switch, "link", "set", port, "up")
        ip("-n", ns, "addr", "add", f"{LAN}.{last}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def close(self):
        for ns in self.nodes + [self.switch]:
            subprocess.run(["ip", "netns", "del", ns])


class Gateway:
    """etcd's JSON gateway, from a namespace of the driver's own (the
    connection is made inside it; the process stays where it was)."""

    def __init__(self, ns, member):
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(there, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            self.conn = http.client.HTTPConnection(member, 2379, timeout=30)
            self.conn.connect()
        finally:
            libc.setns(home, CLONE_NEWNET)
            os.close(home)
            os.close(there)

    def call(self, path, body):
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{path}: {r.status} {data[:200]!r}")
        return json.loads(data)

    def put(self, key, value):
        b64 = lambda s: base64.b64encode(s.encode()).decode()
        self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def delete(self, key):
        self.call("/v3/kv/deleterange", {"key": base64.b64encode(key.encode()).decode()})


def site(host):
    return f'kind = "site"\nhost = "{host}"\n[limits]\nmemory = "64M"\npids = 64\n'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--files", type=int, default=10000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    settle(limit=3)
    work = tempfile.mkdtemp(prefix="imperium-cluster-")
    tag = f"{os.getpid() % 10000}"
    lan, members, hosts, single = Lan(tag), [], [], None
    try:
        peers = ",".join(f"e{i}=http://{LAN}.1{i}:2380" for i in range(1, 4))
        for i in range(1, 4):
            ns = lan.node(10 + i)
            url, peer = f"http://{LAN}.1{i}:2379", f"http://{LAN}.1{i}:2380"
            log = open(os.path.join(work, f"e{i}.log"), "w")
            members.append(subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", "--", "etcd", "--name", f"e{i}",
                 "--data-dir", os.path.join(work, f"e{i}"), "--listen-client-urls", url,
                 "--advertise-client-urls", url, "--listen-peer-urls", peer,
                 "--initial-advertise-peer-urls", peer, "--initial-cluster", peers,
                 "--initial-cluster-state", "new", "--initial-cluster-token", lan.switch,
                 "--pre-vote", "--quota-backend-bytes", str(2 << 30)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL))
        endpoints = ",".join(f"http://{LAN}.1{i}:2379" for i in range(1, 4))
        gw_ns = lan.node(2)
        deadline = time.monotonic() + 30
        while True:
            try:
                gw = Gateway(gw_ns, f"{LAN}.11")
                gw.put("/bench/ready", "1")
                break
            except (OSError, RuntimeError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        names = [f"h{i}" for i in range(1, args.hosts + 1)]
        for i, h in enumerate(names):
            ns = lan.node(20 + i + 1)
            e = Emperor(os.path.join(work, h), f"imperium-bench-{tag}-{h}", netns=ns,
                        extra=["--network", "off", "--etcd", endpoints, "--host", h])
            e.start()
            hosts.append(e)

        # Every site at once, spread over the hosts.
        t0 = time.perf_counter()
        for i in range(args.sites):
            gw.put(f"/imperium/vassals/s{i}", site(names[i % len(names)]))
        put_s = time.perf_counter() - t0
        want = {h: args.sites // len(names) + (1 if i < args.sites % len(names) else 0) for i, h in enumerate(names)}
        deadline = time.monotonic() + 600
        while True:
            up = {h: sum(1 for r in e.status() if r["state"] == "running") for h, e in zip(names, hosts)}
            if all(up[h] >= want[h] for h in names):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"running: {up}")
            time.sleep(0.25)
        all_up = time.perf_counter() - t0

        # One more site, put -> running on its host.
        lat = []
        for i in range(args.runs + 5):
            h, e = names[i % len(names)], hosts[i % len(names)]
            ino = Inotify(os.path.join(e.paths["run"], "vassals"), IN_MOVED_TO | IN_DELETE)
            t = time.perf_counter()
            gw.put(f"/imperium/vassals/one{i}", site(h))
            ino.wait_for(f"one{i}.json", IN_MOVED_TO)
            if i >= 5:
                lat.append((time.perf_counter() - t) * 1000)
            gw.delete(f"/imperium/vassals/one{i}")
            ino.wait_for(f"one{i}.json", IN_DELETE)
            ino.close()

        # The same on one host of its own, from its directory.
        single = Emperor(os.path.join(work, "single"), f"imperium-bench-{tag}-single")
        single.start()
        alone = drop_latency(single, "alone", args.runs, SITE)
        single.close()
        single = None

        status = gw.call("/v3/maintenance/status", {})
        db_running = int(status.get("dbSize", 0))
        # The rest of --files, placed on a host that runs nothing.
        for i in range(args.sites, args.files):
            gw.put(f"/imperium/vassals/p{i}", site("parked"))
        db_files = int(gw.call("/v3/maintenance/status", {}).get("dbSize", 0))
        # A host's agent listing them all at its start: h1 again.
        e = hosts[0]
        e.proc.terminate()
        e.proc.wait()
        before = len(open(os.path.join(e.root, "emperor.log")).read())
        t = time.perf_counter()
        e.start()
        deadline = time.monotonic() + 120
        listed = None
        while listed is None and time.monotonic() < deadline:
            m = e.cli("metrics")
            if "imperium_emperor_cluster_connected 1" in m:
                listed = time.perf_counter() - t
            else:
                time.sleep(0.01)

        out = {
            "hosts": args.hosts, "sites": args.sites,
            "puts_s": round(put_s, 2), "all_running_s": round(all_up, 2),
            "one_more_ms": summary(lat), "one_more_single_host_ms": summary(alone),
            "db_bytes_with_sites": db_running, "files": args.files, "db_bytes_with_files": db_files,
            "agent_listed_all_s": round(listed, 3) if listed else None,
        }
        print(json.dumps(out, indent=1))
    finally:
        if single:
            single.close()
        for e in hosts:
            e.close()
        for m in members:
            m.kill()
            m.wait()
        lan.close()
        if os.environ.get("KEEP_LOG"):
            shutil.copy(os.path.join(work, "h1", "emperor.log"), "/tmp/h1-emperor.log")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
