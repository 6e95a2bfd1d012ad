#!/usr/bin/env python3
"""Many sites each running the same Python application, from cold: imperium
against uWSGI's Emperor, side by side, in one run.

The same WSGI application (a few lines answering "ok") and the same uWSGI
command line run --sites times under each:

- uWSGI's Emperor: `uwsgi --emperor DIR` with one vassal ini file per app;
- imperium: the emperor (release build, `--network off`) with one site file
  per app, each site's home holding the application and `~/vassals/app.toml`
  with that uWSGI command: every app in a container of its own, run by the
  site's vassal as the tenant.

Timed: from the start of each emperor until every app has answered an HTTP
GET on its socket with 200 (each socket polled every 50 ms). For imperium the
homes exist (they were made, and the apps put in them, by a first start that
is not timed): a host rebooting. Runs alternate (uWSGI first), --runs times
each, with the load settled before each. Reported too: the memory of every
process of each side with all apps up (PSS, shared pages counted once).
Everything started is stopped and removed at the end.

    bench/apps.py [--sites 200] [--runs 2]      (bench/run-apps builds first)
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from start import Emperor, settle  # noqa: E402  (bench/start.py)
from php import memory, tree  # noqa: E402  (bench/php.py)

APP = '''def application(env, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\\n"]
'''


def uwsgi_args(sock, app):
    """The one command line both sides run (as ini keys for uWSGI's Emperor)."""
    return ["--plugin", "python3", "--http-socket", sock, "--master", "--processes", "1",
            "--disable-logging", "--wsgi-file", app, "--die-on-term"]


def answers(path):
    """True once the app at the unix socket `path` answers 200."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(path)
        s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = s.recv(64)
        s.close()
        return data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def wait_all(socks, t0, timeout=300):
    """Seconds from `t0` until every socket answered; raises on timeout."""
    left = set(socks)
    deadline = time.monotonic() + timeout
    while left:
        left = {p for p in left if not answers(p)}
        if not left:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(socks) - len(left)}/{len(socks)} apps answered")
        time.sleep(0.05)
    return time.perf_counter() - t0


def pss_mib(pids):
    return round(memory(pids)[0] / 1024, 1)


def kill_leftovers(marker):
    """SIGKILL to every process whose command line names `marker` (the run's directory)."""
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if marker.encode() in open(f"/proc/{p}/cmdline", "rb").read():
                    os.kill(int(p), signal.SIGKILL)
            except OSError:
                pass


def run_uwsgi(work, n):
    d = os.path.join(work, "uwsgi")
    vassals, socks = os.path.join(d, "vassals"), os.path.join(d, "sock")
    os.makedirs(vassals)
    os.makedirs(socks)
    app = os.path.join(work, "wsgi.py")
    paths = []
    for i in range(n):
        sock = os.path.join(socks, f"app{i}.sock")
        args = uwsgi_args(sock, app)
        ini = ["[uwsgi]"]
        it = iter(args)
        for flag in it:
            key = flag[2:]
            ini.append(f"{key} = {next(it)}" if key not in ("master", "die-on-term", "disable-logging") else f"{key} = true")
        with open(os.path.join(vassals, f"app{i}.ini"), "w") as f:
            f.write("\n".join(ini) + "\n")
        paths.append(sock)
    log = open(os.path.join(d, "emperor.log"), "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(["uwsgi", "--emperor", vassals, "--die-on-term"], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        up = wait_all(paths, t0)
        time.sleep(1)
        mem = pss_mib(tree(proc.pid))
        return {"up_s": round(up, 3), "pss_mib": mem}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kill_leftovers(d)
        shutil.rmtree(d, ignore_errors=True)


class Sites:
    """An emperor with `n` sites, each home holding the app and its process file."""

    def __init__(self, work, n):
        self.n = n
        self.e = Emperor(os.path.join(work, "imperium"), f"imperium-bench-apps-{os.getpid()}")
        for i in range(n):
            with open(os.path.join(self.e.paths["vassals"], f"s{i}.toml"), "w") as f:
                f.write('kind = "site"\n[limits]\nmemory = "256M"\npids = 64\n')
        self.socks = [os.path.join(self.e.paths["home"], f"s{i}", "app.sock") for i in range(n)]

    def prepare(self):
        """A first start (not timed): homes made, then the app put in each as its tenant's."""
        e = self.e
        e.start()
        records = os.path.join(e.paths["run"], "vassals")
        deadline = time.monotonic() + 300
        while (len([f for f in os.listdir(records) if f.endswith(".json")]) if os.path.isdir(records) else 0) < self.n:
            if time.monotonic() > deadline:
                raise TimeoutError("sites did not come up")
            time.sleep(0.05)
        for i in range(self.n):
            home = os.path.join(e.paths["home"], f"s{i}")
            st = os.stat(home)
            inside = f"/home/s{i}"
            os.makedirs(os.path.join(home, "app"), exist_ok=True)
            files = {
                os.path.join(home, "app", "wsgi.py"): APP,
                os.path.join(home, "vassals", "app.toml"):
                    "command = " + json.dumps(["uwsgi"] + uwsgi_args(f"{inside}/app.sock", f"{inside}/app/wsgi.py")) + "\n",
            }
            for path, text in files.items():
                tmp = os.path.join(os.path.dirname(path), ".bench.tmp")
                with open(tmp, "w") as f:
                    f.write(text)
                os.chown(tmp, st.st_uid, st.st_gid)
                os.rename(tmp, path)
            os.chown(os.path.join(home, "app"), st.st_uid, st.st_gid)
        wait_all(self.socks, time.perf_counter())
        e.shutdown()

    def cold(self):
        t0 = time.perf_counter()
        self.e.start()
        try:
            up = wait_all(self.socks, t0)
            time.sleep(1)
            mem = pss_mib(tree(self.e.proc.pid))
            return {"up_s": round(up, 3), "pss_mib": mem}
        finally:
            self.e.shutdown()

    def close(self):
        self.e.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=200)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    work = tempfile.mkdtemp(prefix="imperium-apps-")
    os.chmod(work, 0o755)
    res = {"sites": args.sites, "load_before": os.getloadavg()[0], "uwsgi_emperor": [], "imperium": []}
    sites = None
    try:
        with open(os.path.join(work, "wsgi.py"), "w") as f:
            f.write(APP)
        sites = Sites(work, args.sites)
        sites.prepare()
        for _ in range(args.runs):
            settle(limit=2)
            res["uwsgi_emperor"].append(run_uwsgi(work, args.sites))
            settle(limit=2)
            res["imperium"].append(sites.cold())
    finally:
        if sites:
            sites.close()
        kill_leftovers(work)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=2))
    u = statistics.median(r["up_s"] for r in res["uwsgi_emperor"])
    i = statistics.median(r["up_s"] for r in res["imperium"])
    print(f"\n{args.sites} apps from cold: uWSGI's Emperor {u:.2f} s, imperium {i:.2f} s"
          f" (imperium / uWSGI: {i / u:.2f}x)")


if __name__ == "__main__":
    main()
