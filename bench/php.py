#!/usr/bin/env python3
"""What a PHP site costs, with the stack configs/tenant/php.toml uses (uWSGI
with its PHP plugin, one process tree per site) against the usual one (nginx
in front of php-fpm with `pm = ondemand`, one of each per site), in one run:

- memory of an idle site: N sites started and left alone (proportional set
  size, so libphp's and the binaries' shared pages count once across sites),
  then the same after one request each (workers up until their idle timeout);
- req/s of one site for a PHP page and for a static file (wrk, 4 connections).

Plain processes on 127.0.0.1 (the container is the same for both stacks, so
it is left out); everything started is stopped and removed at the end.

    bench/php.py [--sites 20] [--seconds 5]      (bench/run-php installs and runs)
"""
import argparse, os, re, shutil, signal, socket, subprocess, tempfile, time

from router import wait_port  # bench/router.py, beside this file

PAGE = "<?php\necho 'sum=' . array_sum(range(1, 1000)) . \"\\n\";\n"
CSS = "body { color: red }\n" * 20


def tree(pid):
    """`pid` and every descendant (the children of each of its threads)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                todo.extend(int(k) for k in open(f"/proc/{p}/task/{t}/children").read().split())
        except OSError:
            pass
    return out


def memory(pids):
    """(PSS, RSS) in KiB summed over `pids`."""
    pss = rss = 0
    for p in pids:
        try:
            t = open(f"/proc/{p}/smaps_rollup").read()
        except OSError:
            continue
        p_, r_ = re.search(r"^Pss:\s+(\d+)", t, re.M), re.search(r"^Rss:\s+(\d+)", t, re.M)
        if p_ and r_:  # empty for a process that exited as it was read
            pss += int(p_.group(1))
            rss += int(r_.group(1))
    return pss, rss


def exchange(s, request):
    """Sends `request` on the connected socket `s`; the whole answer, as text."""
    s.sendall(request.encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return data.decode(errors="replace")


def get(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return exchange(s, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def wrk(port, path, seconds):
    out = subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"req_s": round(rps), "non_2xx": int(bad.group(1)) if bad else 0}


class Site:
    """One site's docroot under `work`, served on `port` by a stack."""

    def __init__(self, work, i, port):
        self.dir = os.path.join(work, f"s{i}")
        self.root = os.path.join(self.dir, "public_html")
        os.makedirs(os.path.join(self.root, "css"))
        open(os.path.join(self.root, "index.php"), "w").write(PAGE)
        open(os.path.join(self.root, "css", "site.css"), "w").write(CSS)
        self.port = port
        self.procs = []

    def pids(self):
        return [p for proc in self.procs for p in tree(proc.pid)]

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        # Until every process of the groups is gone (workers die after their master).
        deadline = time.time() + 10
        for p in self.procs:
            while time.time() < deadline:
                try:
                    os.killpg(p.pid, 0)
                except OSError:
                    break
                time.sleep(0.05)


def start_uwsgi(site):
    # The options of configs/tenant/php.toml, on a TCP port instead of the site's socket.
    cmd = ["uwsgi", "--plugin", "php", "--http-socket", f"127.0.0.1:{site.port}", "--http-socket-modifier1", "14",
           "--master", "--processes", "4", "--cheap", "--idle", "300", "--die-on-term", "--disable-logging",
           "--php-docroot", site.root, "--php-allowed-ext", ".php", "--php-index", "index.php",
           "--php-fallback", os.path.join(site.root, "index.php"),
           "--check-static", site.root, "--static-skip-ext", ".php", "--php-set", "opcache.enable=1"]
    site.procs.append(subprocess.Popen(cmd, cwd=site.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True))


def start_fpm_nginx(site):
    sock = os.path.join(site.dir, "fpm.sock")
    open(os.path.join(site.dir, "fpm.conf"), "w").write(f"""
[global]
pid = {site.dir}/fpm.pid
error_log = {site.dir}/fpm.log
daemonize = no
[site]
user = nobody
group = nogroup
listen = {sock}
listen.owner = nobody
listen.group = nogroup
pm = ondemand
pm.max_children = 4
pm.process_idle_timeout = 300s
php_admin_value[opcache.enable] = 1
""")
    open(os.path.join(site.dir, "nginx.conf"), "w").write(f"""
worker_processes 1; pid {site.dir}/nginx.pid; error_log {site.dir}/nginx.err; daemon off;
events {{ worker_connections 1024; }}
http {{
  include /etc/nginx/mime.types; access_log off;
  server {{
    listen 127.0.0.1:{site.port}; root {site.root}; index index.php index.html;
    location / {{ try_files $uri $uri/ /index.php$is_args$args; }}
    location ~ \\.php$ {{
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
      fastcgi_pass unix:{sock};
    }}
  }}
}}
""")
    os.chmod(site.dir, 0o755)
    site.procs.append(subprocess.Popen(["php-fpm8.2", "--nodaemonize", "--fpm-config", os.path.join(site.dir, "fpm.conf")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    site.procs.append(subprocess.Popen(["nginx", "-c", os.path.join(site.dir, "nginx.conf"), "-p", site.dir],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))


def measure(name, start, work, sites, seconds, base_port):
    all_sites = [Site(os.path.join(work, name), i, base_port + i) for i in range(sites)]
    try:
        for s in all_sites:
            start(s)
        for s in all_sites:
            wait_port(s.port)
        time.sleep(1.0)
        idle = memory([p for s in all_sites for p in s.pids()])
        for s in all_sites:
            body = get(s.port, "/")
            assert "sum=500500" in body, body
        time.sleep(1.0)
        warm = memory([p for s in all_sites for p in s.pids()])
        one = all_sites[0]
        css = get(one.port, "/css/site.css")
        assert "text/css" in css and "color: red" in css, css
        php = wrk(one.port, "/", seconds)
        static = wrk(one.port, "/css/site.css", seconds)
        return {"sites": sites, "idle_pss_kib_per_site": idle[0] // sites, "idle_rss_kib_per_site": idle[1] // sites,
                "after_one_request_pss_kib_per_site": warm[0] // sites,
                "after_one_request_rss_kib_per_site": warm[1] // sites,
                "php_page": php, "static_file": static}
    finally:
        for s in all_sites:
            s.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="imperium-php-bench-")
    os.chmod(work, 0o755)
    try:
        res = {
            "uwsgi_php": measure("uwsgi", start_uwsgi, work, args.sites, args.seconds, 19200),
            "nginx_php_fpm": measure("fpm", start_fpm_nginx, work, args.sites, args.seconds, 19300),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import json
    print(json.dumps(res, indent=2))
    u, f = res["uwsgi_php"], res["nginx_php_fpm"]
    print("| per site | uWSGI + PHP plugin | nginx + php-fpm (ondemand) | ratio |")
    print("|---|---:|---:|---:|")
    for k, label in (("idle_pss_kib_per_site", "idle, PSS KiB"), ("idle_rss_kib_per_site", "idle, RSS KiB"),
                     ("after_one_request_pss_kib_per_site", "after one request, PSS KiB"),
                     ("after_one_request_rss_kib_per_site", "after one request, RSS KiB")):
        print(f"| {label} | {u[k]:,} | {f[k]:,} | {u[k] / f[k]:.2f} |")
    for k, label in (("php_page", "PHP page, req/s"), ("static_file", "static file, req/s")):
        print(f"| {label} | {u[k]['req_s']:,} | {f[k]['req_s']:,} | {u[k]['req_s'] / f[k]['req_s']:.2f} |")


if __name__ == "__main__":
    main()
