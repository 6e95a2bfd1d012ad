#!/usr/bin/env python3
"""What passing a client to another host's router costs, on 127.0.0.1 only.

Router B serves the site (nginx answering "ok" on a unix socket, as in
bench/router.py); router A is another host's router: its peers.json says B
serves `localhost`, so A passes each client connection whole to B's peer
listener (TLS with both certificates, a PROXY v2 header, then the client's
bytes). HAProxy in TCP mode in front of B's public listener is the
alternative a hosting company would use for the same hop (passthrough, no
TLS between the two). Measured in one run, with wrk -t2: keep-alive HTTP
(-c64), a new connection per request (-c16, `Connection: close`), keep-alive
HTTPS (the client's TLS ends at B) - each straight to B, through A and
through HAProxy - and the ratios.

    bench/peer.py [--seconds 8]      (bench/run-peer builds and installs)
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from router import REL, backend, stop_all, wait_port, wrk  # noqa: E402

B = (18180, 18543, 18544)  # B's http, https, peer
A = (18280, 18643, 18644)
HAPROXY = (18380, 18743)


def certs(work):
    """A CA and a certificate for each router, naming its host (a, b)."""
    def run(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{work}/ca.key", "-out", f"{work}/ca.crt", "-days", "2", "-subj", "/CN=bench-ca")
    for h in ("a", "b"):
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{work}/{h}.key", "-out", f"{work}/{h}.csr", "-subj", f"/CN={h}")
        open(f"{work}/{h}.ext", "w").write(f"subjectAltName=DNS:{h}\nextendedKeyUsage=serverAuth,clientAuth\n")
        run("openssl", "x509", "-req", "-days", "2", "-CAcreateserial", "-in", f"{work}/{h}.csr",
            "-CA", f"{work}/ca.crt", "-CAkey", f"{work}/ca.key", "-extfile", f"{work}/{h}.ext", "-out", f"{work}/{h}.crt")


def router(work, name, ports):
    http, https, peer = ports
    return subprocess.Popen(
        [f"{REL}/router", "serve", "--http", f"127.0.0.1:{http}", "--https", f"127.0.0.1:{https}",
         "--run-dir", f"{work}/{name}/run", "--state-dir", f"{work}/{name}/state", "--ttl", "3600",
         "--peer", f"127.0.0.1:{peer}", "--peer-ca", f"{work}/ca.crt",
         "--peer-cert", f"{work}/{name}.crt", "--peer-key", f"{work}/{name}.key"],
        stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="off"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="imperium-peer-bench-")
    procs = []
    try:
        socks, nginx = backend(work, 2)
        procs.append(nginx)
        certs(work)
        for h in ("a", "b"):
            os.makedirs(f"{work}/{h}/run/router")
        # B: the site "bench" owning localhost, subscribed on B.
        b64 = __import__("base64")
        open(f"{work}/site.key", "w").write(b64.b64encode(os.urandom(32)).decode() + "\n")
        sub = [f"{REL}/examples/subscriber", f"{work}/b/run/router/subscribe.sock", "bench", f"{work}/site.key", "app.sock"]
        pub = subprocess.run(sub[:4] + ["-", "pubkey"], capture_output=True, text=True, check=True).stdout.strip()
        json.dump({"schemaVersion": 1, "sites": {"bench": {"publicKey": pub, "domains": ["localhost"],
                                                           "sockets": socks, "uid": os.getuid(), "requests": 100000}}},
                  open(f"{work}/b/run/router/dominion.json", "w"))
        # A: B serves localhost, and B's router is at its peer port.
        json.dump({"schemaVersion": 1, "generation": 1, "routers": {"b": f"127.0.0.1:{B[2]}"},
                   "domains": {"localhost": "b"}}, open(f"{work}/a/run/router/peers.json", "w"))
        procs += [router(work, "b", B), router(work, "a", A)]
        for p in B + A:
            wait_port(p)
        t = time.time() + 20
        while not os.path.exists(sub[1]) and time.time() < t:
            time.sleep(0.05)
        subprocess.run(sub + ["one", "localhost"], check=True)
        # A says it took its peers once it has.
        t = time.time() + 20
        while time.time() < t:
            try:
                if open(f"{work}/a/run/router/peers.applied").read().strip() == "1":
                    break
            except OSError:
                pass
            time.sleep(0.05)
        open(f"{work}/haproxy.cfg", "w").write(f"""
global
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
listen plain
  bind 127.0.0.1:{HAPROXY[0]}
  server b 127.0.0.1:{B[0]}
listen tls
  bind 127.0.0.1:{HAPROXY[1]}
  server b 127.0.0.1:{B[1]}
""")
        procs.append(subprocess.Popen(["haproxy", "-f", f"{work}/haproxy.cfg", "-db"]))
        for p in HAPROXY:
            wait_port(p)
        s = args.seconds
        rows = {}
        for name, (http, https) in (("direct_to_b", B[:2]), ("through_a", A[:2]), ("haproxy_tcp", HAPROXY)):
            row = {"keepalive_http": wrk(f"http://127.0.0.1:{http}/", s, host="localhost")}
            row["new_connection_http"] = wrk_close(f"http://127.0.0.1:{http}/", s)
            row["keepalive_https"] = wrk(f"https://localhost:{https}/", s)
            rows[name] = row
        for k in ("keepalive_http", "new_connection_http", "keepalive_https"):
            d = rows["direct_to_b"][k]["req_s"]
            rows.setdefault("ratios", {})[k] = {
                "through_a_vs_direct": round(rows["through_a"][k]["req_s"] / d, 2) if d else None,
                "through_a_vs_haproxy_tcp": round(rows["through_a"][k]["req_s"] / rows["haproxy_tcp"][k]["req_s"], 2)
                if rows["haproxy_tcp"][k]["req_s"] else None,
            }
        print(json.dumps(rows, indent=1))
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


def wrk_close(url, seconds):
    """A new connection for every request (wrk reconnects after `Connection: close`)."""
    import re
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", "-H", "Host: localhost",
                          "-H", "Connection: close", url], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"req_s": round(rps), "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0}


if __name__ == "__main__":
    main()
