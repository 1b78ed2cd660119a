#!/usr/bin/env python3
"""crmkit against PocketBase on one machine, same data, same load generator.

Run through run.sh (it installs wrk and PocketBase and builds crmkit --release).
Usage: bench.py CRMKIT_BIN POCKETBASE_BIN [--rows N] [--runs N] [--seconds S] [--smoke]
Writes tests/bench/results/latest.json and prints a table of medians.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Conn:
    """One keep-alive HTTP connection per thread."""

    local = threading.local()

    def __init__(self, port):
        self.port = port

    def request(self, method, path, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else None
        h = {"Content-Type": "application/json"} if data else {}
        h.update(headers or {})
        for attempt in (1, 2):
            c = getattr(Conn.local, "c%d" % self.port, None)
            reused = c is not None
            if c is None:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                setattr(Conn.local, "c%d" % self.port, c)
            try:
                c.request(method, path, body=data, headers=h)
                r = c.getresponse()
                return r.status, r.read().decode()
            except (http.client.HTTPException, ConnectionError):
                setattr(Conn.local, "c%d" % self.port, None)
                # A kept-alive connection the server closed while it sat
                # idle (crmkit closes them after 30 s): once more, anew.
                if not (reused and attempt == 1):
                    raise


def wait_http(port, path, timeout=60):
    start = time.time()
    while time.time() - start < timeout:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return time.time() - start
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError("no answer on port %d" % port)


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


class Crmkit:
    name = "crmkit"

    def __init__(self, binary, data):
        self.binary, self.data = binary, data
        self.proc = None

    def start(self):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRMKIT_")}
        env.update({"CRMKIT_LIMIT_CONTACTS": "10000000", "CRMKIT_LIMIT_COMPANIES": "10000000", "CRMKIT_LIMIT_DEALS": "10000000", "CRMKIT_LOG": "warn", "NO_COLOR": "1"})
        self.log = open(os.path.join(self.data, "server.log"), "a")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--bind", "127.0.0.1:%d" % self.port, "--database-url", "sqlite://%s/crmkit.db?mode=rwc" % self.data],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        return wait_http(self.port, "/readyz")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def login(self):
        self.token = self.sign_in("bench@example.com")
        # W1 writes into a workspace of its own (a second account), so the
        # seeded 100k that W2-W5 read stay the same in every run.
        self.w1_token = self.sign_in("bench-w1@example.com")

    def sign_in(self, email):
        conn = Conn(self.port)
        conn.request("POST", "/auth/request", {"email": email})
        code = None
        for _ in range(200):
            with open(os.path.join(self.data, "server.log")) as f:
                m = re.findall(r"LOCAL-MAIL to=%s sign-in code=(\d{6})" % re.escape(email), f.read())
            if m:
                code = m[-1]
                break
            time.sleep(0.05)
        st, body = conn.request("POST", "/auth/verify?format=json", {"email": email, "code": code, "token_name": "bench"})
        assert st == 201, body
        return "Bearer " + json.loads(body)["data"]["token"]

    def headers(self):
        return {"Authorization": self.token}

    def create(self, conn, row):
        body = {"name": row["name"], "email": row["email"], "stage": row["stage"], "custom": {"amount_cents": row["amount_cents"]}}
        st, text = conn.request("POST", "/contacts?format=json", body, self.headers())
        assert st == 201, text
        return json.loads(text)["data"]["id"]

    get_prefix = "/contacts/"
    list_path = "/contacts?stage=lead&custom.amount_cents=gte:500000&sort=-created_at&limit=50"
    search_path = "/contacts?search=acme&limit=50"
    create_path = "/contacts"
    ready = "/readyz"

    def walk(self, conn):
        n, cursor = 0, None
        while True:
            path = "/contacts?limit=200" + ("&cursor=" + urllib.parse.quote(cursor) if cursor else "")
            st, text = conn.request("GET", path + "&format=json", None, self.headers())
            v = json.loads(text)
            n += len(v["data"])
            cursor = v["next_cursor"]
            if not cursor:
                return n


class PocketBase:
    name = "pocketbase"

    def __init__(self, binary, data):
        self.binary, self.data = binary, data
        self.proc = None
        subprocess.run([binary, "superuser", "upsert", "bench@example.com", "bench-password-123", "--dir", data], check=True, stdout=subprocess.DEVNULL)

    def start(self):
        self.port = free_port()
        self.proc = subprocess.Popen([self.binary, "serve", "--http", "127.0.0.1:%d" % self.port, "--dir", self.data],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return wait_http(self.port, "/api/health")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def login(self):
        conn = Conn(self.port)
        st, body = conn.request("POST", "/api/collections/_superusers/auth-with-password", {"identity": "bench@example.com", "password": "bench-password-123"})
        assert st == 200, body
        self.token = json.loads(body)["token"]
        self.w1_token = self.token
        # W1 writes into a second collection with the same fields and
        # indexes, so the seeded 100k that W2-W5 read stay the same.
        for name in ("contacts", "contacts_w1"):
            self.collection(conn, name)

    def collection(self, conn, name):
        st, _ = conn.request("GET", "/api/collections/" + name, None, self.headers())
        if st == 200:
            return
        fields = [
            {"name": "name", "type": "text"},
            {"name": "email", "type": "email"},
            {"name": "stage", "type": "text"},
            {"name": "amount_cents", "type": "number"},
            {"name": "created", "type": "autodate", "onCreate": True, "onUpdate": False},
            {"name": "updated", "type": "autodate", "onCreate": True, "onUpdate": True},
        ]
        spec = {"name": name, "type": "base", "fields": fields,
                "indexes": ["CREATE UNIQUE INDEX idx_%s_email ON %s (email)" % (name, name), "CREATE INDEX idx_%s_created ON %s (created, id)" % (name, name)]}
        st, body = conn.request("POST", "/api/collections", spec, self.headers())
        assert st == 200, body

    def headers(self):
        return {"Authorization": self.token}

    def create(self, conn, row):
        st, text = conn.request("POST", "/api/collections/contacts/records", row, self.headers())
        assert st == 200, text
        return json.loads(text)["id"]

    get_prefix = "/api/collections/contacts/records/"
    list_path = "/api/collections/contacts/records?filter=" + urllib.parse.quote("(stage='lead' && amount_cents>=500000)") + "&sort=-created&perPage=50&skipTotal=1"
    search_path = "/api/collections/contacts/records?filter=" + urllib.parse.quote("(name~'acme' || email~'acme')") + "&perPage=50&skipTotal=1"
    create_path = "/api/collections/contacts_w1/records"
    ready = "/api/health"

    def walk(self, conn):
        n, page = 0, 1
        while True:
            st, text = conn.request("GET", "/api/collections/contacts/records?perPage=200&skipTotal=1&sort=id&page=%d" % page, None, self.headers())
            items = json.loads(text)["items"]
            n += len(items)
            if len(items) < 200:
                return n
            page += 1


class Ceiling:
    """axum + one SQLite primary-key SELECT on crmkit's own database file."""

    name = "ceiling"

    def __init__(self, binary, db_file):
        self.binary, self.db_file = binary, db_file
        self.proc = None

    def start(self):
        self.port = free_port()
        self.proc = subprocess.Popen([self.binary, self.db_file, str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return wait_http(self.port, "/readyz")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def hyperfine(commands, env):
    """Median wall time in ms of each command (hyperfine, warm, 30+ runs)."""
    out = os.path.join(tempfile.mkdtemp(prefix="crmkit-hf-"), "hf.json")
    e = dict(os.environ)
    e.update(env)
    subprocess.run(["hyperfine", "-N", "--warmup", "5", "--min-runs", "30", "--export-json", out] + commands,
                   env=e, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return [r["median"] * 1000 for r in json.load(f)["results"]]


def dataset(n):
    for i in range(n):
        acme = i % 100 == 0
        yield {
            "name": ("Acme Person %d" % i) if acme else ("Person %d" % i),
            "email": ("p%d@acme.com" % i) if acme else ("p%d@example%d.com" % (i, i % 50)),
            "stage": "lead" if i % 5 < 2 else ("customer" if i % 5 == 2 else "prospect"),
            "amount_cents": (i * 7919) % 1000000,
        }


def seed(target, n):
    conn = Conn(target.port)
    rows = list(dataset(n))
    start = time.time()
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda r: target.create(conn, r), rows, chunksize=64))
    return ids, time.time() - start


def wrk(script, port, seconds, env):
    """One wrk run: 1 thread, 8 connections, for `seconds`, or until the script
    creates DONE_FILE (W1's fixed request count), when it is ended with SIGINT."""
    e = dict(os.environ)
    e.update(env)
    done = os.path.join(tempfile.mkdtemp(prefix="crmkit-wrk-"), "done")
    e["DONE_FILE"] = done
    proc = subprocess.Popen(["wrk", "-t1", "-c8", "-d%ds" % seconds, "--timeout", "10s", "-s", os.path.join(HERE, script), "http://127.0.0.1:%d" % port],
                            env=e, stdout=subprocess.PIPE, text=True)
    while proc.poll() is None and not os.path.exists(done):
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out = proc.communicate()[0]
    assert proc.returncode == 0, out
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    v = json.loads(line)
    v["rps"] = v["requests"] / (v["duration_us"] / 1e6)
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("crmkit")
    ap.add_argument("pocketbase")
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--w6-rows", type=int, default=1000000)
    ap.add_argument("--ceiling", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "target", "release", "crmkit-bench-ceiling"))
    ap.add_argument("--creates", type=int, default=20000, help="W1 requests per run")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.rows, a.runs, a.seconds, a.w6_rows, a.creates = 500, 1, 1, 2000, 200
    work = tempfile.mkdtemp(prefix="crmkit-bench-")
    targets = []
    for cls, binary in ((Crmkit, a.crmkit), (PocketBase, a.pocketbase)):
        d = os.path.join(work, cls.name)
        os.makedirs(d)
        targets.append(cls(binary, d))
    results = {t.name: {} for t in targets}
    ids = {}
    try:
        for t in targets:
            t.start()
            t.login()
            ids[t.name], took = seed(t, a.rows)
            results[t.name]["seed_rows_per_s"] = a.rows / took
            # The seeded 100k alone, WAL included (W1 later adds its own rows).
            results[t.name]["db_bytes_per_100k"] = dir_size(t.data) / max(1, a.rows) * 100000
            path = os.path.join(t.data, "ids.txt")
            with open(path, "w") as f:
                f.write("\n".join(ids[t.name]))
            print("seeded %s: %d rows in %.1fs" % (t.name, a.rows, took), file=sys.stderr)
        samples = {t.name: {k: [] for k in ("W1", "W2", "W3", "W4", "W5")} for t in targets}
        ceiling = Ceiling(a.ceiling, os.path.join(targets[0].data, "crmkit.db"))
        ceiling.start()
        ceiling_w2 = []
        cli = {}
        for run in range(a.runs):
            ceiling_w2.append(wrk("get.lua", ceiling.port, a.seconds, {"IDS_FILE": os.path.join(targets[0].data, "ids.txt"), "PATH_PREFIX": "/contacts/", "TOKEN": "-"}))
            for t in targets:  # interleaved run by run
                env = {"TOKEN": t.headers()["Authorization"], "IDS_FILE": os.path.join(t.data, "ids.txt")}
                samples[t.name]["W1"].append(wrk("create.lua", t.port, 600, dict(env, TOKEN=t.w1_token, PATH_FIXED=t.create_path, RUN="r%d" % run, REQUESTS=str(a.creates))))
                samples[t.name]["W2"].append(wrk("get.lua", t.port, a.seconds, dict(env, PATH_PREFIX=t.get_prefix)))
                samples[t.name]["W3"].append(wrk("path.lua", t.port, a.seconds, dict(env, PATH_FIXED=t.list_path)))
                samples[t.name]["W4"].append(wrk("path.lua", t.port, a.seconds, dict(env, PATH_FIXED=t.search_path)))
                start = time.time()
                n = t.walk(Conn(t.port))
                samples[t.name]["W5"].append({"seconds": time.time() - start, "rows": n})
        ceiling.stop()
        results["ceiling"] = {"W2_rps": statistics.median(r["rps"] for r in ceiling_w2),
                              "W2_p50_ms": statistics.median(r["p50_us"] for r in ceiling_w2) / 1000}
        # CLI wall time: the client against curl of the same request.
        ck = targets[0]
        url = "http://127.0.0.1:%d" % ck.port
        token = ck.token.split(" ", 1)[1]
        env = {"CRMKIT_URL": url, "CRMKIT_TOKEN": token, "CRMKIT_KEYRING": "off", "CRMKIT_CONFIG_DIR": tempfile.mkdtemp(prefix="crmkit-cli-")}
        version_ms, list_ms, curl_ms = hyperfine(
            [a.crmkit + " --version", a.crmkit + " contacts list --limit 50",
             "curl -sf -H 'Authorization: Bearer %s' %s/contacts?limit=50" % (token, url)], env)
        cli = {"version_ms": version_ms, "contacts_list_ms": list_ms, "curl_ms": curl_ms}
        for t in targets:
            results[t.name]["peak_rss_mib"] = vm_hwm_kib(t.proc.pid) / 1024
            t.stop()
            colds = []
            for _ in range(3):
                colds.append(t.start())
                t.stop()
            results[t.name]["cold_start_s"] = statistics.median(colds)
            for w, runs in samples[t.name].items():
                if w == "W5":
                    results[t.name]["W5_walk_s"] = statistics.median(r["seconds"] for r in runs)
                else:
                    results[t.name][w + "_rps"] = statistics.median(r["rps"] for r in runs)
                    results[t.name][w + "_p50_ms"] = statistics.median(r["p50_us"] for r in runs) / 1000
                    results[t.name][w + "_p99_ms"] = statistics.median(r["p99_us"] for r in runs) / 1000
                    results[t.name][w + "_errors"] = sum(r["errors"] for r in runs)
        # W6: the same search on a 1,000,000-contact workspace (crmkit alone).
        d = os.path.join(work, "crmkit-w6")
        os.makedirs(d)
        big = Crmkit(a.crmkit, d)
        targets.append(big)
        big.start()
        big.login()
        _, took = seed(big, a.w6_rows)
        print("seeded w6: %d rows in %.1fs" % (a.w6_rows, took), file=sys.stderr)
        w6 = [wrk("path.lua", big.port, a.seconds, {"TOKEN": big.token, "PATH_FIXED": big.search_path}) for _ in range(a.runs)]
        big.stop()
        w6_result = {"rows": a.w6_rows, "p50_ms": statistics.median(r["p50_us"] for r in w6) / 1000,
                     "p99_ms": statistics.median(r["p99_us"] for r in w6) / 1000,
                     "rps": statistics.median(r["rps"] for r in w6), "errors": sum(r["errors"] for r in w6)}
    finally:
        for t in targets + [c for c in [locals().get("ceiling")] if c]:
            if t.proc and t.proc.poll() is None:
                t.proc.kill()
    c, p = results["crmkit"], results["pocketbase"]
    rows = []
    for key in sorted(c):
        cv, pv = c[key], p.get(key)
        # Times, memory and disk are better low; rates (`_rps`, `_per_s`) high.
        better_low = key.endswith("_ms") or (key.endswith("_s") and not key.endswith("_per_s")) or key.startswith("peak") or key.startswith("db_")
        ratio = (pv / cv if better_low else cv / pv) if pv and cv else float("nan")
        rows.append((key, cv, pv, ratio))
    print("%-22s %14s %14s %10s" % ("metric", "crmkit", "pocketbase", "advantage"))
    for key, cv, pv, ratio in rows:
        print("%-22s %14.2f %14.2f %9.2fx" % (key, cv, pv or 0, ratio))
    cr = results["ceiling"]
    print("%-22s %14.2f %14s %9.2fx  (crmkit W2 / ceiling W2)" % ("ceiling W2_rps", cr["W2_rps"], "", c["W2_rps"] / cr["W2_rps"]))
    print("W6 search %d rows: p50 %.2f ms, p99 %.2f ms, %.0f req/s, %d errors" % (w6_result["rows"], w6_result["p50_ms"], w6_result["p99_ms"], w6_result["rps"], w6_result["errors"]))
    print("CLI: --version %.2f ms; contacts list %.2f ms; curl %.2f ms (%.2fx curl)" % (cli["version_ms"], cli["contacts_list_ms"], cli["curl_ms"], cli["contacts_list_ms"] / cli["curl_ms"]))
    results["w6"] = w6_result
    results["cli"] = cli
    meta = {"rows": a.rows, "runs": a.runs, "seconds": a.seconds, "nproc": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = os.path.join(HERE, "results", "smoke.json" if a.smoke else "latest.json")
    with open(out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    print("raw: " + out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
