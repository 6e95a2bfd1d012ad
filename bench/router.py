#!/usr/bin/env python3
"""The router against nginx and HAProxy, in one run, on 127.0.0.1 only.

Each proxies the same backend (nginx answering "ok" on a unix socket) for the
name `localhost`; the router also holds 10,000 other domains with their own
certificates. Measured: each proxy's resident memory idle (the router with
its domains loaded) and after the runs; HTTP and HTTPS keep-alive req/s, p50 and p99 (wrk
-t2 -c64), the proxy's CPU per request, full TLS handshakes per second
(openssl s_time -new: wrk would resume sessions), HTTP/2 over TLS (h2load -c16
-m10), the time to load the 10,000 subscriptions, and the time from a
subscription sent to its first routed request. Then each proxies a uWSGI
`--http-socket` backend (which closes after every answer without saying so)
under wrk -c32: req/s and the answers that were not 2xx.

    bench/router.py [--seconds 8] [--domains 10000]     (bench/run-router builds and installs)

With `--callgrind N` nothing is timed: the router and HAProxy (one thread
each) run under valgrind's callgrind, and each reports the user-space
instructions per request over N keep-alive GETs after a warm-up; counts do not
depend on the machine's load, so two versions of the router can be compared.
"""
import argparse, json, os, re, shutil, signal, subprocess, tempfile, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(REPO, "target", "release")
PORTS = {"router": (18080, 18443), "nginx": (18081, 18444), "haproxy": (18082, 18445)}


def cpu_of(pids, kernel_only=False):
    """CPU seconds of these processes (all threads): user and kernel, or kernel only."""
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (0 if kernel_only else int(f[11])) + int(f[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pids):
    """Resident memory of these processes together (KiB)."""
    total = 0
    for pid in pids:
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))
        except (OSError, AttributeError):
            pass
    return total


def tree(pid):
    out = [pid]
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(pid):
                    out.append(int(p))
            except OSError:
                pass
    return out


def wrk(url, seconds, host=None, conns=64):
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", url]
    if host:
        cmd[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v if u == "ms" else v * 1000
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"req_s": round(rps), "requests": reqs, "p50_ms": round(pct(50), 3), "p99_ms": round(pct(99), 3),
            "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0}


def h2load(port, seconds):
    """HTTP/2 over TLS, 16 connections of 10 streams each."""
    out = subprocess.run(["h2load", "-c16", "-m10", "-t2", "-D", str(seconds), f"https://localhost:{port}/"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    return {"req_s": round(float(rps.group(1))) if rps else 0,
            "non_2xx": sum(int(x) for x in codes.groups()[1:]) if codes else None,
            "protocol": proto.group(1) if proto else None}


def s_time(port, seconds):
    out = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"(\d+) connections in ([\d.]+) real seconds", out) or re.search(r"(\d+) connections in ([\d.]+)s", out)
    return round(int(m.group(1)) / float(m.group(2)), 1) if m else None


def keepalive_gets(port, n):
    """n GETs for localhost over one kept connection; each must be a 200."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        c.request("GET", "/", headers={"Host": "localhost"})
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
    c.close()


def instructions(pid, port, n, out):
    """User-space instructions per request of the process `pid` under callgrind."""
    keepalive_gets(port, 200)
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    keepalive_gets(port, n)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    # The process runs on: only the dump just asked for is there.
    total = 0
    for f in os.listdir(out):
        m = re.search(r"^(?:summary|totals): (\d+)", open(os.path.join(out, f)).read(), re.M)
        total = max(total, int(m.group(1)) if m else 0)
    return round(total / n)


def perf_stat(pids, seconds):
    """Syscalls and context switches of these processes (all threads) over the next seconds."""
    return subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter,context-switches,page-faults",
                             "-p", ",".join(map(str, pids)), "--", "sleep", str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def perf_counts(p):
    out = {}
    for line in p.communicate(timeout=60)[1].splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].isdigit():
            out[f[2]] = int(f[0])
    return out


def backend(work, workers):
    """The layout under `work` (sockets/, run/router/) and the backend: nginx
    answering "ok" on sockets/app.sock. Returns the socket directory and nginx."""
    # nginx's workers run as nobody: they must reach the sockets (mkdtemp makes 0700).
    os.chmod(work, 0o755)
    socks = os.path.join(work, "sockets")
    os.makedirs(socks)
    os.makedirs(os.path.join(work, "run", "router"))
    open(f"{work}/backend.conf", "w").write(f"""
worker_processes {workers}; pid {work}/backend.pid; error_log {work}/backend.err; daemon off;
events {{ worker_connections 4096; }}
http {{ access_log off; server {{ listen unix:{socks}/app.sock; location / {{ return 200 "ok"; }} }} }}
""")
    return socks, subprocess.Popen(["nginx", "-c", f"{work}/backend.conf", "-p", work])


def stop_all(procs):
    """SIGTERM to each, then a wait of up to 10 s each, then SIGKILL."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_port(port, deadline=20):
    import socket
    t = time.time() + deadline
    while time.time() < t:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--domains", type=int, default=10000)
    ap.add_argument("--callgrind", type=int, metavar="N", help="count instructions per request over N GETs instead")
    ap.add_argument("--keep", metavar="DIR", help="with --callgrind: copy the profiles there (callgrind_annotate)")
    ap.add_argument("--proxies", default="router,nginx,haproxy", help="which to measure (nginx always starts: it is the baseline)")
    args = ap.parse_args()
    only = args.proxies.split(",")
    work = tempfile.mkdtemp(prefix="imperium-router-bench-")
    procs = []
    try:
        socks, nginx_backend = backend(work, 2)
        procs.append(nginx_backend)
        # The backend that closes after each answer: uWSGI --http-socket, an app setting Content-Length.
        open(f"{work}/app.py", "w").write(
            "def application(env, start_response):\n"
            "    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', '2')])\n"
            "    return [b'ok']\n")
        procs.append(subprocess.Popen(["uwsgi", "--plugin", "python3", "--http-socket", f"{socks}/uwsgi.sock",
                                       "--wsgi-file", f"{work}/app.py", "--processes", "2", "--master", "--chmod-socket=666",
                                       "--disable-logging"], cwd=work,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # A certificate for localhost, for nginx and HAProxy.
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", f"{work}/local.key", "-out", f"{work}/local.crt", "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
        open(f"{work}/haproxy.pem", "w").write(open(f"{work}/local.crt").read() + open(f"{work}/local.key").read())
        # The router: a site "bench" owning localhost and *.bench.test.
        b64 = __import__("base64")
        open(f"{work}/site.key", "w").write(b64.b64encode(os.urandom(32)).decode() + "\n")
        sub = [f"{REL}/examples/subscriber", f"{work}/run/router/subscribe.sock", "bench", f"{work}/site.key", "app.sock"]
        pub = subprocess.run(sub[:4] + ["-", "pubkey"], capture_output=True, text=True, check=True).stdout.strip()
        dominion = {"schemaVersion": 1, "sites": {"bench": {"publicKey": pub, "domains": ["localhost", "*.bench.test"],
                                                            "sockets": socks, "uid": os.getuid(), "requests": 100000}}}
        json.dump(dominion, open(f"{work}/run/router/dominion.json", "w"))
        rp, rs = PORTS["router"]
        grind = []
        if args.callgrind:
            os.makedirs(f"{work}/cg/router")
            os.makedirs(f"{work}/cg/haproxy")
            grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg/router/out.%p"]
        router = subprocess.Popen(grind + [f"{REL}/router", "serve", "--http", f"127.0.0.1:{rp}", "--https", f"127.0.0.1:{rs}",
                                   "--run-dir", f"{work}/run", "--state-dir", f"{work}/state", "--ttl", "3600",
                                   "--max-routes-per-site", str(args.domains + 1000)]
                                  + (["--threads", "1"] if args.callgrind else []),
                                  stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="off"))
        procs.append(router)
        wait_port(rp, 120 if args.callgrind else 20)
        # The subscription socket comes up after the listeners (later still under valgrind).
        t = time.time() + 60
        while not os.path.exists(sub[1]) and time.time() < t:
            time.sleep(0.05)
        subprocess.run(sub + ["one", "localhost"], check=True)
        subprocess.run(sub[:4] + ["uwsgi.sock", "one", "uwsgi.bench.test"], check=True)
        loaded = json.loads(subprocess.run(sub + ["many", str(args.domains)], capture_output=True, text=True, check=True).stdout)
        # nginx and HAProxy in front of the same backend.
        np_, ns = PORTS["nginx"]
        open(f"{work}/nginx.conf", "w").write(f"""
worker_processes 2; pid {work}/nginx.pid; error_log {work}/nginx.err; daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream app {{ server unix:{socks}/app.sock; keepalive 128; }}
  upstream uwsgi {{ server unix:{socks}/uwsgi.sock; keepalive 128; }}
  server {{
    listen 127.0.0.1:{np_}; listen 127.0.0.1:{ns} ssl http2; server_name localhost;
    ssl_certificate {work}/local.crt; ssl_certificate_key {work}/local.key;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{np_}; server_name uwsgi.bench.test;
    location / {{ proxy_pass http://uwsgi; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        nginx = subprocess.Popen(["nginx", "-c", f"{work}/nginx.conf", "-p", work])
        procs.append(nginx)
        hp, hs = PORTS["haproxy"]
        open(f"{work}/haproxy.cfg", "w").write(f"""
global
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend front
  bind 127.0.0.1:{hp}
  bind 127.0.0.1:{hs} ssl crt {work}/haproxy.pem alpn h2,http/1.1
  use_backend uwsgi if {{ hdr(host) -i uwsgi.bench.test }}
  default_backend app
backend app
  http-reuse always
  server s1 {socks}/app.sock
backend uwsgi
  http-reuse always
  retry-on all-retryable-errors
  server u1 {socks}/uwsgi.sock
""")
        if args.callgrind:
            cfg = open(f"{work}/haproxy.cfg").read().replace("nbthread 2", "nbthread 1")
            open(f"{work}/haproxy.cfg", "w").write("\n".join(x for x in cfg.splitlines() if "ssl crt" not in x) + "\n")
            grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg/haproxy/out.%p"]
        haproxy = subprocess.Popen(grind + ["haproxy", "-f", f"{work}/haproxy.cfg", "-db"])
        procs.append(haproxy)
        for p in (np_, ns, hp) + (() if args.callgrind else (hs,)):
            wait_port(p, 120 if args.callgrind else 20)
        if args.callgrind:
            res = {n: instructions(p.pid, PORTS[n][0], args.callgrind, f"{work}/cg/{n}")
                   for n, p in (("router", router), ("haproxy", haproxy))}
            print(json.dumps({"instructions_per_request": res}))
            if args.keep:
                shutil.copytree(f"{work}/cg", args.keep, dirs_exist_ok=True)
            print(f"router: {res['router'] / res['haproxy']:.2f}x HAProxy's instructions per request")
            return
        pids = {"router": lambda: [router.pid], "nginx": lambda: tree(nginx.pid), "haproxy": lambda: [haproxy.pid]}
        res = {"load_before": os.getloadavg()[0], "domains_loaded": loaded,
               "rss_kib_idle": {n: rss_kib(pids[n]()) for n in only}}
        # Every proxy must answer 200 through its backend before it is measured.
        for name, (http, _) in PORTS.items():
            if name in only:
                out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: localhost",
                                      f"http://127.0.0.1:{http}/"], capture_output=True, text=True).stdout
                assert out == "200", f"{name} answers {out} through its backend"
        for name, (http, https) in PORTS.items():
            if name not in only:
                continue
            row = {}
            for scheme, port in (("http", http), ("https", https)):
                c0, k0 = cpu_of(pids[name]()), cpu_of(pids[name](), kernel_only=True)
                url = f"http://127.0.0.1:{port}/" if scheme == "http" else f"https://localhost:{port}/"
                stat = perf_stat(pids[name](), args.seconds - 1) if shutil.which("perf") else None
                r = wrk(url, args.seconds, host="localhost" if scheme == "http" else None)
                r["cpu_us_per_req"] = round((cpu_of(pids[name]()) - c0) / r["requests"] * 1e6, 1)
                r["kernel_us_per_req"] = round((cpu_of(pids[name](), kernel_only=True) - k0) / r["requests"] * 1e6, 1)
                if stat:
                    # Counted over all but the last second of the run: per request at its rate.
                    c = perf_counts(stat)
                    done = r["req_s"] * (args.seconds - 1)
                    r["syscalls_per_req"] = round(c.get("raw_syscalls:sys_enter", 0) / done, 2)
                    r["switches_per_req"] = round(c.get("context-switches", 0) / done, 3)
                    r["page_faults_per_req"] = round(c.get("page-faults", 0) / done, 3)
                row[scheme] = r
            row["handshakes_s"] = s_time(https, 5)
            row["h2"] = h2load(https, args.seconds)
            row["uwsgi_http_socket"] = wrk(f"http://127.0.0.1:{http}/", args.seconds, host="uwsgi.bench.test", conns=32)
            res[name] = row
        lat = subprocess.run(sub + ["latency", f"127.0.0.1:{rp}", "50"], capture_output=True, text=True, check=True).stdout
        res["subscription_to_routed"] = json.loads(lat)
        res["rss_kib_after"] = {n: rss_kib(pids[n]()) for n in only}
        res["load_after"] = os.getloadavg()[0]
        print(json.dumps(res, indent=2))
        n = res.get("nginx")
        for name in ("router", "haproxy"):
            if not n or name not in res:
                continue
            r = res[name]
            print(f"{name}: http {r['http']['req_s'] / n['http']['req_s']:.2f}x nginx req/s, "
                  f"{r['http']['cpu_us_per_req'] / n['http']['cpu_us_per_req']:.2f}x its CPU/req; "
                  f"https {r['https']['req_s'] / n['https']['req_s']:.2f}x req/s, "
                  f"{r['https']['cpu_us_per_req'] / n['https']['cpu_us_per_req']:.2f}x CPU/req; "
                  f"h2 {r['h2']['req_s'] / max(n['h2']['req_s'], 1):.2f}x req/s; "
                  f"handshakes {r['handshakes_s'] / n['handshakes_s']:.2f}x")
        if "router" in res and "haproxy" in res:
            r, h = res["router"], res["haproxy"]
            print("router against HAProxy: " + "; ".join(
                f"{s} {r[s]['req_s'] / h[s]['req_s']:.2f}x req/s, {r[s]['cpu_us_per_req'] / h[s]['cpu_us_per_req']:.2f}x CPU/req"
                for s in ("http", "https")) + f"; h2 {r['h2']['req_s'] / max(h['h2']['req_s'], 1):.2f}x req/s")
        for name in ("router", "nginx", "haproxy"):
            if name in res:
                u = res[name]["uwsgi_http_socket"]
                print(f"{name} behind uWSGI --http-socket: {u['req_s']} req/s, {u['non_2xx']} non-2xx, "
                      f"{u['socket_errors']} socket errors")
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
