#!/usr/bin/env python3
"""crun with a network, as a container engine gives it one: the CNI bridge
plugin (Debian's containernetworking-plugins, what podman's CNI backend
runs) adds the container's eth0 on a bridge with an address from
host-local, then `crun run` starts the container in that namespace. Timed:
the plugin's ADD plus crun's run of /bin/true to its exit, each run; the
container's namespace is made before the clock starts (the emperor keeps a
pool of made ones too), and the plugin's DEL and the namespace's removal
come after it. `crun run` alone is timed the same way in the same run, so
the driver's own cost is the same on both sides.

Run by bench/start.py inside a network namespace of the bench's own and a
private mount namespace (crun refuses a hybrid cgroup host otherwise):
    crun_cni.py BUNDLE WORK RUNS      prints {"crun": summary, "crun_cni": summary}
"""
import json
import os
import statistics
import subprocess
import sys
import time

CNI = "/usr/lib/cni"


def conf(work):
    return json.dumps({
        "cniVersion": "1.0.0", "name": "imperium-bench", "type": "bridge", "bridge": "cni-bench0",
        "isGateway": True, "ipMasq": False,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.203.0.0/16"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": os.path.join(work, "cni-ipam")},
    })


def plugin(command, cid, netns, config):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": CNI, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run([f"{CNI}/bridge"], input=config, env=env, capture_output=True, text=True)


def summary(xs):
    s = sorted(xs)
    return {"n": len(s), "median": round(statistics.median(s), 3),
            "p95": round(s[min(len(s) - 1, int(len(s) * 0.95))], 3), "min": round(s[0], 3)}


def main():
    bundle, work, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = conf(work)
    spec_path = os.path.join(bundle, "config.json")
    spec = json.load(open(spec_path))
    plain = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"] + [{"type": "network"}]
    alone, with_net = [], []
    # crun alone first, making its own network namespace, as hyperfine runs
    # it; then the runs with CNI: each series back to back, so each run
    # meets only the teardown of a run of its own kind.
    spec["linux"]["namespaces"] = plain
    json.dump(spec, open(spec_path, "w"))
    for i in range(runs + 5):
        t = time.perf_counter()
        subprocess.run(["crun", "run", "--bundle", bundle, f"bench-crun-{os.getpid()}-{i}"], check=True)
        if i >= 5:
            alone.append((time.perf_counter() - t) * 1000)
    try:
        for i in range(runs + 5):
            cid = f"bench-crun-cni-{os.getpid()}-{i}"
            # A namespace made before the clock starts, given its eth0 by CNI.
            ns = f"cni-{os.getpid()}-{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            path = f"/run/netns/{ns}"
            spec["linux"]["namespaces"] = [n for n in plain if n["type"] != "network"] + [{"type": "network", "path": path}]
            json.dump(spec, open(spec_path, "w"))
            t = time.perf_counter()
            added = plugin("ADD", cid, path, config)
            if added.returncode != 0:
                sys.exit(f"CNI bridge ADD: {added.stdout} {added.stderr}")
            subprocess.run(["crun", "run", "--bundle", bundle, cid], check=True)
            if i >= 5:
                with_net.append((time.perf_counter() - t) * 1000)
            plugin("DEL", cid, path, config)
            subprocess.run(["ip", "netns", "del", ns], check=True)
    finally:
        subprocess.run(["ip", "link", "del", "cni-bench0"], capture_output=True)
    print(json.dumps({"crun": summary(alone), "crun_cni": summary(with_net)}))


if __name__ == "__main__":
    main()
