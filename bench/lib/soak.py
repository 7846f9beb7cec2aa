"""bench/soak's driver: long runs that must not grow.

Each case runs its workload N times with checkpoints after a warm-up
(base), at 10 % and at 100 % of N: peak RSS (VmHWM) at 10 % and at 100 %
must be within 10 % of each other, and the open descriptors at the end
must be back to the base count. The tasks, fetch and db cases measure
themselves (bench/soak_cases/<case>.lua prints a RESULT line); the server
case is measured from outside while wrk drives it in ten steps.

Run it through bench/soak (which builds asynchost and installs wrk).
"""
import argparse
import json
import os
import re
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (the services: nginx, PostgreSQL, ports)
from harness import Nginx, Postgres, free_port, log, wait_port  # noqa: E402

ROOT = harness.ROOT
CASES_DIR = ROOT / "bench" / "soak_cases"
RESULTS = ROOT / "bench" / "results"
CASES = ["tasks", "fetch", "server", "db"]
COUNTS = {"tasks": 1_000_000, "fetch": 1_000_000, "server": 1_000_000, "db": 200_000}
GROWTH_MAX = 10.0  # per cent
NICE = ["nice", "-n", "5"]

ORIGIN_BLOCK = """
    root {www};
    location = /1k {{ default_type text/html; }}
    location = /delay {{
      content_by_lua_block {{ ngx.sleep(0.05) ngx.print("late") }}
    }}
"""


def proc_status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def run_lua(ah, script, args, timeout):
    argv = NICE + [ah, str(CASES_DIR / script)] + [str(a) for a in args]
    log("   $ " + " ".join(argv[3:]))
    t0 = time.time()
    p = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    wall = time.time() - t0
    if p.stderr.strip():
        sys.stderr.write("".join("   | " + l + "\n" for l in p.stderr.strip().splitlines()[-20:]))
    res = None
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
    if p.returncode != 0 or res is None:
        raise RuntimeError("%s exited %d: %s" % (script, p.returncode, (p.stdout + p.stderr)[-1500:]))
    res["wall"] = wall
    return res


class Soak:
    def __init__(self, args):
        self.args = args
        self.ah = args.asynchost
        self.tmp = tempfile.mkdtemp(prefix="asynchost-soak.")
        os.chmod(self.tmp, 0o755)
        self.services = []
        self.rows = []

    def count(self, case):
        return max(1000, int(COUNTS[case] * self.args.scale))

    def stop_all(self):
        for s in reversed(self.services):
            try:
                s.stop()
            except Exception as e:  # keep stopping the others
                log("soak: stopping %s: %s" % (type(s).__name__, e))
        self.services = []

    # ------------------------------------------------------------ rows
    def row(self, case, n, r, note=""):
        """r: {base, at10, at100, ok[, closed]} checkpoints {rss, hwm, fds, live}."""
        hwm10, hwm100 = r["at10"]["hwm"], r["at100"]["hwm"]
        growth = (hwm100 - hwm10) / hwm10 * 100
        fds_base, fds_end = r["base"]["fds"], r["at100"]["fds"]
        fails = []
        if growth > GROWTH_MAX:
            fails.append("peak RSS grew %.1f%%" % growth)
        # Connections kept for reuse (idle keep-alive fetch sockets, pooled
        # db connections) are counted by asynchost.stats(), and how many
        # are kept varies (a cancelled transfer's or a "Connection: close"
        # one is not reopened until needed). So: exactly as many
        # descriptors as at the base once those connections are taken
        # off, and no more connections than at the base or than the
        # workload keeps busy at once (r["conns_max"]).
        conns_b, conns_e = conns(r["base"]), conns(r["at100"])
        if (fds_end - conns_e != fds_base - conns_b
                or conns_e > max(conns_b, r.get("conns_max", 0))):
            fails.append("fds %d at the end (%d connections; %s), %d at the base (%d connections; %s)" % (
                fds_end, conns_e, compact(r["at100"].get("fd_kinds")), fds_base, conns_b,
                compact(r["base"].get("fd_kinds"))))
        if "closed" in r and r["closed"]["fds"] != r["fds0"]:
            fails.append("fds %d after pool:close(), %d before the pool" % (r["closed"]["fds"], r["fds0"]))
        if not r.get("ok", False):
            fails.append("the workload reported errors")
        live_b, live_e = r["base"].get("live"), r["at100"].get("live")
        row = {"case": case, "n": n, "rss10": r["at10"]["rss"], "rss100": r["at100"]["rss"],
               "hwm10": hwm10, "hwm100": hwm100, "growth": growth, "fds0": r.get("fds0"),
               "fds_base": fds_base, "fds_end": fds_end,
               "fds_closed": r["closed"]["fds"] if "closed" in r else None,
               "wall": r.get("wall"), "pass": not fails, "why": "; ".join(fails), "note": note,
               "live_base": live_b, "live_end": live_e}
        self.rows.append(row)
        log("   %s: %s  peak RSS %d -> %d kB (%+.1f%%), fds %d -> %d%s" % (
            case, "PASS" if row["pass"] else "FAIL", hwm10, hwm100, growth, fds_base, fds_end,
            "" if row["pass"] else "  (" + row["why"] + ")"))
        return row

    # ------------------------------------------------------------ cases
    def case_tasks(self):
        n = self.count("tasks")
        log("== tasks: %s tasks spawned and finished" % f"{n:,}")
        r = run_lua(self.ah, "tasks.lua", [n], timeout=3600)
        self.row("tasks", n, r)

    def origin(self):
        www = os.path.join(self.tmp, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "1k"), "w") as f:
            f.write("0123456789abcdef" * 64)
        ng = Nginx(self.tmp, "soak-origin", ORIGIN_BLOCK.format(www=www))
        self.services.append(ng)
        st, body = harness.http_get(ng.url + "/1k")
        assert st == 200 and len(body) == 1024
        return ng

    def case_fetch(self):
        n = self.count("fetch")
        ng = self.origin()
        log("== fetch: %s fetches of a loopback nginx, 64 at once" % f"{n:,}")
        r = run_lua(self.ah, "fetch.lua", [ng.url, n, 64], timeout=7200)
        r["conns_max"] = 64
        fs_ = r.get("fetch_stats", {})
        self.row("fetch", n, r, note="Answers: %s. fetch.stats() at the end: sockets=%s, stale_fds=%s, idle_handles=%s." % (
            compact(r.get("statuses", {})), fs_.get("sockets"), fs_.get("stale_fds"), fs_.get("idle_handles")))

    def case_db(self):
        n = self.count("db")
        pg = Postgres(self.tmp)
        self.services.append(pg)
        log("== db: %s queries through db.pool{size = 8}, 64 at once" % f"{n:,}")
        r = run_lua(self.ah, "db.lua", [pg.dsn, n, 8], timeout=3600)
        self.row("db", n, r, note="Pool at the end: %s." % compact(r.get("pool_end", {})))

    def case_server(self):
        n = self.count("server")
        steps = 10
        per = n // steps
        port = free_port()
        logpath = os.path.join(self.tmp, "server.log")
        logf = open(logpath, "w")
        srv = subprocess.Popen(NICE + [self.ah, str(CASES_DIR / "server.lua"), str(port)], cwd=ROOT,
                               stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
        url = "http://127.0.0.1:%d" % port

        class Stop:
            def stop(self):
                if srv.poll() is None:
                    os.killpg(srv.pid, signal.SIGTERM)
                    try:
                        srv.wait(15)
                    except subprocess.TimeoutExpired:
                        os.killpg(srv.pid, signal.SIGKILL)
                        srv.wait()
                logf.close()
        self.services.append(Stop())
        if not wait_port(port, 30, srv):
            raise RuntimeError("server did not listen: " + open(logpath).read()[-1000:])
        # the nice wrapper execs asynchost: srv.pid is the server itself
        pid = srv.pid
        log("== server: %s requests with wrk -t1 -c64 in %d steps of %s (the server measured from outside)"
            % (f"{n:,}", steps, f"{per:,}"))

        def settle_fds(want, secs=10):
            """Wait for the closed wrk connections to be closed by the server."""
            deadline = time.time() + secs
            while time.time() < deadline:
                if proc_fds(pid) <= want:
                    break
                time.sleep(0.1)
            return proc_fds(pid)

        def checkpoint(done):
            return {"rss": proc_status_kb(pid, "VmRSS"), "hwm": proc_status_kb(pid, "VmHWM"),
                    "fds": proc_fds(pid), "done": done, "live": stats()}

        def stats():
            st, body = harness.http_get(url + "/stats")
            t = json.loads(body)
            t["http.conn"] = t.get("http.conn", 0) - 1  # the /stats request's own
            t.pop("tasks", None)  # the /stats handler's own
            return {k: v for k, v in t.items() if v}

        total = {"requests": 0, "non2xx": 0, "errors": 0}

        def wrk(count):
            done = os.path.join(self.tmp, "wrk.done")
            if os.path.exists(done):
                os.unlink(done)
            env = dict(os.environ, SOAK_REQUESTS=str(count), SOAK_DONE=done)
            argv = NICE + ["wrk", "-t1", "-c64", "-d3600s", "-s", str(CASES_DIR / "wrk.lua"), url]
            w = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            while w.poll() is None and not os.path.exists(done):
                time.sleep(0.02)
            if w.poll() is None:
                w.send_signal(signal.SIGINT)
            out = w.communicate(timeout=60)[0]
            p = subprocess.CompletedProcess(argv, w.returncode, out)
            w = harness.parse_wrk(p.stdout) or {}
            m = re.search(r"(\d+) requests in", p.stdout)
            got = int(m.group(1)) if m else 0
            non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", p.stdout)
            sockerr = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", p.stdout)
            if p.returncode != 0 or not got:
                raise RuntimeError("wrk: " + p.stdout[-800:])
            total["requests"] += got
            total["non2xx"] += int(non2xx.group(1)) if non2xx else 0
            total["errors"] += sum(int(x) for x in sockerr.groups()) if sockerr else 0
            return got, w.get("rps", 0)

        fds0 = proc_fds(pid)
        wrk(max(1000, per // 10))  # warm-up
        total.update(requests=0, non2xx=0, errors=0)
        fds_base = settle_fds(fds0)
        base = checkpoint(0)
        r = {"fds0": fds0, "base": base}
        t0 = time.time()
        for step in range(1, steps + 1):
            got, rps = wrk(per)
            settle_fds(fds_base)
            log("   step %d/%d: %s requests (%.0f req/s), server VmRSS %d kB, VmHWM %d kB, fds %d" % (
                step, steps, f"{total['requests']:,}", rps, proc_status_kb(pid, "VmRSS"),
                proc_status_kb(pid, "VmHWM"), proc_fds(pid)))
            if step == 1:
                r["at10"] = checkpoint(total["requests"])
        r["at100"] = checkpoint(total["requests"])
        r["wall"] = time.time() - t0
        r["ok"] = total["non2xx"] == 0 and total["errors"] == 0 and srv.poll() is None
        self.row("server", total["requests"], r, note="wrk: %d non-2xx, %d socket errors." % (
            total["non2xx"], total["errors"]))


def conns(checkpoint):
    """Open connections as asynchost.stats() counts them (fetch sockets,
    db connections, server connections, busy or idle)."""
    live = checkpoint.get("live") or {}
    return sum(v for k, v in live.items() if k.split(".")[-1] in ("socket", "conn"))


def compact(d):
    return ", ".join("%s=%s" % (k, d[k]) for k in sorted(d)) if d else "-"


def kb(v):
    return "%.1f MB" % (v / 1024)


def table(rows):
    head = ["case", "count", "peak RSS @10%", "peak RSS @100%", "growth", "RSS @10%", "RSS @100%",
            "fds base/end", "result"]
    lines = [head]
    for r in rows:
        lines.append([r["case"], f"{r['n']:,}", kb(r["hwm10"]), kb(r["hwm100"]), "%+.1f%%" % r["growth"],
                      kb(r["rss10"]), kb(r["rss100"]), "%d/%d" % (r["fds_base"], r["fds_end"]),
                      "PASS" if r["pass"] else "FAIL: " + r["why"]])
    return lines


def text_table(lines):
    w = [max(len(l[i]) for l in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(l)).rstrip() for l in lines)


def md_table(lines):
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "|".join("---" for _ in lines[0]) + "|"]
    out += ["| " + " | ".join(l) + " |" for l in lines[1:]]
    return "\n".join(out)


def write_md(rows, args, started, ah):
    if os.environ.get("SOAK_REV"):  # bench/soak --rev: a clean export
        rev, dirty = os.environ["SOAK_REV"][:7], False
    else:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "host", "bindings", "lua"],
                               cwd=ROOT).returncode != 0
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    md = ["# Soak results", "",
          "`%s` — %s, rev %s%s, %s, %d cores (%s), scale %g." % (
              os.environ.get("SOAK_COMMAND", "bench/soak"), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
              rev, " + uncommitted edits" if dirty else "", platform.platform(), os.cpu_count(), cpu,
              args.scale), "",
          "Peak RSS is VmHWM (the process's high-water mark) when 10 % and when 100 % of",
          "the count are done; the rule is growth ≤ %g %% and the open descriptors back" % GROWTH_MAX,
          "to the base count (taken after a warm-up that opens the keep-alive / pool",
          "connections) at the end: exactly as many once the connections",
          "`asynchost.stats()` counts are taken off, and no more of those than at the",
          "base or than the workload keeps busy at once (a keep-alive connection that a",
          "cancelled fetch closed is not reopened until needed). The db",
          "case also closes its pool and must be back to the descriptors it had before",
          "the pool. The server case is measured from outside, after each of wrk's ten",
          "steps (each a new wrk run with 64 new connections; a quarter of its requests",
          "say `Connection: close`, so wrk reconnects).", "",
          md_table(table(rows)), "", "## Details", ""]
    for r in rows:
        md.append("* **%s** — %s in %.0f s; peak RSS %d kB at 10 %%, %d kB at 100 %%; fds %s before the warm-up, "
                  "%d at the base, %d at the end%s. %s%s" % (
            r["case"], f"{r['n']:,}", r["wall"] or 0, r["hwm10"], r["hwm100"], r["fds0"], r["fds_base"], r["fds_end"],
            "" if r["fds_closed"] is None else ", %d after pool:close()" % r["fds_closed"],
            "Live objects (asynchost.stats()) at the base: %s; at the end: %s. " % (
                compact(r["live_base"]), compact(r["live_end"])) if r["live_base"] is not None else "",
            r["note"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("soak.md" if args.scale == 1 else "soak-quick.md")
    out.write_text("\n".join(md) + "\n")
    log("soak: wrote %s" % out.relative_to(ROOT))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--asynchost", required=True)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("cases", nargs="*")
    args = ap.parse_args()
    cases = args.cases or CASES
    for c in cases:
        if c not in CASES:
            ap.error("unknown case %s (cases: %s)" % (c, ", ".join(CASES)))
    s = Soak(args)

    def on_signal(sig, frame):
        s.stop_all()
        sys.exit(130)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.time()
    failed = []
    try:
        for c in cases:
            try:
                getattr(s, "case_" + c)()
            except Exception as e:  # one broken case must not stop the others
                log("   %s: FAILED: %s" % (c, e))
                failed.append(c)
            finally:
                s.stop_all()
    finally:
        s.stop_all()
        subprocess.run(["rm", "-rf", s.tmp])
    if s.rows:
        print(text_table(table(s.rows)))
        write_md(s.rows, args, started, args.asynchost)
    bad = failed + [r["case"] for r in s.rows if not r["pass"]]
    if bad:
        print("soak: FAIL: %s" % ", ".join(bad))
        return 1
    print("soak: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
