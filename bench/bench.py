#!/usr/bin/env python3
"""glmgate benchmarks: glmgate against direct-to-mock and a plain nginx reverse proxy, in one
run, interleaved. Python standard library only; every process it starts is stopped by PID.

    bench/run [--quick] [--reps N] [--duration S]      the table (bench/results/)
    bench/run --with-litellm                             the table, with LiteLLM proxy as a target
    bench/run --soak MINUTES                             RSS over a constant stream load
    bench/run --streams N                                N slow streams open at once
    bench/run --pgo                                      the table, with a PGO-built glmgate as a target
    bench/run --with-hyper                               the table, with a plain hyper proxy as a target
    bench/run --with-raw                                 the table, with a proxy of no HTTP library as a target
    bench/run --https                                    the table, with nginx and glmgate in front of an HTTPS mock
    bench/run --loadgen wrk                              the table's closed loop driven by Debian's wrk
    bench/instructions [--scenario S] [--target T]       instructions per request (callgrind)
    bench/instructions --binary target/profiling/glmgate  the same, with symbols for callgrind_annotate
    bench/bench.py --train BINARY                        a profiling run for scripts/build-pgo
    bench/bench.py --tls-check BINARY                    TLS to the upstream works (scripts/build-pgo)

Everything targets 127.0.0.1 only, and every loop is bounded in count and time.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
GLMGATE = os.path.join(RELEASE, "glmgate")
LOAD = os.path.join(RELEASE, "glmgate-load")
HYPER = os.path.join(RELEASE, "hyper-proxy")
RAW = os.path.join(RELEASE, "raw-proxy")
# The reference proxies' names in reports, by their row names.
REFERENCE_NAMES = {"hyper": "hyper-proxy", "hyper-pc": "hyper-proxy --per-core", "raw": "raw-proxy"}
WRK_SCRIPT = os.path.join(ROOT, "bench", "wrk.lua")
RESULTS = os.path.join(ROOT, "bench", "results")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
LITELLM_VENV = os.path.join(ROOT, "bench", ".litellm")
LITELLM_PIN = "litellm[proxy]==1.100.5"
LITELLM_KEY = "sk-bench-litellm"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def install(*tools):
    """Installs from Debian whichever of `tools` (package and command alike) is missing."""
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        log(f"installing {' '.join(missing)} from Debian")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_tools(need_valgrind=False, need_nginx=True, need_wrk=False):
    install(*(["nginx"] if need_nginx else []), *(["valgrind"] if need_valgrind else []),
            *(["wrk"] if need_wrk else []))
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "glmgate", "-p", "glmgate-load"],
                   cwd=ROOT, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


class Procs:
    """Processes started by the benchmark; stopped by PID, always."""

    def __init__(self):
        self.procs = []

    def start(self, args, log_path, **kw):
        p = subprocess.Popen(args, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=30):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def tree(pid):
    out = [pid]
    for c in children(pid):
        out.extend(tree(c))
    return out


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / TICKS


def rss_mb(pid, field="VmRSS"):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def nginx_conf(tmp, port, mock_port, ca=None):
    """nginx as a plain reverse proxy to the mock; with `ca`, to the mock over HTTPS (nginx
    speaks HTTP/1.1 to upstreams), verifying its certificate against `ca`."""
    name = "nginx-https" if ca else "nginx"
    path = os.path.join(tmp, f"{name}.conf")
    scheme = "https" if ca else "http"
    tls = f"""
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;""" if ca else ""
    with open(path, "w") as f:
        f.write(f"""
worker_processes 2;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    client_max_body_size 64m;
    client_body_buffer_size 1m;
    location / {{
      proxy_pass {scheme}://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;{tls}
    }}
  }}
}}
""")
    return path


def make_certs(tmp):
    """A CA of the run's own and a certificate it signs for 127.0.0.1 and localhost, for the
    mock over HTTPS: paths of the CA's, the certificate's and its key's PEM files."""
    install("openssl")
    ca, ca_key = os.path.join(tmp, "ca.pem"), os.path.join(tmp, "ca-key.pem")
    cert, key, csr = (os.path.join(tmp, n) for n in ("cert.pem", "key.pem", "cert.csr"))
    ext = os.path.join(tmp, "cert.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=glmgate bench CA",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
                ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
                ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
                 "-days", "2", "-extfile", ext]):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    return ca, cert, key


def glmgate_conf(tmp, port, mock_port, kind="plain"):
    """glmgate as users run it. Kinds:
    - `plain`: one upstream key, both API formats passed through;
    - `failover`: a second account whose key always answers 500 sits in the pool next to the
      good one, its circuit breaker off, so requests that pick it fail over to the good one;
    - `openai-only` / `anthropic-only`: the upstream speaks one format, so clients of the other
      are translated;
    - `http2`: as `plain`, speaking HTTP/2 to the upstream (`upstream.http2`);
    - `pgo`: as `plain`, for the binary built by scripts/build-pgo;
    - `tls`: as `plain`, the upstream at `https://localhost:{mock_port}`, circuit breaker off
      (for `--tls-check`, where every call fails);
    - `https`: as `plain`, the upstream (the mock with `--tls-cert`) at
      `https://127.0.0.1:{mock_port}`, trusted through `upstream.ca_file` (`{tmp}/ca.pem`), the
      HTTP version left to the default (`"auto"`: HTTP/2 if the upstream chooses it by ALPN);
    - `https-http1`: as `https`, with `upstream.http2 = false`."""
    name = "glmgate" if kind == "plain" else f"glmgate-{kind}"
    path = os.path.join(tmp, f"{name}.toml")
    base = f"""
[server]
listen = "127.0.0.1:{port}"
[store]
path = "{tmp}/{name}.db"
[admin]
token = "{ADMIN_TOKEN}"
"""
    origin = f"https://localhost:{mock_port}" if kind == "tls" \
        else f"https://127.0.0.1:{mock_port}" if kind.startswith("https") else f"http://127.0.0.1:{mock_port}"
    openai = f"{origin}/api/coding/paas/v4" if kind != "anthropic-only" else ""
    anthropic = f"{origin}/api/anthropic" if kind != "openai-only" else ""
    breaker_off = """
[upstream.breaker]
failures = 1000000000
"""
    if kind == "failover":
        upstream = breaker_off + f"""
[[providers]]
name = "mock"
preset = "custom"
openai_base_url = "{openai}"
anthropic_base_url = "{anthropic}"
[[providers.accounts]]
name = "dead"
keys = ["fault-500"]
[[providers.accounts]]
name = "good"
keys = ["bench-upstream-key"]
"""
    else:
        upstream = f"""
[upstream]
preset = "custom"
openai_base_url = "{openai}"
anthropic_base_url = "{anthropic}"
keys = ["bench-upstream-key"]
""" + ("http2 = true\n" if kind == "http2" else "") \
            + (f'ca_file = "{tmp}/ca.pem"\n' if kind.startswith("https") else "") \
            + ("http2 = false\n" if kind == "https-http1" else "") + (breaker_off if kind == "tls" else "")
    with open(path, "w") as f:
        f.write(base + upstream)
    return path


ADMIN_TOKEN = "bench-admin-token"


def client_key(binary, conf):
    """A new client key for the gateway configured by `conf`."""
    return subprocess.run([binary, "keys", "create", "--name", "bench", "--config", conf],
                          check=True, capture_output=True, text=True).stdout.strip()


def scrape(port):
    """Sums of glmgate's `/metrics` series by name (metrics are on, as by default)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    sums = {}
    with urllib.request.urlopen(req, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                name = series.split("{", 1)[0]
                sums[name] = sums.get(name, 0) + float(value)
    return sums


def mock_requests(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_mock/stats", timeout=10) as r:
        return json.load(r)["requests"]


def ensure_litellm():
    """A venv under bench/ with the pinned LiteLLM proxy; created once, reused after."""
    stamp = os.path.join(LITELLM_VENV, ".pin")
    if os.path.exists(stamp) and open(stamp).read() == LITELLM_PIN:
        return
    log(f"installing {LITELLM_PIN} into {LITELLM_VENV} (once)")
    subprocess.run([sys.executable, "-m", "venv", LITELLM_VENV], check=True)
    subprocess.run([os.path.join(LITELLM_VENV, "bin", "pip"), "install", "-q", LITELLM_PIN], check=True)
    with open(stamp, "w") as f:
        f.write(LITELLM_PIN)


def litellm_conf(tmp, mock_port):
    """LiteLLM as users run it without a database: one model on the mock, a master key."""
    path = os.path.join(tmp, "litellm.yaml")
    with open(path, "w") as f:
        f.write(f"""model_list:
  - model_name: glm-4.7
    litellm_params:
      model: openai/glm-4.7
      api_base: http://127.0.0.1:{mock_port}/api/coding/paas/v4
      api_key: bench-upstream-key
litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  master_key: {LITELLM_KEY}
""")
    return path


def gateway_kind(name, api):
    """The glmgate configuration behind a target (see `glmgate_conf`); `translated` is glmgate
    in front of an upstream that speaks only the other format."""
    return {"glmgate": "plain", "failover": "failover", "http2": "http2", "pgo": "pgo",
            "https": "https", "https-http1": "https-http1",
            "translated": "anthropic-only" if api == "openai" else "openai-only"}[name]


class Rig:
    """The mock, nginx and glmgate (and LiteLLM if asked), started once for a run."""

    def __init__(self, tmp, procs, mock_args=(), glmgate_prefix=(), prefix_kind="plain", litellm=False,
                 pgo=None, gateway_bin=GLMGATE, with_nginx=True, hyper=False, raw=False,
                 loadgen="glmgate-load", https=False):
        """`glmgate_prefix`: a command the process named by `prefix_kind` runs under (a
        gateway kind, or `hyper-pc` or `raw`), e.g. valgrind;
        `pgo`: a PGO-built binary, run as one more gateway (`pgo`) configured as `plain`;
        `gateway_bin`: the binary the gateways run (the mock always runs the release build);
        `hyper`: also run `hyper-proxy` (bench/loadgen), hyper's plainest reverse proxy, as
        `hyper` (tokio's multi-threaded runtime) and `hyper-pc` (a runtime per core);
        `raw`: also run `raw-proxy` (bench/loadgen), a proxy with no HTTP library, as `raw`;
        `loadgen`: what drives the closed loop (`glmgate-load`, or `wrk`);
        `https`: also run the mock over HTTPS (a CA of the run's own), nginx in front of it as
        `nginx-https`, and glmgate as `https` and `https-http1` (see `glmgate_conf`)."""
        self.tmp, self.procs = tmp, procs
        self.mock_port, self.nginx_port, self.gg_port = free_port(), free_port(), free_port()
        self.mock = procs.start([GLMGATE, "mock", "--listen", f"127.0.0.1:{self.mock_port}", *mock_args],
                                os.path.join(tmp, "mock.log"), env={**os.environ, "GLMGATE_LOG": "warn"})
        wait_port(self.mock_port)
        self.nginx = None
        if with_nginx:
            self.nginx = procs.start(["nginx", "-c", nginx_conf(tmp, self.nginx_port, self.mock_port), "-p", tmp],
                                     os.path.join(tmp, "nginx.log"))
            wait_port(self.nginx_port)
        self.https_mock_port = None
        if https:
            ca, cert, key = make_certs(tmp)
            self.https_mock_port, self.nginx_https_port = free_port(), free_port()
            procs.start([GLMGATE, "mock", "--listen", f"127.0.0.1:{self.https_mock_port}", "--tls-cert", cert,
                         "--tls-key", key, *mock_args], os.path.join(tmp, "mock-https.log"),
                        env={**os.environ, "GLMGATE_LOG": "warn"})
            wait_port(self.https_mock_port)
            self.nginx_https = procs.start(
                ["nginx", "-c", nginx_conf(tmp, self.nginx_https_port, self.https_mock_port, ca=ca), "-p", tmp],
                os.path.join(tmp, "nginx-https.log"))
            wait_port(self.nginx_https_port)
        # name → (port, process): the reference proxies with no logic; hyper-proxy on tokio's
        # multi-threaded runtime and with a runtime per core, raw-proxy.
        self.references = {}
        refs = ((("hyper", [HYPER]), ("hyper-pc", [HYPER, "--per-core"])) if hyper else ()) \
            + ((("raw", [RAW]),) if raw else ())
        for name, cmd in refs:
            port = free_port()
            prefix = glmgate_prefix if name == prefix_kind else ()
            proc = procs.start([*prefix, *cmd, "--listen", f"127.0.0.1:{port}", "--upstream",
                                f"127.0.0.1:{self.mock_port}"], os.path.join(tmp, f"{name}.log"))
            wait_port(port)
            self.references[name] = (port, proc)
        # name → (port, client key, process)
        self.gateways = {}
        kinds = ["plain", "failover", "openai-only", "anthropic-only", "http2"] + (["pgo"] if pgo else []) \
            + (["https", "https-http1"] if https else [])
        for kind in kinds:
            port = self.gg_port if kind == "plain" else free_port()
            upstream = self.https_mock_port if kind.startswith("https") else self.mock_port
            conf = glmgate_conf(tmp, port, upstream, kind)
            binary = pgo if kind == "pgo" else gateway_bin
            key = client_key(binary, conf)
            prefix = glmgate_prefix if kind == prefix_kind else ()
            # Every gateway logs as users run it (one `info` line a request), so the rows
            # compare like with like.
            proc = procs.start([*prefix, binary, "serve", "--config", conf],
                               os.path.join(tmp, f"glmgate-{kind}.log"))
            wait_port(port, deadline=120)
            self.gateways[kind] = (port, key, proc)
        self.key, self.gg = self.gateways["plain"][1], self.gateways["plain"][2]
        # Requests sent to the plain gateway, to check against what its metrics counted.
        self.sent_plain = 0
        self.loadgen = loadgen
        self.litellm = None
        if litellm:
            # Two worker processes, as glmgate has two serving threads on this machine.
            self.litellm_port = free_port()
            self.litellm = procs.start(
                [os.path.join(LITELLM_VENV, "bin", "litellm"), "--config", litellm_conf(tmp, self.mock_port),
                 "--host", "127.0.0.1", "--port", str(self.litellm_port), "--num_workers", "2"],
                os.path.join(tmp, "litellm.log"),
                env={**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"})
            wait_port(self.litellm_port, deadline=180)

    def target(self, name, api):
        """`translated` is glmgate in front of an upstream that speaks only the other format."""
        if name in ("direct", "nginx", "nginx-https", *self.references):
            port, proc = {"direct": (self.mock_port, None), "nginx": (self.nginx_port, self.nginx),
                          **({"nginx-https": (self.nginx_https_port, self.nginx_https)} if self.https_mock_port else {}),
                          **self.references}[name]
            pid = proc.pid if proc else None
            key, gw = "bench-upstream-key", False
        elif name == "litellm":
            # LiteLLM serves the OpenAI API at /chat/completions under its own key.
            return (f"http://127.0.0.1:{self.litellm_port}/chat/completions",
                    [f"authorization: Bearer {LITELLM_KEY}", "content-type: application/json"], self.litellm.pid)
        else:
            kind = gateway_kind(name, api)
            port, key, proc = self.gateways[kind]
            pid, gw = proc.pid, True
        if api == "openai":
            path = "/v1/chat/completions" if gw else "/api/coding/paas/v4/chat/completions"
            headers = [f"authorization: Bearer {key}"]
        else:
            path = "/v1/messages" if gw else "/api/anthropic/v1/messages"
            headers = [f"x-api-key: {key}", "anthropic-version: 2023-06-01"]
        return f"http://127.0.0.1:{port}{path}", headers + ["content-type: application/json"], pid


SCENARIOS = {
    "openai": ("openai", {"model": "glm-4.7", "messages": [{"role": "user", "content": "Hello"}]}),
    "openai-stream": ("openai", {"model": "glm-4.7", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}),
    "anthropic-stream": ("anthropic", {"model": "glm-4.7", "max_tokens": 1024, "stream": True,
                                       "messages": [{"role": "user", "content": "Hello"}]}),
    "openai-100kb": ("openai", {"model": "glm-4.7", "messages": [{"role": "user", "content": "x" * 100_000}]}),
}


FAILOVER_SCENARIOS = ("openai", "openai-stream")
HTTP2_SCENARIOS = ("openai", "openai-stream")
# Over HTTPS the Anthropic stream too: Claude Code's request, in front of Z.AI as users run it.
HTTPS_SCENARIOS = ("openai", "openai-stream", "anthropic-stream")
# The targets in front of the mock over HTTPS (`Rig(https=True)`).
HTTPS_TARGETS = ("nginx-https", "https", "https-http1")
TRANSLATED_SCENARIOS = ("openai", "openai-stream", "anthropic-stream")


def body_file(tmp, scenario):
    path = os.path.join(tmp, f"{scenario}.json")
    with open(path, "w") as f:
        json.dump(SCENARIOS[scenario][1], f)
    return path


def load(url, headers, body, concurrency, duration, rate=None, requests=None, loadgen="glmgate-load"):
    if loadgen == "wrk" and not rate and not requests:
        return load_wrk(url, headers, body, concurrency, duration)
    args = [LOAD, "--url", url, "--body-file", body, "--concurrency", str(concurrency),
            "--duration", str(duration)]
    for h in headers:
        args += ["--header", h]
    if rate:
        args += ["--rate", str(rate)]
    if requests:
        args += ["--requests", str(requests)]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=duration + 600)
    return json.loads(out.stdout)


def load_wrk(url, headers, body, concurrency, duration):
    """The closed loop driven by Debian's wrk instead (`--loadgen wrk`): a cross-check of
    glmgate-load's figures with a load generator nobody here wrote. wrk has no warm-up and
    no time to first byte: the TTFB figures are its total latency."""
    threads = min(os.cpu_count() or 1, concurrency)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "-s", WRK_SCRIPT,
                          url, "--", body, *headers],
                         check=True, capture_output=True, text=True, timeout=duration + 600)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["ttfb_us"] = r["latency_us"]
    return r


def measure(rig, target, scenario, concurrency, duration, rate=None):
    url, headers, pid = rig.target(target, SCENARIOS[scenario][0])
    cpu0 = cpu_seconds(pid) if pid else 0
    up0 = mock_requests(rig.mock_port)
    r = load(url, headers, body_file(rig.tmp, scenario), concurrency, duration, rate, loadgen=rig.loadgen)
    # The CPU delta spans the warm-up too, so it is divided by every request sent.
    sent = max(r.get("sent", r["requests"]), 1)
    r["cpu_us_per_req"] = ((cpu_seconds(pid) - cpu0) * 1e6 / sent) if pid else None
    # Upstream requests per request sent (warm-up included on both sides).
    r["attempts_per_req"] = (mock_requests(rig.mock_port) - up0) / sent
    if target == "glmgate":
        rig.sent_plain += sent
    return r


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def added(reps, target, key="latency_us", q="p50"):
    """`target`'s overhead over direct: the median over repetitions of the difference
    within each repetition (both measured moments apart)."""
    return med([r[key][q] - d[key][q] for r, d in zip(reps[target], reps["direct"])])


def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"


def run_table(args):
    ensure_tools(need_wrk=args.loadgen == "wrk")
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="glmgate-bench-")
    try:
        if args.with_litellm:
            ensure_litellm()
        pgo = build_pgo() if args.pgo else None
        rig = Rig(tmp, procs, litellm=args.with_litellm, pgo=pgo, hyper=args.with_hyper,
                  raw=args.with_raw, loadgen=args.loadgen, https=args.https)
        time.sleep(1)
        idle = {"glmgate": rss_mb(rig.gg.pid), "nginx": rss_mb(rig.nginx.pid)}
        for name, (_, proc) in rig.references.items():
            idle[name] = rss_mb(proc.pid)
        if pgo:
            idle["pgo"] = rss_mb(rig.gateways["pgo"][2].pid)
        if rig.litellm:
            idle["litellm"] = rss_mb(rig.litellm.pid)
        https = HTTPS_TARGETS if args.https else ()
        idle.update({t: rss_mb(rig.target(t, "openai")[2]) for t in https})
        concurrencies = [1, 64] if args.quick else [1, 16, 64, 256]
        if args.concurrency:
            concurrencies = [int(c) for c in args.concurrency.split(",")]
        scenarios = list(SCENARIOS) if not args.only else args.only.split(",")
        rows = []
        for scenario in scenarios:
            # Extra rows: the same request through a pool with a dead account, and through
            # an upstream that speaks only the other format (translated both ways).
            targets = ["direct", "nginx", "glmgate"] + (["failover"] if scenario in FAILOVER_SCENARIOS else []) \
                + (["translated"] if scenario in TRANSLATED_SCENARIOS else []) \
                + (["http2"] if scenario in HTTP2_SCENARIOS else []) \
                + (list(HTTPS_TARGETS) if args.https and scenario in HTTPS_SCENARIOS else []) \
                + (["pgo"] if pgo else []) \
                + list(rig.references) \
                + (["litellm"] if rig.litellm and SCENARIOS[scenario][0] == "openai" else [])
            for c in concurrencies:
                reps = {t: [] for t in targets}
                for rep in range(args.reps):
                    k = rep % len(targets)
                    order = targets[k:] + targets[:k]  # rotate who goes first
                    for t in order:
                        reps[t].append(measure(rig, t, scenario, c, args.duration))
                    log(f"{scenario} c={c} rep {rep + 1}/{args.reps}: " + ", ".join(
                        f"{t} p50 {reps[t][-1]['latency_us']['p50']}us" for t in targets))
                rows.append((scenario, c, reps))
        open_loop = {}
        for t in ["direct", "nginx", "glmgate"]:
            open_loop[t] = measure(rig, t, "openai", 0, args.duration, rate=args.rate)
        watched = [("glmgate", rig.gg), ("nginx", rig.nginx), ("litellm", rig.litellm)] \
            + [(name, proc) for name, (_, proc) in rig.references.items()]
        if pgo:
            watched.append(("pgo", rig.gateways["pgo"][2]))
        peak = {t: rss_mb(p.pid, "VmHWM") for t, p in watched if p}
        peak.update({t: rss_mb(rig.target(t, "openai")[2], "VmHWM") for t in https})
        time.sleep(1.5)  # one usage flush interval: the last requests reach the metrics
        counted = scrape(rig.gg_port)
    finally:
        procs.stop_all()
    report = render(rows, open_loop, idle, peak, args)
    report += (f"\nglmgate's `/metrics` (scraped at the end): {counted.get('glmgate_requests_total', 0):,.0f} "
               f"requests counted of {rig.sent_plain:,} sent to it, "
               f"{counted.get('glmgate_rejected_total', 0):,.0f} refused, "
               f"{counted.get('glmgate_usage_records_lost_total', 0):,.0f} usage records lost.\n")
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")
    for name in (f"{stamp}.md", "latest.md"):
        with open(os.path.join(RESULTS, name), "w") as f:
            f.write(report)
    print(report)
    shutil.rmtree(tmp, ignore_errors=True)


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


def render(rows, open_loop, idle, peak, args):
    out = [f"# glmgate benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
           f"Machine: {machine()}. Load generator, mock, nginx and glmgate share these cores.",
           f"Each cell: median of {args.reps} interleaved repetitions of {args.duration} s "
           f"(closed loop, load from {args.loadgen}"
           + ("; wrk measures no time to first byte" if args.loadgen == "wrk" else "")
           + "). Latencies in µs. Overhead = target − direct in the same repetition.",
           "`failover`: glmgate with a second, dead account (its key always gets HTTP 500, circuit "
           "breaker off) next to the good one; requests that try it first are retried on the good one "
           "before the client sees a byte. Attempts/req counts the upstream requests per client request. "
           "`translated`: glmgate in front of an upstream that speaks only the other API format "
           "(OpenAI scenarios on an Anthropic-only upstream, the Anthropic scenario on an OpenAI-only one), "
           "so every request, answer and stream event is translated. "
           "`http2`: glmgate speaking HTTP/2 to the mock (`upstream.http2 = true`, h2c), many "
           "requests sharing a connection; the others speak HTTP/1.1 to it."
           + (" `pgo`: the same gateway as `glmgate`, its binary built by `scripts/build-pgo` "
              "(profile-guided optimisation, then BOLT's post-link layout, each trained by `bench/bench.py --train`) "
              "instead of `cargo build --release`."
              if "pgo" in idle else "")
           + (" `hyper`: `hyper-proxy` (bench/loadgen), the plainest reverse proxy made of the crates glmgate "
              "is built on (hyper's HTTP/1.1 server, hyper-util's pooled client, tokio's multi-threaded runtime), "
              "passing requests and answers through with no logic: what those crates cost on their own. "
              "`hyper-pc`: the same with one single-threaded runtime, listener (SO_REUSEPORT) and client "
              "pool per core, so a request never changes thread."
              if "hyper" in idle else "")
           + (" `raw`: `raw-proxy` (bench/loadgen), a reverse proxy with no HTTP library (heads parsed by "
              "httparse, bodies relayed as they arrive, their framing followed by hand), laid out as "
              "`hyper-pc`: what the same work costs without hyper."
              if "raw" in idle else "")
           + (" `litellm`: LiteLLM proxy (" + LITELLM_PIN + ", two workers, master key, no database) "
              "on the same mock, OpenAI scenarios only." if "litellm" in idle else "")
           + (" `nginx-https` and `https`: nginx, and glmgate with the default settings, in front of a second "
              "mock serving HTTPS (a certificate from a CA the run makes), as users put them in front of "
              "Z.AI's HTTPS API: nginx speaks HTTP/1.1 over TLS to it, glmgate HTTP/2, chosen by ALPN; "
              "`https-http1` is glmgate with `upstream.http2 = false`, HTTP/1.1 over TLS. Their ratios "
              "are to `nginx-https`; all three add TLS to the overhead over (plain) direct."
              if "https" in idle else ""), "",
           "| scenario | c | target | p50 | p90 | p99 | +p50 | +p99 | req/s | vs nginx req/s | CPU µs/req | +TTFB p50 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for scenario, c, reps in rows:
        for t in reps:
            rs = reps[t]
            lat = lambda q: med([r["latency_us"][q] for r in rs])
            over = lambda q: added(reps, t, q=q)
            ttfb = added(reps, t, key="ttfb_us")
            rps = med([r["rps"] for r in rs])
            # Over HTTPS, against nginx over HTTPS.
            base = reps["nginx-https" if t.startswith("https") else "nginx"]
            ratio = med([r["rps"] / n["rps"] for r, n in zip(rs, base) if n["rps"]])
            errors = sum(r["errors"] for r in rs)
            name = t + (f" ({errors} errors)" if errors else "")
            if t == "failover":
                name += f", {med([r['attempts_per_req'] for r in rs]):.2f} attempts/req"
            stream = "stream" in scenario
            out.append(f"| {scenario} | {c} | {name} | {fmt(lat('p50'))} | {fmt(lat('p90'))} | {fmt(lat('p99'))} | "
                       f"{'' if t == 'direct' else fmt(over('p50'))} | {'' if t == 'direct' else fmt(over('p99'))} | "
                       f"{fmt(rps)} | {fmt(ratio, 2) if t not in ('direct', 'nginx', 'nginx-https') else ''} | "
                       f"{fmt(med([r['cpu_us_per_req'] for r in rs]), 1)} | "
                       f"{fmt(ttfb) if stream and t != 'direct' and args.loadgen != 'wrk' else ''} |")
    out += littles_law(rows)
    out += ["", f"Open loop, OpenAI non-stream at {args.rate} req/s for {args.duration} s (latency from the scheduled start):", "",
            "| target | p50 | p90 | p99 | max | errors |", "|---|---|---|---|---|---|"]
    for t, r in open_loop.items():
        l = r["latency_us"]
        out.append(f"| {t} | {fmt(l['p50'])} | {fmt(l['p90'])} | {fmt(l['p99'])} | {fmt(l['max'])} | {r['errors']} |")
    out += ["", "Memory (MB, RSS): " + ", ".join(
        f"{t} idle {idle[t]:.1f}, peak {peak[t]:.1f}" for t in idle), ""]
    return "\n".join(out)


def littles_law(rows):
    """In a closed loop of c clients, mean latency is c / throughput (Little's law), so a
    target's added mean latency over direct, relative to nginx's, follows from throughput
    alone: (1/λt − 1/λd) / (1/λn − 1/λd). This says which throughput ratio the budget's
    "added p50 ≤ 1.2× nginx's" asks for, and whether the measured p50 ratio is that
    prediction (the latency distributions alike) or something else (one of them skewed)."""
    out = []
    for scenario, c, reps in rows:
        if c < 16 or "nginx" not in reps:
            continue
        rps = {t: med([r["rps"] for r in rs]) for t, rs in reps.items()}
        ld, ln = rps["direct"], rps["nginx"]
        if not ld or not ln or ln >= ld:
            continue
        added_n = 1 / ln - 1 / ld
        need = 1 / (1 / ld + 1.2 * added_n) / ln
        nginx_p50 = added(reps, "nginx")
        cells = []
        for t in ("glmgate", "pgo", "hyper-pc", "hyper", "raw"):
            if not rps.get(t):
                continue
            pred = (1 / rps[t] - 1 / ld) / added_n
            meas = fmt(added(reps, t) / nginx_p50, 2) if nginx_p50 else "–"
            cells.append(f"{t} {rps[t] / ln:.2f}× → {pred:.2f} / {meas}")
        out.append(f"| {scenario} | {c} | {need:.2f}× | {'; '.join(cells)} |")
    if not out:
        return []
    return ["", "Little's law (closed loop: mean latency = c / throughput): the throughput, relative to "
            "nginx's, at which a target's added mean latency is 1.2× nginx's; then for each target its "
            "throughput relative to nginx's → the added-latency ratio to nginx's that throughput predicts / "
            "the added p50 ratio measured.", "",
            "| scenario | c | throughput for 1.2× | target: throughput → predicted / measured |",
            "|---|---|---|---|"] + out


def build_pgo():
    """scripts/build-pgo's binary (built afresh: it trains on the current code)."""
    log("building the PGO binary (scripts/build-pgo: two release builds, training runs and BOLT)")
    out = subprocess.run([os.path.join(ROOT, "scripts", "build-pgo")], cwd=ROOT, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def run_train(args):
    """Runs every scenario through every kind of gateway, served by `args.train` (a binary
    built with `-Cprofile-generate`), at c=1 and c=16, plus requests the gateway refuses;
    then stops the gateways, which write their profiles as they exit. The mock is the
    ordinary release build, so only the gateway's code is profiled."""
    ensure_tools(need_nginx=False)
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="glmgate-train-")
    errors = 0
    try:
        rig = Rig(tmp, procs, gateway_bin=os.path.abspath(args.train), with_nginx=False)
        for scenario, (api, _) in SCENARIOS.items():
            targets = ["glmgate", "translated", "http2"] + (["failover"] if api == "openai" else [])
            for t in targets:
                for c in (1, 16):
                    r = measure(rig, t, scenario, c, args.duration)
                    errors += r["errors"]
                    log(f"train {scenario} {t} c={c}: {r['requests']} requests, {r['errors']} errors")
        # Refusals: a wrong client key, and a body that is not JSON.
        url, headers, _ = rig.target("glmgate", "openai")
        bad = os.path.join(tmp, "bad.json")
        with open(bad, "w") as f:
            f.write('{"model": "glm-4.7", "messages": [')
        load(url, ["authorization: Bearer gg-wrong", "content-type: application/json"],
             body_file(tmp, "openai"), 1, 0, requests=200)
        load(url, headers, bad, 1, 0, requests=200)
    finally:
        procs.stop_all()
    shutil.rmtree(tmp, ignore_errors=True)
    # scripts/build-pgo also uses this run to check its final binary.
    if errors:
        sys.exit(f"training: {errors} requests failed")


TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")


def run_tls_check(args):
    """Checks the TLS path of `args.tls_check`, which the training runs (plain HTTP to the
    mock) never take: a binary rewritten by BOLT moves ring's hand-written cryptography too.
    glmgate trusts only the webpki roots, so no handshake can complete offline; but a TLS 1.3
    handshake gets as far as the certificate check with the record layer working both ways:
    the gateway decrypts the server's encrypted handshake, rejects the self-signed
    certificate, and sends an encrypted `certificate_unknown` alert, which the server must
    decrypt and report. Done against `openssl s_server` for each TLS 1.3 cipher suite."""
    if not shutil.which("openssl"):
        sys.exit("--tls-check needs openssl")
    binary = os.path.abspath(args.tls_check)
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="glmgate-tls-")
    failed = []
    try:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
        tls_port, gw_port = free_port(), free_port()
        # Every call fails upstream: the circuit breaker is off so that each suite is tried.
        conf = glmgate_conf(tmp, gw_port, tls_port, "tls")
        api_key = client_key(binary, conf)
        procs.start([binary, "serve", "--config", conf], os.path.join(tmp, "glmgate.log"))
        wait_port(gw_port)
        for suite in TLS13_SUITES:
            log_path = os.path.join(tmp, f"{suite}.log")
            server = procs.start(["openssl", "s_server", "-accept", str(tls_port), "-cert", cert, "-key", key,
                                  "-tls1_3", "-ciphersuites", suite, "-www"], log_path)
            wait_port(tls_port)
            req = urllib.request.Request(
                f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                data=json.dumps(SCENARIOS["openai"][1]).encode(),
                headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"})
            try:
                status = urllib.request.urlopen(req, timeout=30).status
            except urllib.error.HTTPError as e:
                status = e.code
            procs.stop(server)
            with open(log_path, errors="replace") as f:
                text = f.read()
            alerts = text.count("alert certificate unknown")
            broken = any(w in text.lower() for w in ("decrypt", "bad record mac", "decode error"))
            log(f"tls {suite}: gateway answered {status}; the server read {alerts} certificate_unknown "
                f"alerts{', and a decryption error' if broken else ''}")
            if status != 502 or alerts == 0 or broken:
                failed.append(suite)
    finally:
        procs.stop_all()
    shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        sys.exit(f"TLS check failed for {', '.join(failed)}")


def run_soak(args):
    ensure_tools()
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="glmgate-soak-")
    try:
        rig = Rig(tmp, procs, mock_args=["--chunk-delay-ms", "5"])
        url, headers, _ = rig.target("glmgate", "openai")
        body = body_file(tmp, "openai-stream")
        seconds = int(args.soak * 60)
        loader = subprocess.Popen([LOAD, "--url", url, "--body-file", body, "--concurrency", "32",
                                   "--duration", str(seconds), *sum((["--header", h] for h in headers), [])],
                                  stdout=subprocess.PIPE, text=True)
        samples = []
        end = time.time() + seconds + 2
        while time.time() < end and loader.poll() is None:
            samples.append(rss_mb(rig.gg.pid))
            log(f"soak t={10 * (len(samples) - 1)}s rss={samples[-1]:.1f} MB")
            time.sleep(10)
        result = json.loads(loader.communicate(timeout=120)[0])
    finally:
        procs.stop_all()
    warm = samples[1:] or samples
    print(f"Soak: {args.soak} min of 32 concurrent streams through glmgate: {result['requests']} requests, "
          f"{result['errors']} errors. RSS every 10 s (MB): {', '.join(f'{s:.1f}' for s in samples)}. "
          f"Growth after the first sample: {warm[-1] - warm[0]:+.1f} MB (max {max(warm):.1f}).")


def run_streams(args):
    ensure_tools()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * args.streams + 1024  # each stream: client, gateway in and out, mock sockets
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(f"--streams {args.streams} needs about {need} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else need, hard))
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="glmgate-streams-")
    try:
        # 28 events 300 ms apart: each stream stays open about 8 s.
        rig = Rig(tmp, procs, mock_args=["--chunk-delay-ms", "300"], hyper=args.with_hyper, raw=args.with_raw,
                  https=True)
        time.sleep(1)
        results = {}
        # One after the other, each its own process: each peak (VmHWM) covers its own run only.
        for name in ("nginx", "glmgate", "http2", *HTTPS_TARGETS, *rig.references):
            url, headers, pid = rig.target(name, "openai")
            idle = rss_mb(pid)
            r = load(url, headers, body_file(tmp, "openai-stream"), args.streams, 6, requests=args.streams)
            results[name] = (r, idle, rss_mb(pid, "VmHWM"))
            # Each proxy keeps its upstream connections open once idle; stopped, it closes
            # them, so the mock's open files do not run out for the next one (it would
            # then stop accepting for a while, and the next one's streams would wait).
            procs.stop(next(p for p in procs.procs if p.pid == pid))
    finally:
        procs.stop_all()
    for name, (r, idle, peak) in results.items():
        what = {"http2": "glmgate, HTTP/2 upstream (h2c)", "nginx-https": "nginx, HTTPS upstream (HTTP/1.1)",
                "https": "glmgate, HTTPS upstream, default settings (HTTP/2 by ALPN)",
                "https-http1": "glmgate, HTTPS upstream, http2 = false", **REFERENCE_NAMES}.get(name, name)
        print(f"{args.streams} concurrent slow streams through {what}: {r['requests']} completed, "
              f"{r['errors']} failed; RSS idle {idle:.1f} MB, peak {peak:.1f} MB "
              f"({(peak - idle) * 1024 / args.streams:.1f} KB per stream); "
              f"TTFB p50 {r['ttfb_us']['p50']} µs, p99 {r['ttfb_us']['p99']} µs.")


def run_instructions(args):
    """Counts in one gateway process under callgrind: a warm-up (connections, caches, the
    usage writer's prepared statements: one-off costs) is run and its counts dropped, then
    `small` and `large` requests are each counted (usage written, counters dumped); the
    difference over `large − small` requests is the steady-state cost of one request.
    `--scenario` picks the request, `--target translated` the gateway whose upstream
    speaks only the other format, `--target https` or `https-http1` a gateway in front of the
    mock over HTTPS, `--target hyper-pc` or `raw` a reference proxy instead."""
    ensure_tools(need_valgrind=True)
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="glmgate-cg-")
    out = os.path.join(tmp, "callgrind.out")
    settle = 2.5  # > the usage flush interval (1 s): each window includes its batch write
    try:
        api = SCENARIOS[args.scenario][0]
        reference = args.target in ("hyper-pc", "raw")
        kind = args.target if reference else gateway_kind(args.target, api)
        rig = Rig(tmp, procs, glmgate_prefix=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
                  prefix_kind=kind, gateway_bin=os.path.abspath(args.binary) if args.binary else GLMGATE,
                  hyper=args.target == "hyper-pc", raw=args.target == "raw", https=args.target.startswith("https"))
        url, headers, proc_pid = rig.target(args.target, api)
        body = body_file(tmp, args.scenario)
        pid = str(proc_pid)

        def control(*what):
            subprocess.run(["callgrind_control", *what, pid], check=True, capture_output=True)

        # The warm-up keeps two connections per core open at once, so every serving thread
        # gets some and opens its own upstream connections (and TLS sessions) then. Each
        # counted run's one connection goes to whichever thread the kernel wakes; without
        # this, one that landed on a thread the warm-up missed counted a TLS handshake
        # (about 0.5M instructions) against its requests.
        load(url, headers, body, 2 * (os.cpu_count() or 1), 0, requests=args.warmup_requests)
        time.sleep(settle)
        control("--zero")
        for n in (args.small, args.large):
            load(url, headers, body, 1, 0, requests=n)
            time.sleep(settle)
            control(f"--dump={n} requests")
        procs.stop(rig.references[kind][1] if reference else rig.gateways[kind][2], timeout=120)
    finally:
        procs.stop_all()
    totals = {}
    for i, n in enumerate((args.small, args.large), start=1):
        with open(f"{out}.{i}") as f:
            totals[n] = next(int(l.split()[1]) for l in f if l.startswith(("summary:", "totals:")))
        log(f"{n} requests: {totals[n]:,} instructions in all")
    per = (totals[args.large] - totals[args.small]) / (args.large - args.small)
    what = f"`{args.scenario}` request" + (", translated," if args.target == "translated" else "")
    who = REFERENCE_NAMES.get(args.target, "glmgate")
    print(f"{who} executes {per:,.0f} instructions per {what} "
          f"(callgrind, after {args.warmup_requests} warm-up requests; ({args.large} − {args.small} "
          f"requests) difference" + ("; auth, accounting and logs on)." if who == "glmgate" else ")."))
    # The dumps stay for callgrind_annotate (`<out>.2` minus `<out>.1` is the steady state).
    log(f"callgrind dumps: {out}.1 ({args.small} requests), {out}.2 ({args.large})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="c=1 and 64, one repetition of 2 s")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=1000, help="open-loop requests per second")
    ap.add_argument("--concurrency", help="comma-separated concurrency levels (default 1,16,64,256)")
    ap.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    ap.add_argument("--soak", type=float, metavar="MINUTES")
    ap.add_argument("--streams", type=int, metavar="N")
    ap.add_argument("--instructions", action="store_true")
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=400)
    ap.add_argument("--warmup-requests", type=int, default=300)
    ap.add_argument("--scenario", choices=list(SCENARIOS), default="openai", help="for --instructions")
    ap.add_argument("--target", choices=("glmgate", "translated", "http2", "https", "https-http1", "hyper-pc", "raw"),
                    default="glmgate", help="for --instructions (https, https-http1: in front of the mock over "
                    "HTTPS, as in --https; hyper-pc, raw: the reference proxies of --with-hyper, --with-raw)")
    ap.add_argument("--binary", help="for --instructions: the gateway binary to count (default: the release "
                    "build); `cargo build --profile profiling` gives one with symbols")
    ap.add_argument("--pgo", action="store_true",
                    help="add glmgate built by scripts/build-pgo (profile-guided optimisation) as a target")
    ap.add_argument("--train", metavar="BINARY",
                    help="drive an instrumented glmgate through every scenario (used by scripts/build-pgo)")
    ap.add_argument("--tls-check", metavar="BINARY",
                    help="check a glmgate binary's TLS to the upstream (used by scripts/build-pgo)")
    ap.add_argument("--with-hyper", action="store_true",
                    help="add hyper-proxy (bench/loadgen: hyper's plainest reverse proxy, no logic) as a target")
    ap.add_argument("--https", action="store_true",
                    help="the table with rows through nginx and glmgate in front of the mock over HTTPS")
    ap.add_argument("--with-raw", action="store_true",
                    help="add raw-proxy (bench/loadgen: a reverse proxy with no HTTP library, no logic) as a target")
    ap.add_argument("--loadgen", choices=("glmgate-load", "wrk"), default="glmgate-load",
                    help="the closed loop's load generator (wrk: Debian's, as a cross-check; no TTFB)")
    ap.add_argument("--with-litellm", action="store_true",
                    help=f"add LiteLLM proxy ({LITELLM_PIN}, installed once into bench/.litellm) as a target")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.duration = 1, 2.0
    if args.train:
        args.duration = 1.0
        run_train(args)
    elif args.tls_check:
        run_tls_check(args)
    elif args.soak:
        run_soak(args)
    elif args.streams:
        run_streams(args)
    elif args.instructions:
        run_instructions(args)
    else:
        run_table(args)


if __name__ == "__main__":
    main()
