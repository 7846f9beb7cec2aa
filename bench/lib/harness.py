"""bench/run's driver: starts the services, runs asynchost and every peer on
the same workloads, keeps the median of the repeats, prints the table and
writes bench/results/ and docs/performance.md.

Run it through bench/run (which installs the packages and builds asynchost);
see docs/performance.md for what each case measures and why.
"""
import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PY = "/usr/bin/python3"
NODE = "/usr/bin/node"
LUA = "lua5.4"
CASES = ["tasks", "crawl-latency", "fetch-throughput", "db", "server", "crawl-real"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def http_get(url, timeout=5):
    """A plain GET with the standard library (for checking servers)."""
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


# ---------------------------------------------------------------- processes

class Proc:
    """One finished measured process: wall, CPU (user+sys from wait4's
    rusage) and peak RSS (ru_maxrss), its output and its RESULT line."""

    def __init__(self, argv, code, wall, cpu, maxrss_kb, out, err):
        self.argv, self.code, self.wall, self.cpu = argv, code, wall, cpu
        self.maxrss_kb, self.out, self.err = maxrss_kb, out, err
        self.result = None
        for line in out.splitlines():
            if line.startswith("RESULT "):
                try:
                    self.result = json.loads(line[7:])
                except ValueError:
                    pass

    def fail_reason(self):
        if self.code != 0:
            tail = (self.err.strip() or self.out.strip())[-600:]
            return "exit %s: %s" % (self.code, tail)
        return None


def run_proc(argv, env=None, timeout=300, pin=None, cwd=None):
    """Runs argv (pinned to a core if asked) under GNU time, which reports
    the CPU time and peak RSS of exactly that process: the harness's own
    wait4() would count the forked harness's memory too (Linux carries
    the pre-exec RSS high-water mark into ru_maxrss)."""
    argv = [str(a) for a in argv]
    if pin is not None:
        argv = ["taskset", "-c", str(pin)] + argv
    e = dict(os.environ)
    e.update(env or {})
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as tm:
        t0 = time.perf_counter()
        p = subprocess.Popen(["/usr/bin/time", "-q", "-f", "%e %U %S %M", "-o", tm.name] + argv,
                             stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             env=e, cwd=cwd or ROOT, start_new_session=True)
        killed = []

        def kill():
            killed.append(1)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            p.wait()
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        o = out.read().decode("utf-8", "replace")
        er = err.read().decode("utf-8", "replace")
        fields = tm.read().split()
    cpu, maxrss = None, None
    try:
        cpu, maxrss = float(fields[-3]) + float(fields[-2]), int(fields[-1])
    except (IndexError, ValueError):
        pass
    if killed:
        er += "\n[bench: killed after %ss timeout]" % timeout
    return Proc(argv, p.returncode, wall, cpu, maxrss, o, er)


def proc_tree(pid):
    """pid and all its descendants (for nginx's master + worker)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open("/proc/%d/task/%d/children" % (p, p)) as f:
                todo.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return pids


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime stime
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def status_kb(pids, field):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---------------------------------------------------------------- services

NGINX_MODULES = ["ndk_http_module.so", "ngx_http_lua_module.so"]


def nginx_module_dir():
    for d in ("/usr/lib/nginx/modules", "/usr/share/nginx/modules"):
        if os.path.exists(os.path.join(d, NGINX_MODULES[1])):
            return d
    raise RuntimeError("libnginx-mod-http-lua is not installed")


def nginx_conf(tmp, port, server_block, name, http_extra=""):
    d = nginx_module_dir()
    loads = "".join("load_module %s/%s;\n" % (d, m) for m in NGINX_MODULES)
    return f"""{loads}
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path {tmp}/{name}.body;
  proxy_temp_path {tmp}/{name}.proxy;
  fastcgi_temp_path {tmp}/{name}.fastcgi;
  uwsgi_temp_path {tmp}/{name}.uwsgi;
  scgi_temp_path {tmp}/{name}.scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
{http_extra}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
{server_block}
  }}
}}
"""


class Nginx:
    def __init__(self, tmp, name, server_block, pin=None, http_extra=""):
        self.tmp, self.name = tmp, name
        self.port = free_port()
        conf = os.path.join(tmp, name + ".conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(tmp, self.port, server_block, name, http_extra))
        argv = ["nginx", "-c", conf, "-p", tmp]
        if pin is not None:
            argv = ["taskset", "-c", str(pin)] + argv
        self.log = open(os.path.join(tmp, name + ".out"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if not wait_port(self.port, proc=self.proc):
            self.stop()
            raise RuntimeError("nginx %s did not start: %s" % (name, open(os.path.join(tmp, name + ".out")).read()))
        self.url = "http://127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


PAGE_LUA = r"""
      content_by_lua_block {
        local ms, n = ngx.var.uri:match("^/d/(%d+)/(%d+)")
        if not ms then return ngx.exit(404) end
        ngx.sleep(tonumber(ms) / 1000)
        ngx.header.content_type = "text/html; charset=utf-8"
        ngx.print("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Page ", n,
                  "</title></head>\n<body><h1>Page ", n, "</h1><p>",
                  string.rep("Lorem ipsum dolor sit amet. ", 30), "</p></body></html>\n")
      }"""


def make_site(root, n):
    """A static site of n pages: page i links to its 10 children (a
    10-ary tree, so every page is reachable from p0), its parent, two
    pseudo-random pages, and a few links a crawler must not follow (out of
    the directory, mailto:, a fragment)."""
    os.makedirs(root, exist_ok=True)
    filler = "<p>" + "The quick brown fox jumps over the lazy dog. " * 20 + "</p>\n"
    for i in range(n):
        links = [10 * i + k for k in range(1, 11) if 10 * i + k < n]
        links += [(i - 1) // 10 if i else 0, (i * 7919 + 13) % n, (i * 104729 + 7) % n]
        items = "".join('<li><a href="p%d.html">page %d</a></li>\n' % (j, j) for j in links)
        items += ('<li><a href="p%d.html#top">same page</a></li>\n' % i +
                  '<li><a href="/outside/x.html">outside</a></li>\n'
                  '<li><a href="mailto:nobody@example.invalid">mail</a></li>\n')
        with open(os.path.join(root, "p%d.html" % i), "w") as f:
            f.write('<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
                    '<title>Site page %d</title></head>\n<body><h1 id="top">Site page %d</h1>\n%s<ul>\n%s</ul>\n</body></html>\n'
                    % (i, i, filler, items))


class Origin:
    """The loopback origin: nginx (one worker, pinned to core 0) serving
    /1k (1,024 bytes), /d/<ms>/<n> (an HTML page with title "Page <n>"
    after ngx.sleep(ms)) and /site/p<i>.html (the generated site, each
    page delayed by site_delay_ms)."""

    def __init__(self, tmp, site_pages, site_delay_ms, pin):
        www = os.path.join(tmp, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "1k"), "w") as f:
            f.write(("0123456789abcdef" * 64))
        make_site(os.path.join(www, "site"), site_pages)
        os.chmod(tmp, 0o755)
        block = f"""
    root {www};
    location = /1k {{ default_type text/html; }}
    location /d/ {{{PAGE_LUA}
    }}
    location /site/ {{
      default_type text/html;
      access_by_lua_block {{ ngx.sleep({site_delay_ms / 1000}) }}
    }}
    location = /robots.txt {{ return 404; }}
"""
        self.nginx = Nginx(tmp, "origin", block, pin)
        self.url = self.nginx.url
        self.site_pages = site_pages
        st, body = http_get(self.url + "/d/0/7")
        assert st == 200 and b"<title>Page 7</title>" in body, body[:200]
        st, body = http_get(self.url + "/1k")
        assert st == 200 and len(body) == 1024

    def stop(self):
        self.nginx.stop()


class Postgres:
    """A throwaway cluster: initdb in the temp dir, fsync=off, TCP on a free
    loopback port (every client connects the same way)."""

    def __init__(self, tmp):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        if not bins:
            raise RuntimeError("postgresql is not installed")
        self.bin = bins[-1]
        self.dir = os.path.join(tmp, "pg")
        os.makedirs(self.dir)
        self.as_ = []
        if os.getuid() == 0:
            self.as_ = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres")
        self.port = free_port()
        subprocess.run(self.as_ + [str(self.bin / "initdb"), "-D", self.dir + "/data", "-U", "postgres",
                                   "-A", "trust", "--no-sync", "-E", "UTF8"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(self.dir + "/data/postgresql.conf", "a") as f:
            f.write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.dir}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
""")
        subprocess.run(self.as_ + [str(self.bin / "pg_ctl"), "-D", self.dir + "/data", "-l", self.dir + "/log",
                                   "-w", "-t", "30", "start"], check=True, stdout=subprocess.DEVNULL)
        self.dsn = "postgresql://postgres@127.0.0.1:%d/postgres" % self.port
        self.version = subprocess.run([str(self.bin / "postgres"), "--version"], capture_output=True,
                                      text=True).stdout.strip()

    def psql(self, sql):
        r = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", self.dsn, "-c", sql],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("psql: " + r.stderr)
        return r.stdout.strip()

    def stop(self):
        subprocess.run(self.as_ + [str(self.bin / "pg_ctl"), "-D", self.dir + "/data", "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- results

class Metric:
    def __init__(self, key, label, unit, better, fn, fmt="{:.3g}"):
        self.key, self.label, self.unit, self.better, self.fn, self.fmt = key, label, unit, better, fn, fmt


def m_result(field, scale=1.0):
    return lambda p, b: p.result[field] * scale


class System:
    """One contender in one bench: argv to run, what it needs, where it is
    pinned, a check of its answer (returns an error or None)."""

    def __init__(self, name, argv, needs=(), pin=None, check=None, once=False, note="", base=False,
                 before=None, after=None):
        self.name, self.argv, self.needs, self.pin = name, argv, set(needs), pin
        self.check, self.once, self.note, self.base = check, once, note, base
        self.before, self.after = before, after


class Bench:
    def __init__(self, case, key, title, systems, metrics, chart=None, pin_note=""):
        self.case, self.key, self.title = case, key, title
        self.systems, self.metrics = systems, metrics
        self.chart = chart or [metrics[0].key]
        self.pin_note = pin_note
        # system name -> {"values": {metric: [..]}, "skip": reason, "fail": reason}
        self.res = {s.name: {"values": {m.key: [] for m in metrics}, "skip": None, "fail": None}
                    for s in systems}


def sanitizer_report(text):
    """A sanitizer's report in a process's output (an ASan build of
    asynchost can be measured too: bench/run --build build-asan)."""
    m = re.search(r"(ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:).*", text or "")
    return "sanitizer: " + m.group(0)[:300] if m else None


def check_ok(p, b):
    r = p.result
    if r is None:
        return "no RESULT line in output"
    if not r.get("ok"):
        return "wrong answer: %s" % json.dumps(r)[:400]
    return None


class Runner:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.repeat = args.repeat or (1 if args.smoke else 3)
        self.ah = args.asynchost
        self.tmp = tempfile.mkdtemp(prefix="asynchost-bench.")
        os.chmod(self.tmp, 0o755)
        self.services = []
        self.origin = None
        self.pg = None
        self.benches = []
        self.failures = []
        self.pins = os.cpu_count() >= 2
        self.features = self.detect_features()
        self.avail = {}

    # -- environment
    def detect_features(self):
        code = ('local a = require("asynchost") for _, k in ipairs{"fetch","html","db","http","json"} do '
                'if a[k] ~= nil then io.write(k, " ") end end')
        r = subprocess.run([self.ah, "-e", code], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise SystemExit("bench: %s does not run: %s" % (self.ah, (r.stderr or r.stdout).strip()[-400:]))
        feats = set(r.stdout.split())
        if (ROOT / "scripts" / "crawl.lua").exists():
            feats.add("crawl")
        return feats

    def have(self, need):
        """Whether a requirement of a system is met; returns a reason if not."""
        if need in ("fetch", "html", "db", "http", "crawl"):
            if need in self.features:
                return None
            if need == "crawl":
                return "scripts/crawl.lua is not in the tree yet"
            return "`%s` is not in the asynchost module yet" % need
        if need not in self.avail:
            ok = True
            if need.startswith("py:"):
                ok = subprocess.run([PY, "-c", "import " + need[3:]], capture_output=True).returncode == 0
            elif need == "node-pg":
                ok = (BENCH / "node_modules" / "pg").exists()
            elif need == "luv":
                ok = subprocess.run([LUA, "-e", "require'luv'"], capture_output=True).returncode == 0
            elif need.startswith("bin:"):
                ok = shutil.which(need[4:]) is not None
            self.avail[need] = ok
        return None if self.avail[need] else "%s is not installed" % need

    def pin(self, core):
        return core if self.pins else None

    def start_origin(self):
        if self.origin is None:
            pages, delay = (200, 10) if self.smoke else (10000, 50)
            log("== starting origin nginx (site of %d pages, %d ms delay)" % (pages, delay))
            self.origin = Origin(self.tmp, pages, delay, self.pin(0))
            self.services.append(self.origin)
        return self.origin

    def start_pg(self):
        if self.pg is None:
            log("== starting a throwaway PostgreSQL cluster")
            self.pg = Postgres(self.tmp)
            self.services.append(self.pg)
        return self.pg

    def stop_all(self):
        for s in reversed(self.services):
            try:
                s.stop()
            except Exception as e:  # keep stopping the others
                log("bench: stopping %s: %s" % (type(s).__name__, e))
        self.services = []
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- running a bench: repeats interleaved across systems, so that noise
    #    on the shared machine hits every system alike
    def run_bench(self, b):
        log("== %s: %s" % (b.key, b.title))
        for s in b.systems:
            for need in s.needs:
                why = self.have(need)
                if why:
                    b.res[s.name]["skip"] = why
                    log("   %-28s skipped: %s" % (s.name, why))
                    break
        for rep in range(self.repeat):
            for s in b.systems:
                r = b.res[s.name]
                if r["skip"] or r["fail"] or (s.once and rep > 0):
                    continue
                if s.before:
                    s.before()
                argv = s.argv() if callable(s.argv) else s.argv
                p = run_proc(argv, pin=self.pin(s.pin) if s.pin is not None else None,
                             timeout=120 if self.smoke else 600)
                err = p.fail_reason() or sanitizer_report(p.err) or (s.check or check_ok)(p, b)
                if not err and s.after:
                    err = s.after(p)
                if err:
                    r["fail"] = err
                    self.failures.append("%s / %s: %s" % (b.key, s.name, err))
                    log("   %-28s FAILED: %s" % (s.name, err))
                    continue
                vals = {}
                for m in b.metrics:
                    try:
                        v = m.fn(p, b)
                    except (KeyError, TypeError, ZeroDivisionError):
                        v = None
                    if v is not None:
                        r["values"][m.key].append(v)
                        vals[m.key] = v
                log("   %-28s #%d %s" % (s.name, rep + 1, "  ".join(
                    "%s=%s" % (m.key, fmt_value(m, vals.get(m.key))) for m in b.metrics)))
        self.benches.append(b)

    # -- the cases
    def case_tasks(self):
        n, y = (2000, 10000) if self.smoke else (100000, 1000000)
        ah, tl = [self.ah, "bench/cases/tasks.lua"], "bench/peers/"

        def bpt(p, b):
            return (p.result["hwm_kb"] - p.result["rss0_kb"]) * 1024 / p.result["n"]
        sleep_metrics = [
            Metric("wall", "wall (gather)", "s", "lower", m_result("elapsed")),
            Metric("bpt", "memory per task", "B", "lower", bpt, "{:,.0f}"),
            Metric("rss", "peak RSS", "MB", "lower", lambda p, b: p.maxrss_kb / 1024),
            Metric("cpu", "CPU (gather)", "s", "lower", m_result("cpu")),
        ]
        systems = lambda mode, k: [
            System("asynchost", ah + [mode, k], base=True),
            System("Python asyncio", [PY, tl + "tasks_asyncio.py", mode, k]),
            System("Python asyncio+uvloop", [PY, tl + "tasks_asyncio.py", mode, k, "uvloop"], needs=["py:uvloop"]),
            System("Node.js Promise+timers", [NODE, tl + "tasks_node.js", mode, k]),
            System("Lua 5.4 + luv", [LUA, tl + "tasks_luv.lua", mode, k], needs=["luv"]),
        ]
        self.run_bench(Bench("tasks", "tasks.sleep", "%s concurrent sleep(0.1) tasks, gathered" % f"{n:,}",
                             systems("sleep", n), sleep_metrics, chart=["wall", "bpt"]))
        yield_metrics = [
            Metric("ns", "per sleep(0) round trip", "ns", "lower", lambda p, b: p.result["elapsed"] / p.result["n"] * 1e9, "{:,.0f}"),
            Metric("cpu", "CPU", "s", "lower", m_result("cpu")),
        ]
        self.run_bench(Bench("tasks", "tasks.yield", "%s sleep(0) yields in one task" % f"{y:,}",
                             systems("yield", y), yield_metrics))

    def client_metrics(self, rate=None):
        ms = [Metric("wall", "wall", "s", "lower", lambda p, b: p.result.get("elapsed", p.wall) if p.result else p.wall)]
        ms.append(Metric("cpu", "client CPU", "s", "lower", lambda p, b: p.result.get("cpu", p.cpu) if p.result else p.cpu))
        ms.append(Metric("rss", "peak RSS", "MB", "lower", lambda p, b: p.maxrss_kb / 1024))
        return ms

    def curl_check(self, n, size=None):
        def check(p, b):
            lines = [l.split() for l in p.out.splitlines() if l.strip()]
            bad = [l for l in lines if l[0] != "200" or (size is not None and int(l[1]) != size)]
            if len(lines) != n or bad:
                return "curl: %d responses, %d bad (%s)" % (len(lines), len(bad), bad[:3])
            return None
        return check

    def case_crawl_latency(self):
        o = self.start_origin()
        delay = 10 if self.smoke else 200
        base = "%s/d/%d/" % (o.url, delay)
        for n, conc, key in ((10, 10, "100") if self.smoke else (100, 100, "100"),
                             (200, 50, "10k") if self.smoke else (10000, 1000, "10k")):
            pe = "bench/peers/"
            curl_max = min(conc, 300)
            systems = [
                System("asynchost", [self.ah, "bench/cases/crawl_latency.lua", base, n, conc], needs=["fetch", "html"], base=True),
            ]
            if key == "100":
                systems += [
                    System("Python requests (serial)", [PY, pe + "crawl_requests.py", base, n, 1], needs=["py:requests", "py:lxml"], once=True,
                           note="run once: ~n × delay"),
                    System("Python ThreadPoolExecutor(16)", [PY, pe + "crawl_requests.py", base, n, 16], needs=["py:requests", "py:lxml"]),
                ]
            systems += [
                System("Python aiohttp", [PY, pe + "crawl_aiohttp.py", base, n, conc], needs=["py:aiohttp", "py:lxml"]),
                System("Node.js fetch", [NODE, pe + "crawl_node.js", "fetch", base, n, conc]),
                System("Node.js http Agent", [NODE, pe + "crawl_node.js", "agent", base, n, conc]),
                System("curl --parallel", ["curl", "--parallel", "--parallel-immediate", "--parallel-max", curl_max, "-s",
                                           "-o", "/dev/null", "-w", "%{http_code} %{size_download}\\n", "%s[1-%d]" % (base, n)],
                       check=self.curl_check(n), note="no title extraction; --parallel-max is capped at 300"),
            ]
            title = "%s pages × %d ms delay, %s at once, title of each" % (f"{n:,}", delay, f"{conc:,}")
            self.run_bench(Bench("crawl-latency", "crawl-latency." + key, title, systems, self.client_metrics(),
                                 chart=["wall", "rss"] if key == "10k" else ["wall"]))

    def case_fetch_throughput(self):
        o = self.start_origin()
        n, c = (500, 8) if self.smoke else (20000, 64)
        url = o.url + "/1k"
        pe = "bench/peers/"
        per_req = lambda p, b: (p.result.get("cpu", p.cpu) if p.result else p.cpu) / reqs(p) * 1e6

        def reqs(p):
            return p.result["n"] if p.result else n
        wrk_secs = 1 if self.smoke else 5

        def wrk_check(p, b):
            w = parse_wrk(p.out)
            if not w or w.get("errors"):
                return "wrk: " + p.out[-400:]
            p.result = w
            p.result["ok"] = True
            return None
        metrics = [
            Metric("rps", "throughput", "req/s", "higher",
                   lambda p, b: p.result["rps"] if p.result and "rps" in p.result else reqs(p) / (p.result.get("elapsed", p.wall) if p.result else p.wall), "{:,.0f}"),
            Metric("cpu_us", "client CPU per request", "µs", "lower",
                   lambda p, b: p.cpu / p.result["requests"] * 1e6 if p.result and "requests" in p.result else per_req(p, b), "{:.1f}"),
            Metric("rss", "peak RSS", "MB", "lower", lambda p, b: p.maxrss_kb / 1024),
        ]
        systems = [
            System("asynchost", [self.ah, "bench/cases/fetch_throughput.lua", url, n, c], needs=["fetch"], pin=1, base=True),
            System("Python aiohttp", [PY, pe + "fetch_aiohttp.py", url, n, c], needs=["py:aiohttp"], pin=1),
            System("Python aiohttp+uvloop", [PY, pe + "fetch_aiohttp.py", url, n, c, "uvloop"], needs=["py:aiohttp", "py:uvloop"], pin=1),
            System("Node.js fetch", [NODE, pe + "fetch_node.js", "fetch", url, n, c], pin=1),
            System("Node.js http Agent", [NODE, pe + "fetch_node.js", "agent", url, n, c], pin=1),
            System("curl --parallel", ["curl", "--parallel", "--parallel-immediate", "--parallel-max", c, "-s", "-o", "/dev/null",
                                       "-w", "%{http_code} %{size_download}\\n", url + "?i=[1-%d]" % n],
                   pin=1, check=self.curl_check(n, 1024)),
            System("wrk (ceiling)", ["wrk", "-t1", "-c%d" % c, "-d%ds" % wrk_secs, url], pin=1, check=wrk_check,
                   note="time-bound (%d s), not %d requests" % (wrk_secs, n)),
        ]
        self.run_bench(Bench("fetch-throughput", "fetch-throughput", "%s GETs of 1 KB, %d at once, keep-alive" % (f"{n:,}", c),
                             systems, metrics, chart=["rps", "cpu_us"],
                             pin_note="client pinned to core 1, origin nginx to core 0"))

    def case_db(self):
        pg = self.start_pg()
        n_sel, n_ins, n_copy = (400, 200, 1000) if self.smoke else (20000, 10000, 100000)
        pe, dsn = "bench/peers/", pg.dsn
        tmp = self.tmp
        with open(tmp + "/select.sql", "w") as f:
            f.write("\\set x random(1, 1000000)\nSELECT :x::int + 1;\n")
        with open(tmp + "/insert.sql", "w") as f:
            f.write("\\set x random(1, 1000000)\nINSERT INTO bench_insert (a, b) VALUES (:x, 'row');\n")

        def fresh_table():
            pg.psql("DROP TABLE IF EXISTS bench_insert; CREATE TABLE bench_insert "
                    "(id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL)")

        def count_is(n, sum_check=True):
            def after(p):
                cnt, s = pg.psql("SELECT count(*), coalesce(sum(a), 0) FROM bench_insert").split("|")
                if int(cnt) != n:
                    return "table has %s rows, expected %d" % (cnt, n)
                if sum_check and int(s) != n * (n + 1) // 2:
                    return "sum(a) = %s, expected %d" % (s, n * (n + 1) // 2)
                return None
            return after

        def pgbench(script, n, check_sum=False):
            return ["pgbench", "-n", "-M", "prepared", "-c", 8, "-j", 2, "-t", n // 8, "-f", script,
                    "-h", "127.0.0.1", "-p", pg.port, "-U", "postgres", "postgres"]

        def pgbench_check(p, b):
            m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", p.out)
            if not m or "number of failed transactions: 0" not in p.out:
                return "pgbench: " + p.out[-400:] + p.err[-400:]
            done = re.search(r"number of transactions actually processed: (\d+)", p.out)
            p.result = {"ok": True, "rps": float(m.group(1)), "n": int(done.group(1))}
            return None

        def rate(p, b):
            if "rps" in p.result:
                return p.result["rps"]
            return p.result["n"] / p.result["elapsed"]

        def cpu_per(p, b):
            return p.result.get("cpu", p.cpu) / p.result["n"] * 1e6

        metrics = [
            Metric("rps", "throughput", "q/s", "higher", rate, "{:,.0f}"),
            Metric("cpu_us", "client CPU per query", "µs", "lower", cpu_per, "{:.1f}"),
        ]
        ah = [self.ah, "bench/cases/db.lua"]
        apg = [PY, pe + "db_asyncpg.py"]
        npg = [NODE, pe + "db_node.js"]
        sel = [
            System("asynchost (8 conns, pipelined)", ah + ["select", dsn, n_sel, 8], needs=["db"], base=True),
            System("asynchost db.pool{size=8}", ah + ["select-pool", dsn, n_sel, 8], needs=["db"]),
            System("Python asyncpg pool(8)", apg + ["select", dsn, n_sel, 8], needs=["py:asyncpg"]),
            System("Python asyncpg+uvloop pool(8)", apg + ["select", dsn, n_sel, 8, "uvloop"], needs=["py:asyncpg", "py:uvloop"]),
            System("Node.js pg Pool(8)", npg + ["select", dsn, n_sel, 8], needs=["node-pg"]),
            System("pgbench -M prepared (ceiling)", pgbench(tmp + "/select.sql", n_sel), needs=["bin:pgbench"], check=pgbench_check),
        ]
        self.run_bench(Bench("db", "db.select", "%s `SELECT $1::int + 1` over 8 connections" % f"{n_sel:,}", sel, metrics,
                             chart=["rps", "cpu_us"]))
        ins = [
            System("asynchost (8 conns, pipelined)", ah + ["insert", dsn, n_ins, 8], needs=["db"], base=True),
            System("asynchost db.pool{size=8}", ah + ["insert-pool", dsn, n_ins, 8], needs=["db"]),
            System("Python asyncpg pool(8)", apg + ["insert", dsn, n_ins, 8], needs=["py:asyncpg"]),
            System("Python asyncpg+uvloop pool(8)", apg + ["insert", dsn, n_ins, 8, "uvloop"], needs=["py:asyncpg", "py:uvloop"]),
            System("Node.js pg Pool(8)", npg + ["insert", dsn, n_ins, 8], needs=["node-pg"]),
            System("pgbench -M prepared (ceiling)", pgbench(tmp + "/insert.sql", n_ins), needs=["bin:pgbench"], check=pgbench_check),
        ]
        for s in ins:
            s.before = fresh_table
            if not s.name.startswith("pgbench"):
                s.after = count_is(n_ins)
            else:
                s.after = count_is(n_ins, sum_check=False)
        self.run_bench(Bench("db", "db.insert", "%s parameterized INSERTs over 8 connections" % f"{n_ins:,}", ins, metrics))
        copy_file = tmp + "/copy.tsv"
        with open(copy_file, "w") as f:
            for i in range(1, n_copy + 1):
                f.write("%d\trow %d\n" % (i, i))
        os.chmod(copy_file, 0o644)
        cp = [
            System("asynchost conn:copy_in", ah + ["copy", dsn, n_copy, 1], needs=["db"], base=True),
            System("Python asyncpg copy_records_to_table", apg + ["copy", dsn, n_copy, 1], needs=["py:asyncpg"]),
            System("psql \\copy from a file", ["psql", "-X", "-q", dsn, "-c",
                                                         "\\copy bench_insert (a, b) from '%s'" % copy_file],
                   check=lambda p, b: setattr(p, "result", {"ok": True, "n": n_copy, "elapsed": p.wall}) or None),
        ]
        for s in cp:
            s.before = fresh_table
            s.after = count_is(n_copy)
        copy_metrics = [
            Metric("rps", "throughput", "rows/s", "higher", rate, "{:,.0f}"),
            Metric("cpu_us", "client CPU per row", "µs", "lower", cpu_per, "{:.2f}"),
        ]
        self.run_bench(Bench("db", "db.copy", "%s rows through COPY FROM STDIN" % f"{n_copy:,}", cp, copy_metrics))

    def case_server(self):
        secs = 1 if self.smoke else 8
        warm = 0 if self.smoke else 1
        pe = "bench/peers/"
        tmp = self.tmp

        def ah_server(port):
            return [self.ah, "bench/cases/server.lua", port]
        servers = [
            ("asynchost http.server", ["http"], lambda port: ah_server(port)),
            ("nginx + lua", ["bin:nginx"], None),
            ("Node.js http", [], lambda port: [NODE, pe + "server_node.js", port]),
            ("Python aiohttp.web", ["py:aiohttp"], lambda port: [PY, pe + "server_aiohttp.py", port]),
            ("uvicorn + FastAPI", ["py:uvicorn", "py:fastapi"], lambda port: [PY, pe + "server_fastapi.py", port]),
        ]
        routes = [("hello", "/hello", "hello-JSON route"), ("sleep", "/sleep", "route that sleeps 10 ms, then answers")]
        metrics = [
            Metric("rps", "throughput", "req/s", "higher", None, "{:,.0f}"),
            Metric("p99", "p99 latency", "ms", "lower", None, "{:.2f}"),
            Metric("cpu_us", "server CPU per request", "µs", "lower", None, "{:.1f}"),
            Metric("rss", "server RSS", "MB", "lower", None, "{:.1f}"),
        ]
        benches = {}
        for key, path, title in routes:
            b = Bench("server", "server." + key, "wrk -t1 -c64 -d%ds, %s" % (secs, title),
                      [System(name, None, needs=needs, base=(i == 0)) for i, (name, needs, _) in enumerate(servers)],
                      metrics, chart=["rps", "cpu_us"] if key == "hello" else ["rps", "p99"],
                      pin_note="server pinned to core 0, wrk to core 1: the 2 cores are shared")
            benches[key] = b
        log("== server: wrk -t1 -c64 -d%ds against each server (server on core 0, wrk on core 1)" % secs)
        for name, needs, _ in servers:
            for need in needs:
                why = self.have(need)
                if why:
                    for b in benches.values():
                        b.res[name]["skip"] = why
                    log("   %-28s skipped: %s" % (name, why))
                    break
        for rep in range(self.repeat):
            for name, needs, argv_fn in servers:
                if benches["hello"].res[name]["skip"] or benches["hello"].res[name]["fail"]:
                    continue
                port = free_port()
                srv = None
                try:
                    if argv_fn is None:
                        srv = ServerProc.nginx_lua(tmp, self.pin(0))
                    else:
                        srv = ServerProc(argv_fn(port), port, self.pin(0), tmp, name)
                    err = srv.check()
                    if err:
                        raise RuntimeError(err)
                    for key, path, _ in routes:
                        url = srv.url + path
                        if warm:
                            run_proc(["wrk", "-t1", "-c64", "-d%ds" % warm, url], pin=self.pin(1), timeout=60)
                        c0 = cpu_ticks(proc_tree(srv.pid))
                        p = run_proc(["wrk", "-t1", "-c64", "-d%ds" % secs, "--latency", url], pin=self.pin(1),
                                     timeout=secs + 60)
                        c1 = cpu_ticks(proc_tree(srv.pid))
                        w = parse_wrk(p.out)
                        if p.code != 0 or not w or w.get("errors"):
                            raise RuntimeError("wrk on %s: %s" % (path, (p.out + p.err)[-500:]))
                        rss = status_kb(proc_tree(srv.pid), "VmRSS") / 1024
                        vals = {"rps": w["rps"], "p99": w["p99"], "cpu_us": (c1 - c0) / w["requests"] * 1e6, "rss": rss}
                        for k, v in vals.items():
                            benches[key].res[name]["values"][k].append(v)
                        log("   %-28s %-5s #%d %s" % (name, key, rep + 1, "  ".join(
                            "%s=%s" % (m.key, fmt_value(m, vals[m.key])) for m in metrics)))
                except Exception as e:  # one broken server must not stop the others
                    why = str(e)[-600:]
                    if srv is not None:
                        why += " | server log: " + srv.log_tail()
                    for b in benches.values():
                        b.res[name]["fail"] = why
                    self.failures.append("server / %s: %s" % (name, why))
                    log("   %-28s FAILED: %s" % (name, why))
                finally:
                    if srv is not None:
                        srv.stop()
                        why = sanitizer_report(srv.log_tail(100000))
                        if why and not benches["hello"].res[name]["fail"]:
                            for b in benches.values():
                                b.res[name]["fail"] = why
                            self.failures.append("server / %s: %s" % (name, why))
        for b in benches.values():
            self.benches.append(b)

    def case_crawl_real(self):
        o = self.start_origin()
        n = o.site_pages
        conc = 50 if self.smoke else 500
        start = o.url + "/site/p0.html"
        out = self.tmp + "/crawl.jsonl"

        def crawl_check(p, b):
            seen, bad = set(), 0
            try:
                with open(out) as f:
                    for line in f:
                        r = json.loads(line)
                        if r.get("status") != 200 or not (r.get("title") or "").startswith("Site page"):
                            bad += 1
                        seen.add(r["url"])
            except (OSError, ValueError) as e:
                return "crawl output: %s" % e
            os.remove(out)
            if len(seen) != n or bad:
                return "crawl.lua fetched %d distinct pages (%d bad), expected %d" % (len(seen), bad, n)
            p.result = {"ok": True, "n": len(seen), "elapsed": p.wall}
            return None
        metrics = [
            Metric("pps", "pages per second", "pages/s", "higher", lambda p, b: p.result["n"] / p.result.get("elapsed", p.wall), "{:,.0f}"),
            Metric("rss", "peak RSS", "MB", "lower", lambda p, b: p.maxrss_kb / 1024),
            Metric("cpu", "CPU", "s", "lower", lambda p, b: p.cpu),
        ]
        systems = [
            System("asynchost scripts/crawl.lua", [self.ah, "scripts/crawl.lua", "--concurrency", conc, "--per-host", conc,
                                                   "--depth", 100, "--quiet", "--no-progress", "--out", out, start], needs=["crawl", "fetch", "html"], check=crawl_check, base=True),
            System("Python aiohttp + bs4(lxml)", [PY, "bench/peers/crawl_site_aiohttp.py", start, n, conc],
                   needs=["py:aiohttp", "py:bs4", "py:lxml"]),
        ]
        self.run_bench(Bench("crawl-real", "crawl-real", "crawl of a %s-page local site, %d ms per page, %d at once"
                             % (f"{n:,}", 10 if self.smoke else 50, conc), systems, metrics, chart=["pps", "rss"]))


class ServerProc:
    """A server under test, pinned to core 0; pid is the process whose tree
    is measured (nginx: master + worker)."""

    def __init__(self, argv, port, pin, tmp, name, proc=None):
        self.port, self.url, self.name = port, "http://127.0.0.1:%d" % port, name
        self.logpath = os.path.join(tmp, "server.%d.log" % port)
        self.nginx = None
        if proc is None:
            if pin is not None:
                argv = ["taskset", "-c", str(pin)] + [str(a) for a in argv]
            self.logf = open(self.logpath, "w")
            self.proc = subprocess.Popen([str(a) for a in argv], stdout=self.logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
            if not wait_port(port, 30, self.proc):
                raise RuntimeError("%s did not listen on %d: %s" % (name, port, self.log_tail()))
        self.pid = self.proc.pid if proc is None else proc.pid

    @classmethod
    def nginx_lua(cls, tmp, pin):
        block = r"""
    location = /hello {
      default_type application/json;
      content_by_lua_block { ngx.print(cjson.encode({message = "hello"})) }
    }
    location = /sleep {
      default_type application/json;
      content_by_lua_block { ngx.sleep(0.01) ngx.print(cjson.encode({message = "hello"})) }
    }
"""
        # OpenResty bundles cjson; Debian's module finds lua-cjson only if it
        # is installed for LuaJIT, so fall back to the same literal.
        init = r"""  init_by_lua_block {
    local ok, m = pcall(require, "cjson")
    cjson = ok and m or {encode = function(t) return '{"message":"' .. t.message .. '"}' end}
  }"""
        n = Nginx(tmp, "server%d" % free_port(), block, pin, http_extra=init)
        self = cls.__new__(cls)
        self.port, self.url, self.name, self.nginx = n.port, n.url, "nginx + lua", n
        self.proc, self.pid = n.proc, n.proc.pid
        self.logpath = os.path.join(tmp, n.name + ".error.log")
        return self

    def check(self):
        for path in ("/hello", "/sleep"):
            try:
                st, body = http_get(self.url + path)
            except Exception as e:
                return "%s %s: %s" % (self.name, path, e)
            try:
                ok = st == 200 and json.loads(body) == {"message": "hello"}
            except ValueError:
                ok = False
            if not ok:
                return "%s %s answered %s %r" % (self.name, path, st, body[:200])
        return None

    def log_tail(self, n=400):
        try:
            with open(self.logpath) as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop(self):
        if self.nginx is not None:
            self.nginx.stop()
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.logf.close()


def parse_wrk(out):
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        return None
    r = {"rps": float(m.group(1))}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if m:
        r["p99"] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    # a wrong answer fails the run; a few socket errors (a timeout of a
    # slow server, a reset at the end of the run) are tolerated below 0.1%
    bad = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        bad = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock = sum(int(x) for x in m.groups()) if m else 0
    if bad or sock > 0.001 * r.get("requests", 0):
        r["errors"] = "%d non-2xx, %d socket errors" % (bad, sock)
    return r


# ---------------------------------------------------------------- reporting

def fmt_value(m, v):
    if v is None:
        return "-"
    return m.fmt.format(v)


def summarize(benches):
    """Rows of the table: medians and ratios to asynchost (the base)."""
    rows = []
    for b in benches:
        base = next((s.name for s in b.systems if s.base), None)
        for s in b.systems:
            r = b.res[s.name]
            for m in b.metrics:
                vals = r["values"][m.key]
                med = statistics.median(vals) if vals else None
                rows.append({"bench": b.key, "case": b.case, "title": b.title, "system": s.name, "metric": m.key,
                             "label": m.label, "unit": m.unit, "better": m.better, "fmt": m.fmt,
                             "value": med, "values": vals, "skip": r["skip"], "fail": r["fail"],
                             "base": s.name == base, "note": s.note, "pin_note": b.pin_note,
                             "chart": m.key in b.chart})
        for row in rows:
            if row["bench"] != b.key:
                continue
            bv = next((x["value"] for x in rows if x["bench"] == b.key and x["base"] and x["metric"] == row["metric"]), None)
            row["ratio"] = (row["value"] / bv) if (row["value"] is not None and bv) else None
    return rows


def cell(row):
    if row["value"] is None:
        if row["fail"]:
            return "failed"
        if row["skip"]:
            return "skipped"
        return "-"
    return row["fmt"].format(row["value"])


def text_table(rows):
    hdr = ["case", "system", "metric", "value", "× asynchost"]
    lines = []
    for r in rows:
        ratio = "%.2f" % r["ratio"] if r.get("ratio") is not None else ""
        lines.append([r["bench"], r["system"], "%s (%s, %s better)" % (r["label"], r["unit"], r["better"]), cell(r), ratio])
    w = [max(len(x[i]) for x in lines + [hdr]) for i in range(5)]
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)), "  ".join("-" * x for x in w)]
    prev = None
    for x in lines:
        if prev and prev != x[0]:
            out.append("")
        prev = x[0]
        out.append("  ".join(v.rjust(w[i]) if i >= 3 else v.ljust(w[i]) for i, v in enumerate(x)))
    return "\n".join(out)


def md_tables(rows):
    """One markdown table per bench: systems as rows, metrics as columns."""
    out = []
    benches = []
    for r in rows:
        if r["bench"] not in benches:
            benches.append(r["bench"])
    for bk in benches:
        br = [r for r in rows if r["bench"] == bk]
        metrics = []
        for r in br:
            if r["metric"] not in [m["metric"] for m in metrics]:
                metrics.append(r)
        systems = []
        for r in br:
            if r["system"] not in systems:
                systems.append(r["system"])
        out.append("#### `%s` — %s" % (bk, br[0]["title"]))
        if br[0]["pin_note"]:
            out.append("")
            out.append("*%s.*" % br[0]["pin_note"])
        out.append("")
        head = ["system"] + ["%s (%s, %s is better)" % (m["label"], m["unit"], m["better"]) for m in metrics]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        notes = []
        for s in systems:
            cells = [("**%s**" % s) if any(r["base"] for r in br if r["system"] == s) else s]
            for m in metrics:
                r = next(x for x in br if x["system"] == s and x["metric"] == m["metric"])
                c = cell(r)
                if r.get("ratio") is not None and not r["base"]:
                    c += " (%.2f×)" % r["ratio"]
                cells.append(c)
            r0 = next(x for x in br if x["system"] == s)
            why = r0["fail"] or r0["skip"]
            if why:
                notes.append("%s: %s" % (s, why.replace("\n", " ")[:300]))
            elif r0["note"]:
                notes.append("%s: %s" % (s, r0["note"]))
            out.append("| " + " | ".join(cells) + " |")
        if notes:
            out.append("")
            for n in notes:
                out.append("- " + n.replace("|", "\\|"))
        out.append("")
    return "\n".join(out)


def charts(rows, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("bench: python3-matplotlib missing: no charts")
        return []
    made = []
    for case in CASES:
        panels = []
        for r in rows:
            if r["case"] == case and r["chart"] and (r["bench"], r["metric"]) not in [(p[0], p[1]) for p in panels]:
                panels.append((r["bench"], r["metric"]))
        panels = [p for p in panels if any(r["value"] is not None for r in rows if (r["bench"], r["metric"]) == p)]
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 0.45 * sum(
            len([r for r in rows if (r["bench"], r["metric"]) == p]) for p in panels) + 1.1 * len(panels)), squeeze=False)
        for ax, (bk, mk) in zip(axes[:, 0], panels):
            pr = [r for r in rows if r["bench"] == bk and r["metric"] == mk]
            names = [r["system"] for r in pr][::-1]
            vals = [r["value"] or 0 for r in pr][::-1]
            colors = ["#d9534f" if r["base"] else "#5b7fa6" for r in pr][::-1]
            bars = ax.barh(names, vals, color=colors)
            for bar, r in zip(bars, pr[::-1]):
                label = cell(r) + ("" if r["value"] is None or r["base"] or r.get("ratio") is None
                                   else "  (%.2f×)" % r["ratio"])
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + label, va="center", fontsize=8)
            ax.set_title("%s — %s (%s, %s is better)" % (bk, pr[0]["label"], pr[0]["unit"], pr[0]["better"]), fontsize=9)
            ax.tick_params(labelsize=8)
            ax.set_xlim(0, max(vals + [1e-9]) * 1.35)
        fig.tight_layout()
        path = os.path.join(outdir, "%s.png" % case)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    return made


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024 // 1024
    return "%s, %d cores (nproc), %d GiB RAM, Linux %s" % (model, os.cpu_count(), mem + 1, platform.release())


def versions(ah):
    def out(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "n/a"
    v = {
        "asynchost": out([ah, "-v"]) + (" at %s" % os.environ["BENCH_REV"] if os.environ.get("BENCH_REV") else ""),
        "python3": out([PY, "--version"]),
        "node": out([NODE, "--version"]),
        "nginx": out(["nginx", "-v"]),
        "curl": out(["curl", "--version"]),
        "wrk": out(["wrk", "-v"]),
        "postgresql": out(["pgbench", "--version"]),
    }
    mods = subprocess.run([PY, "-c", "import importlib.metadata as m\nfor p in ['aiohttp','asyncpg','uvloop','uvicorn','fastapi','beautifulsoup4','lxml','requests']:\n"
                           "  try: print(p, m.version(p))\n  except Exception: print(p, 'missing')"],
                          capture_output=True, text=True).stdout.split("\n")
    v["python modules"] = ", ".join(x for x in mods if x)
    try:
        v["node pg"] = json.load(open(BENCH / "node_modules" / "pg" / "package.json"))["version"]
    except OSError:
        v["node pg"] = "missing"
    return v


def load_latest():
    try:
        with open(RESULTS / "latest.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"cases": {}}


def targets(rows):
    """The targets from the issues, checked against this run's medians."""
    def v(bench, system, metric):
        r = next((x for x in rows if x["bench"] == bench and x["system"] == system and x["metric"] == metric), None)
        return r["value"] if r else None

    def base(bench, metric):
        r = next((x for x in rows if x["bench"] == bench and x["base"] and x["metric"] == metric), None)
        return r["value"] if r else None
    t = []

    def add(case, text, ok):
        t.append({"case": case, "target": text, "met": ok})

    def cmp(a, b, f):
        return None if a is None or b is None else f(a, b)
    w, bpt = base("tasks.sleep", "wall"), base("tasks.sleep", "bpt")
    add("tasks", "100k sleep tasks: wall < 0.3 s (%s)" % fmtn(w, "s"), cmp(w, 0.3, lambda a, b: a < b))
    add("tasks", "100k sleep tasks: < 1,100 B per task (%s)" % fmtn(bpt, "B"), cmp(bpt, 1100, lambda a, b: a < b))
    nw, nb = v("tasks.sleep", "Node.js Promise+timers", "wall"), v("tasks.sleep", "Node.js Promise+timers", "bpt")
    add("tasks", "ahead of Node.js on wall (%s vs %s)" % (fmtn(w, "s"), fmtn(nw, "s")), cmp(w, nw, lambda a, b: a < b))
    add("tasks", "ahead of Node.js on memory per task (%s vs %s)" % (fmtn(bpt, "B"), fmtn(nb, "B")), cmp(bpt, nb, lambda a, b: a < b))
    w1 = base("crawl-latency.100", "wall")
    add("crawl-latency", "100 pages × 200 ms: under 0.22 s (%s)" % fmtn(w1, "s"), cmp(w1, 0.22, lambda a, b: a < b))
    w2, r2 = base("crawl-latency.10k", "wall"), base("crawl-latency.10k", "rss")
    add("crawl-latency", "10,000 pages at 1,000 at once: under 2.4 s (%s)" % fmtn(w2, "s"), cmp(w2, 2.4, lambda a, b: a < b))
    add("crawl-latency", "10,000 pages at 1,000 at once: under 50 MB peak RSS (%s)" % fmtn(r2, "MB"), cmp(r2, 50, lambda a, b: a < b))
    rps = base("fetch-throughput", "rps")
    for peer, k in (("curl --parallel", 1.5), ("Node.js http Agent", 2.5), ("Python aiohttp", 5)):
        pv = v("fetch-throughput", peer, "rps")
        add("fetch-throughput", "≥ %.1f× %s req/s (%s)" % (k, peer, ratio_s(rps, pv)), cmp(rps, pv, lambda a, b: a >= k * b))
    cu = base("fetch-throughput", "cpu_us")
    add("fetch-throughput", "≤ 30 µs client CPU per request (%s)" % fmtn(cu, "µs"), cmp(cu, 30, lambda a, b: a <= b))
    q = base("db.select", "rps")
    for peer, k in (("pgbench -M prepared (ceiling)", 1.0), ("Python asyncpg+uvloop pool(8)", 1.2), ("Node.js pg Pool(8)", 2.0)):
        pv = v("db.select", peer, "rps")
        add("db", "SELECT: ≥ %.1f× %s (%s)" % (k, peer, ratio_s(q, pv)), cmp(q, pv, lambda a, b: a >= k * b))
    h = base("server.hello", "rps")
    for peer, k in (("nginx + lua", 0.9), ("Node.js http", 1.5), ("uvicorn + FastAPI", 3.5)):
        pv = v("server.hello", peer, "rps")
        add("server", "hello: ≥ %.1f× %s (%s)" % (k, peer, ratio_s(h, pv)), cmp(h, pv, lambda a, b: a >= k * b))
    hc = base("server.hello", "cpu_us")
    add("server", "hello: ≤ 15 µs server CPU per request (%s)" % fmtn(hc, "µs"), cmp(hc, 15, lambda a, b: a <= b))
    sr = base("server.sleep", "rps")
    add("server", "sleep route: ≥ 95%% of the 6,400 req/s ceiling (%s)" % fmtn(sr, "req/s"), cmp(sr, 6080, lambda a, b: a >= b))
    pps, prss = base("crawl-real", "pps"), base("crawl-real", "rss")
    py, pyr = v("crawl-real", "Python aiohttp + bs4(lxml)", "pps"), v("crawl-real", "Python aiohttp + bs4(lxml)", "rss")
    add("crawl-real", "≥ 5× the Python crawler's pages/s (%s)" % ratio_s(pps, py), cmp(pps, py, lambda a, b: a >= 5 * b))
    add("crawl-real", "≤ half its peak RSS (%s vs %s)" % (fmtn(prss, "MB"), fmtn(pyr, "MB")), cmp(prss, pyr, lambda a, b: a <= b / 2))
    return t


def fmtn(x, unit):
    return "n/a" if x is None else ("%.3g %s" % (x, unit) if x < 1000 else "{:,.0f} {}".format(x, unit))


def ratio_s(a, b):
    return "n/a" if a is None or b is None else "%.2f×" % (a / b)


def write_reports(runner, rows, args, started):
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / "raw"
    raw.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    run = {"date": stamp, "command": os.environ.get("BENCH_COMMAND", "bench/run"), "machine": machine(),
           "repeat": runner.repeat, "smoke": runner.smoke, "versions": versions(runner.ah), "rows": rows}
    with open(raw / ("%s%s.json" % (stamp.replace(":", ""), "-smoke" if runner.smoke else "")), "w") as f:
        json.dump(run, f, indent=1)
    if runner.smoke:
        return
    # latest.json keeps, per case, the rows of the last full run of that case
    latest = load_latest()
    for case in {r["case"] for r in rows}:
        latest["cases"][case] = {"date": stamp, "command": run["command"], "repeat": runner.repeat,
                                 "rows": [r for r in rows if r["case"] == case]}
    latest["machine"], latest["versions"] = run["machine"], run["versions"]
    with open(RESULTS / "latest.json", "w") as f:
        json.dump(latest, f, indent=1)
    render_all(latest)


def render_all(latest):
    """latest.md, the charts and docs/performance.md from latest.json."""
    all_rows = [r for c in CASES if c in latest["cases"] for r in latest["cases"][c]["rows"]]
    for r in all_rows:
        r.setdefault("ratio", None)
    charts(all_rows, str(RESULTS))
    tg = targets(all_rows)
    md = render_latest(latest, all_rows, tg)
    with open(RESULTS / "latest.md", "w") as f:
        f.write(md)
    render_docs(latest, all_rows, tg)


def target_lines(tg):
    out = ["| case | target | met? |", "|---|---|---|"]
    for t in tg:
        out.append("| %s | %s | %s |" % (t["case"], t["target"], {True: "met", False: "**missed**", None: "not measured"}[t["met"]]))
    return "\n".join(out)


def render_latest(latest, rows, tg):
    out = ["# Benchmark results (latest)", "",
           "Written by `bench/run`; see [docs/performance.md](../../docs/performance.md) for the method and what limits each number.",
           "", "Machine: " + latest.get("machine", "?"), ""]
    for case in CASES:
        c = latest["cases"].get(case)
        if not c:
            continue
        out.append("## %s" % case)
        out.append("")
        out.append("Run %s, median of %d, command: `%s`" % (c["date"], c["repeat"], c["command"]))
        out.append("")
        out.append(md_tables(c["rows"]))
        if os.path.exists(RESULTS / ("%s.png" % case)):
            out.append("![%s](%s.png)" % (case, case))
            out.append("")
    out.append("## Targets")
    out.append("")
    out.append(target_lines(tg))
    out.append("")
    out.append("## Versions")
    out.append("")
    for k, v in latest.get("versions", {}).items():
        out.append("- %s: %s" % (k, v))
    out.append("")
    return "\n".join(out)


DOC_HEAD = (BENCH / "lib" / "performance_head.md")
DOC_LIMITS = (BENCH / "lib" / "performance_limits.md")
DOC_ANALYSIS = (BENCH / "lib" / "performance_analysis.md")


def render_docs(latest, rows, tg):
    out = [DOC_HEAD.read_text().rstrip(), "", "## The machine", "",
           latest.get("machine", "?") + ". Client, servers and PostgreSQL all share these cores; "
           "where a case pins processes it says so beside its table.", "", "## Results", ""]
    for case in CASES:
        c = latest["cases"].get(case)
        if not c:
            out.append("### %s\n\nNot measured yet.\n" % case)
            continue
        out.append("### %s" % case)
        out.append("")
        out.append("Run %s, median of %d, `%s`." % (c["date"], c["repeat"], c["command"]))
        out.append("")
        out.append(md_tables(c["rows"]))
        if os.path.exists(RESULTS / ("%s.png" % case)):
            out.append("![%s](../bench/results/%s.png)" % (case, case))
            out.append("")
    out.append("## Targets")
    out.append("")
    out.append(target_lines(tg))
    out.append("")
    out.append(DOC_LIMITS.read_text().rstrip())
    out.append("")
    out.append(DOC_ANALYSIS.read_text().rstrip())
    out.append("")
    out.append("## Versions")
    out.append("")
    for k, v in latest.get("versions", {}).items():
        out.append("- %s: %s" % (k, v))
    out.append("")
    (ROOT / "docs").mkdir(exist_ok=True)
    with open(ROOT / "docs" / "performance.md", "w") as f:
        f.write("\n".join(out))


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(prog="bench/run", description="asynchost against its peers, side by side")
    ap.add_argument("cases", nargs="*", help="cases to run (default: all): " + ", ".join(CASES))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that each case and peer works")
    ap.add_argument("--repeat", type=int, default=0, help="repeats per measurement (median; default 3)")
    ap.add_argument("--asynchost", help="the asynchost binary")
    ap.add_argument("--report", action="store_true",
                    help="only redraw latest.md, the charts and docs/performance.md from latest.json")
    args = ap.parse_args()
    if args.report:
        render_all(load_latest())
        log("bench: wrote bench/results/latest.md, bench/results/*.png and docs/performance.md")
        return 0
    if not args.asynchost:
        ap.error("--asynchost is required")
    bad = [c for c in args.cases if c not in CASES]
    if bad:
        ap.error("unknown case %s (cases: %s)" % (", ".join(bad), ", ".join(CASES)))
    cases = args.cases or CASES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536, hard))

    def on_signal(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    started = time.time()
    runner = Runner(args)
    log("bench: asynchost %s; module has: %s; %d repeat(s)%s" % (
        args.asynchost, " ".join(sorted(runner.features)) or "(core only)", runner.repeat, ", smoke sizes" if args.smoke else ""))
    try:
        for c in cases:
            try:
                getattr(runner, "case_" + c.replace("-", "_"))()
            except KeyboardInterrupt:
                raise
            except Exception as e:
                import traceback
                traceback.print_exc()
                runner.failures.append("%s: %s" % (c, e))
    except KeyboardInterrupt:
        log("bench: interrupted")
        runner.stop_all()
        return 130
    finally:
        runner.stop_all()
    rows = summarize(runner.benches)
    print()
    print(text_table(rows))
    print()
    write_reports(runner, rows, args, started)
    if not args.smoke:
        log("bench: wrote bench/results/latest.md, bench/results/*.png and docs/performance.md")
    log("bench: %.0f s" % (time.time() - started))
    if runner.failures:
        log("bench: %d failure(s):" % len(runner.failures))
        for f in runner.failures:
            log("  - " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
