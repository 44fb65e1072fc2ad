#!/usr/bin/python3
"""test_prometheus.py - a real Prometheus scrapes a real embcached under load.

Starts embcached --metrics-listen on a free loopback port with the demo table
(embcache-demo generate, embcache import) and a shared result namespace, then
Debian's `prometheus` on another free loopback port with a temporary TSDB, a
1 s scrape and evaluation interval, a scrape job for the daemon and
deploy/prometheus/embcache-alerts.yml as its rule file. Load: a fixed number
of `embcache-demo run` passes (each a known number of gathered rows) and
result lookups (known hits and misses). Then, through Prometheus's HTTP API:

  - /api/v1/targets: the embcache target is up, its last scrape without error;
  - /api/v1/rules: group "embcache" has every alert of the file, each
    evaluated with health "ok" (no error);
  - /api/v1/query, after a scrape taken once the load stopped: the hit, miss,
    row, memory and fault series, compared with what the load did and with
    the daemon's own `embcache stats --json` read at the same point:
    embcache_client_rows_total equals the rows the demo runs gathered,
    hits + misses == rows, hits >= the warm rows, misses >= 1 (the cold
    pass), fault and page-in counters >= 1, 0 < used_bytes <= budget_bytes,
    the per-tensor and per-namespace series equal the load's counts;
  - an increase over the load's window is above 0 (Prometheus saw the
    counters move while the load ran).

Run by ctest (label integration) as
  python3 test_prometheus.py EMBCACHED EMBCACHE_CLI EMBCACHE_DEMO ALERTS_YML
Exit 0 pass, 1 fail, 77 skipped: only when the prometheus program is not
installed (Debian: apt-get install prometheus; tools/install-deps.sh).
Every process it starts is stopped by its pid, the temporary directory removed.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

# The daemons run with this test's options only, whatever /etc/embcache holds.
os.environ["EMBCACHE_CONFIG"] = ""

LOOKUPS = 20000          # per demo run: single-row gathers; then LOOKUPS/50 batches of 256
RUNS = 16                # demo runs, 0.3 s apart: about 5 s of load
NS_HITS, NS_MISSES = 7, 3
ROWS, DIM = 20000, 32


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def free_port():
    """A loopback port nobody listens on now (bound to port 0, then closed).
    A race with another process remains: callers retry on a failed start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def stop(proc, name):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        print(f"test_prometheus: {name} (pid {proc.pid}) ignored SIGTERM for 15 s; killing it")
        proc.kill()
        proc.wait()


class Env:
    def __init__(self, embcached, cli, demo, alerts):
        self.embcached, self.cli, self.demo, self.alerts = embcached, cli, demo, alerts
        self.dir = tempfile.mkdtemp(prefix="ec-prom-", dir="/tmp")
        self.sock = os.path.join(self.dir, "s")
        self.daemon = self.prom = None
        self.mport = self.pport = 0

    def run_cli(self, *args):
        r = subprocess.run([self.cli, "--socket", self.sock, *args], capture_output=True,
                           text=True, timeout=60)
        if r.returncode:
            raise Fail(f"embcache {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def start_daemon(self):
        for attempt in range(3):
            self.mport = free_port()
            log = open(os.path.join(self.dir, "daemon.log"), "w")
            self.daemon = subprocess.Popen(
                [self.embcached, "--data-dir", os.path.join(self.dir, "data"), "--socket",
                 self.sock, "--shm-size", "64M", "--metrics-listen", f"127.0.0.1:{self.mport}"],
                stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.daemon.poll() is None:
                try:
                    if http_get(f"http://127.0.0.1:{self.mport}/healthz", 1)[0] == 200 and \
                            os.path.exists(self.sock):
                        return
                except (OSError, urllib.error.URLError):
                    pass
                time.sleep(0.05)
            stop(self.daemon, "embcached")
            print(f"test_prometheus: embcached did not start on port {self.mport} "
                  f"(attempt {attempt + 1}): {open(os.path.join(self.dir, 'daemon.log')).read()}")
        raise Fail("embcached did not start with --metrics-listen (see its log above)")

    def start_prometheus(self, prometheus):
        for attempt in range(3):
            self.pport = free_port()
            cfg = os.path.join(self.dir, "prometheus.yml")
            with open(cfg, "w") as f:
                f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - {json.dumps(self.alerts)}
scrape_configs:
  - job_name: embcache
    static_configs:
      - targets: ["127.0.0.1:{self.mport}"]
""")
            log = open(os.path.join(self.dir, "prometheus.log"), "w")
            tsdb = os.path.join(self.dir, f"tsdb{attempt}")
            self.prom = subprocess.Popen(
                [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tsdb}",
                 f"--web.listen-address=127.0.0.1:{self.pport}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.prom.poll() is None:
                try:
                    if http_get(f"http://127.0.0.1:{self.pport}/-/ready", 1)[0] == 200:
                        return
                except (OSError, urllib.error.URLError):
                    pass
                time.sleep(0.1)
            stop(self.prom, "prometheus")
            print(f"test_prometheus: prometheus did not become ready on port {self.pport} "
                  f"(attempt {attempt + 1}): "
                  f"{open(os.path.join(self.dir, 'prometheus.log')).read()[-2000:]}")
        raise Fail("prometheus did not start (see its log above)")

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.pport}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            status, body = http_get(url)
        except urllib.error.HTTPError as e:
            raise Fail(f"GET {url}: HTTP {e.code}: {e.read().decode()[:500]}")
        doc = json.loads(body)
        check(status == 200 and doc.get("status") == "success", f"GET {url}: {body[:500]}")
        return doc["data"]

    def query(self, expr, at=None):
        """The value of an instant query that must give exactly one series."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        res = data["result"]
        check(data["resultType"] == "vector" and len(res) == 1,
              f"query {expr}: want one series, got {json.dumps(res)[:500]}")
        return float(res[0]["value"][1])

    def close(self):
        stop(self.prom, "prometheus")
        stop(self.daemon, "embcached")
        shutil.rmtree(self.dir, ignore_errors=True)


def stats(env):
    return json.loads(env.run_cli("stats", "--json"))


def main():
    if len(sys.argv) != 5:
        print("usage: test_prometheus.py EMBCACHED EMBCACHE_CLI EMBCACHE_DEMO ALERTS_YML",
              file=sys.stderr)
        return 2
    prometheus = shutil.which("prometheus")
    if not prometheus:
        print("test_prometheus: the prometheus program is not installed "
              "(apt-get install prometheus, or tools/install-deps.sh): skipped")
        return 77
    env = Env(*[os.path.abspath(a) for a in sys.argv[1:]])
    try:
        env.start_daemon()
        npy = os.path.join(env.dir, "word_embeddings.npy")
        subprocess.run([env.demo, "generate", "--out", npy, "--rows", str(ROWS), "--dim",
                        str(DIM)], check=True, capture_output=True, timeout=60)
        env.run_cli("import", "--model", "demo", "--version", "1", npy)
        env.run_cli("results", "create", "promns", "--shared")
        env.run_cli("results", "put", "promns", "k", "--value", "v")
        env.start_prometheus(prometheus)
        print(f"test_prometheus: embcached metrics on 127.0.0.1:{env.mport}, "
              f"prometheus on 127.0.0.1:{env.pport}")

        # The first scrape, before any load.
        deadline = time.monotonic() + 20
        while not env.api("query", query='up{job="embcache"} == 1')["result"]:
            check(time.monotonic() < deadline, "prometheus did not scrape embcached in 20 s")
            time.sleep(0.2)

        # The load: result lookups with known outcomes, then RUNS demo passes
        # (the first faults the table in; the last is what the scrape awaited
        # below must include).
        t_load0 = time.time()
        for _ in range(NS_HITS):
            env.run_cli("results", "get", "promns", "k")
        for _ in range(NS_MISSES):
            r = subprocess.run([env.cli, "--socket", env.sock, "results", "get", "promns",
                                "absent"], capture_output=True, timeout=60)
            check(r.returncode == 4, f"results get of an absent key: exit {r.returncode}")
        info = None
        for i in range(RUNS):
            r = subprocess.run([env.demo, "run", "--socket", env.sock, "--version", "1",
                                "--lookups", str(LOOKUPS)], capture_output=True, text=True,
                               timeout=120)
            check(r.returncode == 0, f"embcache-demo run: exit {r.returncode}: {r.stderr}")
            if info is None:
                info = re.search(r"(\d+) partitions of (\d+) rows", r.stdout)
                check(info is not None, f"embcache-demo run printed no table shape: {r.stdout}")
            time.sleep(0.3)
        t_load1 = time.time()
        parts = int(info.group(1))
        rows_per_run = parts + LOOKUPS + (LOOKUPS // 50) * 256 + 3
        want_rows = RUNS * rows_per_run
        warm_rows = RUNS * (LOOKUPS + (LOOKUPS // 50) * 256)
        print(f"test_prometheus: load: {RUNS} demo runs, {want_rows} rows "
              f"({parts} partitions), {t_load1 - t_load0:.1f} s")

        # The daemon's own counts, once every client has gone: what Prometheus
        # must show after its next scrape.
        deadline = time.monotonic() + 10
        while True:
            s = stats(env)
            if s["client_rows"] >= want_rows or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        check(s["client_rows"] == want_rows,
              f"embcache stats: client_rows {s['client_rows']}, the load gathered {want_rows}")
        deadline = time.monotonic() + 20
        while True:
            v = env.api("query", query="embcache_client_rows_total")["result"]
            n = env.api("query", query="sum(embcache_namespace_hits_total) + "
                                       "sum(embcache_namespace_misses_total)")["result"]
            if v and float(v[0]["value"][1]) == want_rows and n and \
                    float(n[0]["value"][1]) == NS_HITS + NS_MISSES:
                break
            check(time.monotonic() < deadline,
                  f"prometheus 20 s after the load: embcache_client_rows_total {v} (want "
                  f"{want_rows}), namespace lookups {n} (want {NS_HITS + NS_MISSES})")
            time.sleep(0.25)

        # The target.
        tg = [t for t in env.api("targets")["activeTargets"]
              if t["labels"].get("job") == "embcache"]
        check(len(tg) == 1 and tg[0]["health"] == "up" and not tg[0]["lastError"],
              f"targets: {json.dumps(tg)[:800]}")
        check(env.query('up{job="embcache"}') == 1, "up{job=embcache} is not 1")

        # The series: hits, misses, rows, memory, faults.
        t = time.time()
        hits = env.query("embcache_client_hit_rows_total", t)
        misses = env.query("embcache_client_miss_rows_total", t)
        rows = env.query("embcache_client_rows_total", t)
        check(rows == want_rows, f"rows {rows}, want {want_rows}")
        check(hits + misses == rows, f"hits {hits} + misses {misses} != rows {rows}")
        check(hits >= warm_rows, f"hits {hits} < the {warm_rows} warm rows gathered")
        check(misses >= 1, f"misses {misses}: the first (cold) pass missed")
        check(hits == s["client_hit_rows"] and misses == s["client_miss_rows"],
              f"prometheus hits {hits}/misses {misses}, embcache stats "
              f"{s['client_hit_rows']}/{s['client_miss_rows']}")
        used = env.query("embcache_used_bytes", t)
        budget = env.query("embcache_budget_bytes", t)
        check(ROWS * DIM * 4 <= used <= budget,
              f"used_bytes {used}: not between the table's {ROWS * DIM * 4} and budget {budget}")
        faults = env.query("embcache_fault_partitions_total", t)
        fault_reqs = env.query("embcache_fault_requests_total", t)
        page_ins = env.query("embcache_page_ins_total", t)
        check(1 <= faults <= parts, f"fault_partitions_total {faults}, want 1..{parts}")
        check(fault_reqs >= 1 and page_ins >= faults,
              f"fault_requests_total {fault_reqs}, page_ins_total {page_ins}")
        check(env.query("embcache_inflight_reads", t) == 0, "reads still in flight at rest")
        check(faults == s["fault_partitions"], f"faults {faults} vs stats {s['fault_partitions']}")
        lab = '{model="demo",version="1",tensor="word_embeddings"}'
        served = env.query("embcache_tensor_rows_served_total" + lab, t)
        thits = env.query("embcache_tensor_hits_total" + lab, t)
        check(served == want_rows and warm_rows <= thits <= served,
              f"tensor rows_served {served} (want {want_rows}), hits {thits}")
        nl = f'{{namespace="promns",uid="{os.getuid()}"}}'
        nh = env.query("embcache_namespace_hits_total" + nl, t)
        nm = env.query("embcache_namespace_misses_total" + nl, t)
        check(nh == NS_HITS and nm == NS_MISSES,
              f"namespace hits {nh} misses {nm}, want {NS_HITS} and {NS_MISSES}")
        # While the load ran, Prometheus saw the counters move.
        win = max(3, int(t_load1 - t_load0))
        moved = env.query(f"increase(embcache_client_hit_rows_total[{win}s])", t_load1)
        check(moved > 0, f"increase of hits over the {win} s of the load: {moved}")
        print(f"test_prometheus: hits {hits:.0f}, misses {misses:.0f}, rows {rows:.0f}, "
              f"used {used:.0f} B of {budget:.0f}, faults {faults:.0f}, page-ins {page_ins:.0f}, "
              f"hits over the load's {win} s {moved:.0f}")

        # The alert rules: every alert of the file loaded, evaluated, healthy.
        with open(env.alerts) as f:
            want_alerts = set(re.findall(r"^\s*-\s*alert:\s*(\S+)", f.read(), re.M))
        check(want_alerts, f"no alerts found in {env.alerts}")
        deadline = time.monotonic() + 20
        while True:
            groups = env.api("rules")["groups"]
            rules = [r for g in groups if g["name"] == "embcache" for r in g["rules"]]
            names = {r["name"] for r in rules if r["type"] == "alerting"}
            bad = [(r["name"], r["health"], r.get("lastError", "")) for r in rules
                   if r["health"] != "ok"]
            if names == want_alerts and not bad:
                break
            check(time.monotonic() < deadline,
                  f"rules after 20 s: missing {sorted(want_alerts - names)}, "
                  f"not healthy {bad[:5]}")
            time.sleep(0.5)
        print(f"test_prometheus: {len(rules)} alert rules of group embcache loaded, all healthy")
        print("test_prometheus: PASS")
        return 0
    except Fail as e:
        print(f"test_prometheus: FAIL: {e}", file=sys.stderr)
        for name in ("daemon.log", "prometheus.log"):
            p = os.path.join(env.dir, name)
            if os.path.exists(p):
                print(f"--- {name} (tail) ---\n{open(p).read()[-1500:]}", file=sys.stderr)
        return 1
    finally:
        env.close()


if __name__ == "__main__":
    sys.exit(main())
