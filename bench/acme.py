#!/usr/bin/env python3
"""Issuance of many domains through ACME against a real ACME server, on
127.0.0.1 only, and what the router's latency for another site does meanwhile.

Debian's pebble (RFC 8555, a test CA that validates for real) with
pebble-challtestsrv as its DNS server (every name is 127.0.0.1: no query leaves
the machine) checks HTTP-01 on the router's HTTP listener. A site subscribes N
domains `a<i>.bench.test` with no certificate; the router orders one
certificate each (4 orders at once, as it always does; its budget of orders is
raised with --acme-max-orders, as an admin of a private CA may). Measured:
the time to the first certificate, to half and to all of them, the router's
and pebble's CPU, and the latency of requests to another site (`localhost`,
its own certificate, proxied to nginx on a unix socket) from a probe sending
one request every 5 ms on a kept connection, before and during issuance.

    bench/acme.py [--domains 1000] [--timeout 900]     (bench/run-acme builds and installs)
"""
import argparse, http.client, json, os, shutil, socket, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from router import backend, stop_all, wait_port  # noqa: E402  (bench/router.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(REPO, "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


class Probe(threading.Thread):
    """One GET every 5 ms on a kept connection; latencies in ms."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.lat, self.errors, self.stop = port, [], 0, threading.Event()

    def run(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        nxt = time.monotonic()
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                c.request("GET", "/", headers={"Host": "localhost"})
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    self.errors += 1
                self.lat.append((time.monotonic() - t) * 1000)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            nxt += 0.005
            time.sleep(max(0.0, nxt - time.monotonic()))

    def report(self):
        self.stop.set()
        self.join()
        lat = sorted(self.lat)
        pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None
        return {"requests": len(lat), "errors": self.errors, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                "max_ms": round(lat[-1], 3) if lat else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", type=int, default=1000)
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="imperium-acme-bench-")
    procs = []
    try:
        socks, nginx_backend = backend(work, 1)
        procs.append(nginx_backend)
        # Pebble's own TLS certificate from a CA of ours (webpki takes no self-signed leaf as a root).
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ssl = lambda *a: subprocess.run(["openssl", *a], cwd=work, check=True, capture_output=True)
        ssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=bench CA", "-keyout", "ca.key", "-out", "ca.crt")
        ssl("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "pebble.key", "-out", "pebble.csr")
        open(f"{work}/ext.cnf", "w").write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        ssl("x509", "-req", "-in", "pebble.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "pebble.crt")
        rp, rs, pp, pm, dns, dm = (free_port() for _ in range(6))
        # The router: a site "bench" owning localhost and *.bench.test.
        import base64
        open(f"{work}/site.key", "w").write(base64.b64encode(os.urandom(32)).decode() + "\n")
        sub = [f"{REL}/examples/subscriber", f"{work}/run/router/subscribe.sock", "bench", f"{work}/site.key",
               "app.sock"]
        pub = subprocess.run(sub[:4] + ["-", "pubkey"], capture_output=True, text=True, check=True).stdout.strip()
        dominion = {"schemaVersion": 1, "sites": {"bench": {"publicKey": pub, "domains": ["localhost", "*.bench.test"],
                                                            "sockets": socks, "uid": os.getuid(),
                                                            "requests": 100000}}}
        json.dump(dominion, open(f"{work}/run/router/dominion.json", "w"))
        log = open(f"{work}/router.log", "w")
        router = subprocess.Popen([f"{REL}/router", "serve", "--http", f"127.0.0.1:{rp}", "--https",
                                   f"127.0.0.1:{rs}", "--run-dir", f"{work}/run", "--state-dir", f"{work}/state",
                                   "--ttl", "3600", "--max-routes-per-site", str(args.domains + 100),
                                   "--acme-directory", f"https://127.0.0.1:{pp}/dir", "--acme-ca", f"{work}/ca.crt",
                                   "--acme-max-orders", str(args.domains * 2)],
                                  stderr=log, env=dict(os.environ, RUST_LOG="warn"))
        procs.append(router)
        wait_port(rp)
        subprocess.run(sub + ["one", "localhost"], check=True)
        procs.append(subprocess.Popen(
            ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns}",
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{dm}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        json.dump({"pebble": {"listenAddress": f"127.0.0.1:{pp}", "managementListenAddress": f"127.0.0.1:{pm}",
                              "certificate": f"{work}/pebble.crt", "privateKey": f"{work}/pebble.key",
                              "httpPort": rp, "tlsPort": rs, "ocspResponderURL": "",
                              "externalAccountBindingRequired": False}}, open(f"{work}/pebble.json", "w"))
        pebble = subprocess.Popen(["pebble", "-config", f"{work}/pebble.json", "-dnsserver", f"127.0.0.1:{dns}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=dict(os.environ, PEBBLE_VA_NOSLEEP="1"))
        procs.append(pebble)
        wait_port(pp)
        res = {"domains": args.domains, "load_before": os.getloadavg()[0]}
        probe = Probe(rp)
        probe.start()
        time.sleep(5)
        res["latency_before"] = probe.report()
        # Issuance: every domain subscribed at once, with no certificate.
        certs = os.path.join(work, "state", "acme", "certs")
        c0, p0 = cpu(router.pid), cpu(pebble.pid)
        probe = Probe(rp)
        probe.start()
        t0 = time.monotonic()
        subprocess.run(sub + ["bare", str(args.domains)], check=True)
        res["subscribed_s"] = round(time.monotonic() - t0, 2)
        marks = {}
        while time.monotonic() - t0 < args.timeout:
            n = len(os.listdir(certs)) if os.path.isdir(certs) else 0
            for name, at in (("first_s", 1), ("half_s", args.domains // 2), ("all_s", args.domains)):
                if n >= at and name not in marks:
                    marks[name] = round(time.monotonic() - t0, 1)
            if n >= args.domains or router.poll() is not None:
                break
            time.sleep(0.2)
        res.update(marks)
        res["issued"] = len(os.listdir(certs)) if os.path.isdir(certs) else 0
        res["latency_during"] = probe.report()
        spent = time.monotonic() - t0
        res["router_cpu_cores"] = round((cpu(router.pid) - c0) / spent, 3)
        res["pebble_cpu_cores"] = round((cpu(pebble.pid) - p0) / spent, 3)
        res["orders_per_s"] = round(res["issued"] / spent, 2)
        res["router_rss_kib"] = int(open(f"/proc/{router.pid}/status").read().split("VmRSS:")[1].split()[0])
        log.flush()
        failed = [line.strip() for line in open(f"{work}/router.log") if "no certificate" in line]
        res["failed_orders"] = len(failed)
        res["failed_first"] = failed[:3]
        res["load_after"] = os.getloadavg()[0]
        print(json.dumps(res, indent=2))
        b, d = res["latency_before"], res["latency_during"]
        print(f"{res['issued']} of {args.domains} certificates in {res.get('all_s', spent):.1f} s "
              f"({res['orders_per_s']}/s); another site's p50 {b['p50_ms']} -> {d['p50_ms']} ms, "
              f"p99 {b['p99_ms']} -> {d['p99_ms']} ms, errors {d['errors']}")
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
