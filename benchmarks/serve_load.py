"""Load test of the HTTP server against calling the SavedModel in process, and `mlflow models serve`.

Trains a model (the default DNN on the synthetic set, ``--epochs`` epochs, recorded in a scratch
sqlite MLflow store) unless ``--model`` names an export dir, starts ``python -m ranking_exp.serve``
on loopback, and drives it from a second process with ``--concurrency`` keep-alive connections
(asyncio: a minimal HTTP/1.1 client on asyncio streams, as wrk does, or ``--client aiohttp``):

1. latency: ``--latency-requests`` requests one at a time (p50/p99 against the in-process call:
   the per-request overhead of HTTP, JSON and validation);
2. load: ``--requests`` requests of ``--docs`` documents each at ``--concurrency`` connections
   (zero errors expected; p50/p99 latency and throughput).

The same requests are scored in process (``serving_features`` on prebuilt NumPy arrays, one query
per call, as the ``predict`` CLI calls it: what a client would do without a server) and, when the
model was logged to MLflow, sent to ``mlflow models serve --env-manager local`` in both phases. Writes
benchmarks/results/serve_load.json and prints a table.

Usage: python benchmarks/serve_load.py [--requests 2000] [--concurrency 32] [--docs 100] [--model DIR]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "serve_load.json"


# --- load generator (runs in its own process) ----------------------------------------------------
async def _drive(url: str, bodies: list[bytes], n: int, concurrency: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Content-Type": "application/json"}

    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                        return
            except Exception as e:  # noqa: BLE001 - counted
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - t0)

        async def worker() -> None:
            for i in counter:
                await one(i)

        for i in range(min(50, n)):  # warm-up: connections, first calls
            await one(i)
        latencies.clear()
        errors.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall": wall}


async def _drive_raw(url: str, bodies: list[bytes], n: int, concurrency: int) -> dict:
    """Like ``_drive``, with a minimal keep-alive HTTP/1.1 client on asyncio streams (as wrk does):
    the measured time is then mostly the server's, not the client library's."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    head = f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
    requests = [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(n))

    async def session(indices):
        reader = writer = None
        for i in indices:
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(60):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(u.hostname, u.port)
                    writer.write(requests[i % len(requests)])
                    header = await reader.readuntil(b"\r\n\r\n")
                    status = int(header[9:12])
                    fields = dict(line.split(b":", 1) for line in header.split(b"\r\n")[1:] if b":" in line)
                    fields = {k.strip().lower(): v.strip().lower() for k, v in fields.items()}
                    await reader.readexactly(int(fields[b"content-length"]))
                if fields.get(b"connection") == b"close":
                    writer.close()
                    reader = writer = None
            except Exception as e:  # noqa: BLE001 - counted
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                reader = writer = None
                continue
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
            else:
                latencies.append(time.perf_counter() - t0)
        if writer is not None:
            writer.close()

    await session(range(min(50, n)))  # warm-up
    latencies.clear()
    errors.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(session(counter) for _ in range(concurrency)))
    return {"latencies": latencies, "errors": errors, "wall": time.perf_counter() - t0}


def _load_main(argv: list[str]) -> None:
    url, bodies_file, n, concurrency, client = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4]
    bodies = [line.encode() for line in Path(bodies_file).read_text().splitlines()]
    drive = _drive_raw if client == "raw" else _drive
    print(json.dumps(asyncio.run(drive(url, bodies, n, concurrency))))


CLIENT = "raw"


def run_load(url: str, bodies: list[str], n: int, concurrency: int, work: Path) -> dict:
    path = work / f"bodies-{abs(hash(url))}.jsonl"
    path.write_text("\n".join(bodies) + "\n")
    r = subprocess.run([sys.executable, __file__, "_load", url, str(path), str(n), str(concurrency), CLIENT],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])
    return summarize(json.loads(r.stdout.strip().splitlines()[-1]), n)


def summarize(raw: dict, n: int) -> dict:
    lat = np.array(raw["latencies"]) * 1000
    return {"requests": n, "ok": int(len(lat)), "errors": raw["errors"], "wall_s": round(raw["wall"], 3),
            "throughput_rps": round(len(lat) / raw["wall"], 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "mean_ms": round(float(lat.mean()), 3)}


# --- helpers ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"server at {url} not ready after {timeout} s")


def start(cmd: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    """A server in its own process group, its output to ``log`` (a pipe nobody reads would fill and block it)."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Ends the server's process group (``mlflow models serve`` runs uvicorn as a child)."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(30)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
    time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def train(work: Path, epochs: int) -> tuple[str, str]:
    db = work / "mlflow.db"
    r = subprocess.run([sys.executable, "-m", "ranking_exp", f"train.epochs={epochs}", "train.verbose=0",
                        f"tracking.uri=sqlite:///{db}"], cwd=work, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])
    [path] = work.glob("outputs/*/*/results.json")
    results = json.loads(path.read_text())
    return results["model_dir"], results["run_id"]


def make_queries(spec, n_queries: int, docs: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)

    def value(f):
        v = rng.normal(size=f.size)
        v = v.round().astype(int).tolist() if f.dtype == "int64" else np.round(v, 4).tolist()
        return v[0] if f.size == 1 else v

    return [{"context": {f.name: value(f) for f in spec.context},
             "documents": [{f.name: value(f) for f in spec.example} for _ in range(docs)]}
            for _ in range(n_queries)]


def in_process(model_dir: str, spec, queries: list[dict], n: int, latency_n: int) -> tuple[dict, dict, list]:
    """Sequential ``serving_features`` calls, one query each, on prebuilt arrays."""
    import tensorflow as tf

    from ranking_exp.serve.schema import RequestParser, dense_batch

    fn = tf.saved_model.load(model_dir).signatures["serving_features"]
    parser = RequestParser(spec, max_documents=10 ** 6)
    dense = [dense_batch(spec, [parser.query(q, "")]) for q in queries]  # NumPy arrays, as a caller holds them

    def call(inputs: dict) -> np.ndarray:
        return fn(**{k: tf.constant(v) for k, v in inputs.items()})["outputs"].numpy()

    reference = [call(d)[0] for d in dense]  # also the warm-up

    def phase(count: int) -> dict:
        lat = []
        t0 = time.perf_counter()
        for i in range(count):
            s = time.perf_counter()
            call(dense[i % len(dense)])
            lat.append(time.perf_counter() - s)
        return summarize({"latencies": lat, "errors": {}, "wall": time.perf_counter() - t0}, count)

    return phase(latency_n), phase(n), reference


def mlflow_bodies(spec, queries: list[dict]) -> list[str]:
    names = [f.name for f in spec.context + spec.example]
    out = []
    for q in queries:
        rows = [[q["context"][n] if n in q["context"] else d[n] for n in names] for d in q["documents"]]
        out.append(json.dumps({"dataframe_split": {"columns": names, "data": rows}}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="an export dir (default: train one)")
    ap.add_argument("--run-id", help="the MLflow run of --model, for mlflow models serve (with --tracking-uri)")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--latency-requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--no-mlflow", action="store_true", help="skip mlflow models serve")
    ap.add_argument("--client", choices=["raw", "aiohttp"], default="raw",
                    help="load generator: a minimal asyncio HTTP/1.1 client (default) or aiohttp")
    ap.add_argument("--serve-args", nargs="*", default=[], help="extra overrides for ranking_exp.serve")
    args = ap.parse_args()
    global CLIENT
    CLIENT = args.client

    from ranking_exp.data.spec import FeatureSpec

    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        work = Path(tmp)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RANKING_EXP_CACHE_DIR": str(work / "cache")}
        os.environ.update(env)
        if args.model:
            model_dir, run_id, tracking = args.model, args.run_id, args.tracking_uri
        else:
            print(f"training a model ({args.epochs} epoch(s), default DNN, synthetic data) ...", flush=True)
            model_dir, run_id = train(work, args.epochs)
            tracking = f"sqlite:///{work / 'mlflow.db'}"
        spec = FeatureSpec.load(model_dir)
        queries = make_queries(spec, 200, args.docs)
        bodies = [json.dumps(q) for q in queries]
        result: dict = {"requests": args.requests, "latency_requests": args.latency_requests,
                        "concurrency": args.concurrency, "docs_per_request": args.docs,
                        "cpu_count": os.cpu_count(), "client": args.client, "serve_args": args.serve_args}

        print("in-process SavedModel calls ...", flush=True)
        lat, load, reference = in_process(model_dir, spec, queries, args.requests, args.latency_requests)
        result["in_process"] = {"latency": lat, "load": load}

        port = free_port()
        log = work / "serve.log"
        server = start([sys.executable, "-m", "ranking_exp.serve", f"model={model_dir}", f"port={port}",
                        *args.serve_args], log, env, work)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/readyz", server, log)
            req = urllib.request.Request(base + "/v1/rank", data=bodies[0].encode(), method="POST")
            with urllib.request.urlopen(req) as r:
                served = np.array(json.loads(r.read())["scores"])
            result["max_abs_diff_vs_in_process"] = float(np.abs(served - reference[0]).max())
            print("ranking_exp.serve: latency phase, load phase ...", flush=True)
            result["serve"] = {"latency": run_load(base + "/v1/rank", bodies, args.latency_requests, 1, work),
                               "load": run_load(base + "/v1/rank", bodies, args.requests, args.concurrency, work)}
        finally:
            stop(server)

        if run_id and not args.no_mlflow:
            port = free_port()
            menv = {**env, "MLFLOW_TRACKING_URI": tracking}
            # mlflow models serve runs `uvicorn` from PATH: the one beside this Python
            menv["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{menv.get('PATH', '')}"
            log = work / "mlflow_serve.log"
            mserver = start([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                             f"runs:/{run_id}/model", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            log, menv, work)
            try:
                base = f"http://127.0.0.1:{port}"
                wait_http(base + "/ping", mserver, log)
                mbodies = mlflow_bodies(spec, queries)
                req = urllib.request.Request(base + "/invocations", data=mbodies[0].encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req) as r:
                    mscores = np.array([p["score"] for p in json.loads(r.read())["predictions"]])
                result["mlflow_max_abs_diff_vs_in_process"] = float(np.abs(mscores - reference[0]).max())
                print("mlflow models serve: latency phase, load phase ...", flush=True)
                result["mlflow_serve"] = {
                    "latency": run_load(base + "/invocations", mbodies, args.latency_requests, 1, work),
                    "load": run_load(base + "/invocations", mbodies, args.requests, args.concurrency, work)}
            finally:
                stop(mserver)

    ip, sv = result["in_process"], result["serve"]
    result["p50_overhead_ms"] = round(sv["latency"]["p50_ms"] - ip["latency"]["p50_ms"], 3)
    result["throughput_vs_in_process"] = round(sv["load"]["throughput_rps"] / ip["load"]["throughput_rps"], 3)
    result["goals"] = {"zero_errors": sv["load"]["ok"] == args.requests and not sv["load"]["errors"],
                       "p50_overhead_at_most_2ms": result["p50_overhead_ms"] <= 2.0,
                       "throughput_at_least_70pct": result["throughput_vs_in_process"] >= 0.7}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")

    rows = [("in-process SavedModel", ip)] + [("ranking_exp.serve", sv)]
    if "mlflow_serve" in result:
        rows.append(("mlflow models serve", result["mlflow_serve"]))
    print(f"\n{args.docs} documents per request; latency phase: 1 connection, load phase: "
          f"{args.concurrency} connections, {args.requests} requests")
    print(f"{'':<24}{'p50 (1 conn)':>14}{'p99 (1 conn)':>14}{'p50 (load)':>12}{'p99 (load)':>12}"
          f"{'req/s (load)':>14}{'errors':>8}")
    for label, r in rows:
        la, lo = r["latency"], r["load"]
        print(f"{label:<24}{la['p50_ms']:>12.2f}ms{la['p99_ms']:>12.2f}ms{lo['p50_ms']:>10.2f}ms"
              f"{lo['p99_ms']:>10.2f}ms{lo['throughput_rps']:>14.1f}{sum(lo['errors'].values()):>8}")
    print(f"p50 overhead vs in process: {result['p50_overhead_ms']:.2f} ms; throughput vs in process: "
          f"{result['throughput_vs_in_process']:.0%}; goals: {result['goals']}")
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        _load_main(sys.argv[2:])
    else:
        main()
