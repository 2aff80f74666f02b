"""The HTTP server, for real: a trained model served by ``python -m ranking_exp.serve`` in a
subprocess on a free port, real HTTP over loopback. Ranking against the in-process SavedModel,
every bad-input case, the TensorFlow-Serving-style API, metadata, health, start-up failures,
a ``models:/`` URI from a sqlite MLflow store, MQ2008 consistency with ``predict`` (slow) and
``mlflow models serve`` (slow). The micro-batcher is also checked in process."""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ranking_exp.data.spec import FeatureSpec
from tests.helpers import run_cli, tiny

MAX_BODY = 200_000


# --- helpers ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m <module> ...`` on a free port; ``request`` speaks HTTP/1.1 to it."""

    def __init__(self, cmd: list[str], cwd: Path, log: Path, ready_path: str = "/readyz",
                 env: dict | None = None, timeout: float = 240):
        self.port = free_port()
        self.log = log
        self.ready_path = ready_path
        cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        with open(log, "w") as out:  # a file, not a pipe nobody reads (a full pipe blocks the server)
            self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                status, _ = self.request("GET", ready_path)
                if status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise AssertionError(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                chunked: bool = False) -> tuple[int, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            if body is not None and not isinstance(body, (bytes, str)) and not chunked:
                body = json.dumps(body)
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})},
                         encode_chunked=chunked)
            r = conn.getresponse()
            data = r.read()
            if path == self.ready_path:
                return r.status, data
            assert r.getheader("content-type", "").startswith("application/json"), (r.status, data[:200])
            return r.status, json.loads(data)
        finally:
            conn.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Ends the server's process group (``mlflow models serve`` runs uvicorn as a child)."""
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                time.sleep(0.5)  # children of the group exit too
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in the group
        except ProcessLookupError:
            pass


def serve_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "ranking_exp.serve", "port={port}", *overrides]


class Reference:
    """The exported SavedModel called in this process (``serving_features``), one list at a time."""

    def __init__(self, model_dir: Path):
        import tensorflow as tf

        self.tf = tf
        self.spec = FeatureSpec.load(model_dir)
        self.fn = tf.saved_model.load(str(model_dir)).signatures["serving_features"]

    def scores(self, context: dict, documents: list[dict]) -> np.ndarray:
        tf, spec = self.tf, self.spec
        inputs = {f.name: tf.constant([[context.get(f.name, f.default)]], tf.float32) for f in spec.context}
        for f in spec.example:
            inputs[f.name] = tf.constant([[[d.get(f.name, f.default)] for d in documents]], tf.float32)
        inputs[spec.mask_name] = tf.ones([1, len(documents)], tf.bool)
        return self.fn(**inputs)["outputs"].numpy()[0]


def make_query(spec: FeatureSpec, n: int, rng: np.random.Generator) -> dict:
    return {"context": {f.name: round(float(rng.normal()), 4) for f in spec.context},
            "documents": [{f.name: round(float(rng.normal()), 4) for f in spec.example} for _ in range(n)]}


# --- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic model, trained by the real command, recorded in a sqlite MLflow store."""
    work = tmp_path_factory.mktemp("serve")
    r = run_cli(tiny(["tracking.experiment=serve"]), cwd=work)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [results] = list(work.glob("outputs/*/*/results.json"))
    return work, json.loads(results.read_text())


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory):
    """A copy of the export whose spec makes the first document and context features required."""
    _, results = trained
    dst = tmp_path_factory.mktemp("export") / "ranker"
    shutil.copytree(results["model_dir"], dst)
    spec = json.loads((dst / "feature_spec.json").read_text())
    spec["example"][0]["default"] = None
    spec["context"][0]["default"] = None
    FeatureSpec.from_dict(spec).save(dst)
    return dst


@pytest.fixture(scope="module")
def spec(model) -> FeatureSpec:
    return FeatureSpec.load(model)


@pytest.fixture(scope="module")
def reference(model) -> Reference:
    return Reference(model)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "server.log"
    s = Server(serve_cmd(f"model={model}", f"max_body_bytes={MAX_BODY}"), cwd=model.parent, log=log)
    yield s
    s.stop()


# --- ranking ------------------------------------------------------------------------------------------
def test_rank_scores_equal_the_in_process_savedmodel(server, spec, reference):
    rng = np.random.default_rng(0)
    for n in (1, 7, 100):
        q = make_query(spec, n, rng)
        status, out = server.request("POST", "/v1/rank", q)
        assert status == 200, out
        np.testing.assert_allclose(out["scores"], reference.scores(q["context"], q["documents"]), rtol=1e-6, atol=1e-6)
        assert out["ranking"] == np.argsort(-np.array(out["scores"]), kind="stable").tolist()
        assert sorted(out["ranking"]) == list(range(n))


def test_a_batch_of_queries_equals_one_request_each(server, spec):
    rng = np.random.default_rng(1)
    queries = [make_query(spec, n, rng) for n in (3, 12, 1, 40)]
    status, out = server.request("POST", "/v1/rank", {"queries": queries})
    assert status == 200, out
    assert len(out["results"]) == 4
    for q, got in zip(queries, out["results"]):
        _, single = server.request("POST", "/v1/rank", q)
        np.testing.assert_allclose(got["scores"], single["scores"], rtol=1e-6, atol=1e-6)
        assert got["ranking"] == single["ranking"]


def test_a_large_batch_scored_in_a_worker_thread_is_right_too(server, spec, reference):
    rng = np.random.default_rng(7)
    req, ctx = spec.example[0].name, spec.context[0].name
    queries = [{"context": {ctx: round(float(rng.normal()), 3)},
                "documents": [{req: round(float(rng.normal()), 3)} for _ in range(int(rng.integers(150, 200)))]}
               for _ in range(30)]  # more than batching.inline_max_documents (4096) padded documents
    status, out = server.request("POST", "/v1/rank", {"queries": queries})
    assert status == 200, out
    for q, got in zip(queries, out["results"]):
        np.testing.assert_allclose(got["scores"], reference.scores(q["context"], q["documents"]), rtol=1e-5, atol=1e-6)


def test_a_missing_feature_with_a_default_takes_it(server, spec):
    rng = np.random.default_rng(2)
    q = make_query(spec, 5, rng)
    optional_doc, optional_ctx = spec.example[1], spec.context[1]
    explicit = {"context": {**q["context"], optional_ctx.name: optional_ctx.default},
                "documents": [{**d, optional_doc.name: optional_doc.default} for d in q["documents"]]}
    omitted = {"context": {k: v for k, v in q["context"].items() if k != optional_ctx.name},
               "documents": [{k: v for k, v in d.items() if k != optional_doc.name} for d in q["documents"]]}
    _, a = server.request("POST", "/v1/rank", explicit)
    status, b = server.request("POST", "/v1/rank", omitted)
    assert status == 200, b
    assert a == b


def test_concurrent_requests_all_get_their_own_scores(server, spec, reference):
    rng = np.random.default_rng(3)
    queries = [make_query(spec, int(rng.integers(1, 60)), rng) for _ in range(48)]
    results: dict[int, tuple] = {}

    def call(i):
        results[i] = server.request("POST", "/v1/rank", queries[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, q in enumerate(queries):
        status, out = results[i]
        assert status == 200, out
        np.testing.assert_allclose(out["scores"], reference.scores(q["context"], q["documents"]), rtol=1e-6, atol=1e-6)


# --- bad input ----------------------------------------------------------------------------------------
def _bad_cases(spec: FeatureSpec) -> list[tuple[str, object, int, str]]:
    req, opt, ctx_req = spec.example[0].name, spec.example[1].name, spec.context[0].name
    ctx = {ctx_req: 1.0}

    def doc(**kv):
        return {req: 0.5, **kv}

    def body(*docs, context=ctx):
        return {"context": context, "documents": list(docs)}

    def raw(value: str) -> bytes:  # a literal JSON value json.dumps would not write
        return ('{"context": {"%s": 1}, "documents": [{"%s": %s}]}' % (ctx_req, req, value)).encode()
    return [
        ("malformed JSON", b'{"documents": [', 400, "malformed JSON"),
        ("empty body", b"", 400, "empty"),
        ("not UTF-8", b'{"documents": "\xff\xfe"}', 400, "malformed JSON"),
        ("missing required feature", body(doc(), {opt: 1.0}), 422,
         f"documents[1]: missing required feature {req!r}"),
        ("missing required context feature", body(doc(), context={}), 422,
         f"context: missing required context feature {ctx_req!r}"),
        ("unknown feature", body(doc(colour=1.0)), 422, "documents[0]: unknown feature 'colour'"),
        ("unknown context feature", body(doc(), context={**ctx, "colour": 1}), 422,
         "context: unknown feature 'colour'"),
        ("a string", body(doc(), doc(**{opt: "high"})), 422,
         f"documents[1]: feature {opt!r}: value 'high' is not a number"),
        ("a numeric string", body(doc(**{opt: "1.5"})), 422, "is not a number"),
        ("true", body(doc(**{opt: True})), 422, "value True is not a number"),
        ("null", body(doc(**{opt: None})), 422, "value null is not a number"),
        ("a list", body(doc(**{opt: [1.0, 2.0]})), 422, "expected 1 values"),
        ("NaN", raw("NaN"), 422, "value nan is not a finite number"),
        ("Infinity", raw("Infinity"), 422, "value inf is not a finite number"),
        ("-Infinity", raw("-Infinity"), 422, "value -inf is not a finite number"),
        ("1e999", raw("1e999"), 422, "value inf is not a finite number"),
        ("float32 overflow", raw("1e39"), 422, "out of float32 range"),
        ("empty document list", body(), 422, "documents: empty document list"),
        ("documents not a list", {"context": ctx, "documents": {"a": 1}}, 422, "documents: expected a list"),
        ("a document not an object", body(doc(), 3), 422, "documents[1]: expected an object"),
        ("no documents", {"context": ctx}, 422, "missing \"documents\""),
        ("an unexpected key", {**body(doc()), "top_k": 3}, 422, "unexpected key 'top_k'"),
        ("not an object", [1, 2], 422, "body: expected a JSON object"),
        ("more than 1000 documents", body(*[doc() for _ in range(1001)]), 413,
         "documents: 1001 documents, more than the maximum of 1000"),
        ("a bad query in a batch", {"queries": [body(doc()), body(doc(), doc(**{opt: "x"}))]}, 422,
         f"queries[1].documents[1]: feature {opt!r}"),
        ("an empty batch", {"queries": []}, 422, "queries: empty list"),
        ("more than 100 queries", {"queries": [body(doc())] * 101}, 413, "101 queries, more than the maximum of 100"),
        ("a context feature among document features", body(doc(**{ctx_req: 1.0})), 422, "is a context feature"),
    ]


@pytest.mark.parametrize("case", range(28))
def test_bad_input_is_a_json_error_and_the_server_keeps_serving(server, spec, case):
    cases = _bad_cases(spec)
    assert len(cases) == 28
    name, body, status, message = cases[case]
    got_status, out = server.request("POST", "/v1/rank", body)
    assert (got_status, list(out)) == (status, ["error"]), (name, got_status, out)
    assert message in out["error"], (name, out)
    assert server.alive()
    ok, _ = server.request("POST", "/v1/rank", {"context": {spec.context[0].name: 1.0},
                                                 "documents": [{spec.example[0].name: 1.0}]})
    assert ok == 200


def test_a_body_over_the_limit_is_413_by_content_length_and_while_reading(server, spec):
    big = json.dumps({"documents": [{spec.example[0].name: 0.123456789}] * 12000})
    assert len(big) > MAX_BODY
    status, out = server.request("POST", "/v1/rank", big)
    assert status == 413 and "limit of 200000 bytes" in out["error"], out
    chunks = (big[i:i + 16384].encode() for i in range(0, len(big), 16384))  # no Content-Length
    status, out = server.request("POST", "/v1/rank", chunks, chunked=True)
    assert status == 413 and "limit of 200000 bytes" in out["error"], out
    assert server.alive()
    assert server.request("GET", "/readyz")[0] == 200


def test_unknown_model_route_and_method_are_json_errors(server):
    status, out = server.request("POST", "/v1/models/nope:predict", {"instances": []})
    assert status == 404 and out["error"] == "model 'nope' not found (this server serves 'ranker')"
    assert server.request("GET", "/v1/models/nope")[0] == 404
    status, out = server.request("GET", "/v2/whatever")
    assert status == 404 and "no such endpoint" in out["error"]
    status, out = server.request("GET", "/v1/rank")
    assert status == 405 and "error" in out


# --- TensorFlow Serving style -------------------------------------------------------------------------
def test_tf_serving_instances_and_inputs_score_like_rank(server, spec):
    rng = np.random.default_rng(4)
    queries = [make_query(spec, n, rng) for n in (4, 9)]
    expected = [server.request("POST", "/v1/rank", q)[1]["scores"] for q in queries]

    def instance(q):
        row = dict(q["context"])
        row.update({f.name: [d[f.name] for d in q["documents"]] for f in spec.example})
        return row

    status, out = server.request("POST", "/v1/models/ranker:predict", {"instances": [instance(q) for q in queries]})
    assert status == 200, out
    for got, want in zip(out["predictions"], expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    # columnar: context [batch, 1], documents [batch, list, 1] (padded), with the mask
    width = 9
    inputs = {f.name: [[q["context"][f.name]] for q in queries] for f in spec.context}
    for f in spec.example:
        inputs[f.name] = [[[d[f.name]] for d in q["documents"]] + [[0.0]] * (width - len(q["documents"]))
                          for q in queries]
    inputs[spec.mask_name] = [[i < len(q["documents"]) for i in range(width)] for q in queries]
    status, out = server.request("POST", "/v1/models/ranker:predict",
                                 {"signature_name": "serving_features", "inputs": inputs})
    assert status == 200, out
    for got, want, q in zip(out["outputs"], expected, queries):
        assert len(got) == width
        np.testing.assert_allclose(got[: len(q["documents"])], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("body,message", [
    ({"instances": [{"colour": [1.0]}]}, "instances[0]: unknown input 'colour'"),
    ({"instances": [{}]}, "instances[0]: no document features"),
    ({"signature_name": "other", "instances": []}, "signature_name"),
    ({"instances": [], "inputs": {}}, "exactly one of"),
    ({"instances": "x"}, "instances: expected a list"),
])
def test_tf_serving_bad_requests(server, body, message):
    status, out = server.request("POST", "/v1/models/ranker:predict", body)
    assert status == 422 and message in out["error"], out


def test_tf_serving_missing_required_and_non_numeric(server, spec):
    req, opt = spec.example[0].name, spec.example[1].name
    ctx = {spec.context[0].name: 1.0}
    status, out = server.request("POST", "/v1/models/ranker:predict", {"instances": [{**ctx, opt: [1.0, 2.0]}]})
    assert status == 422 and f"missing required feature {req!r}" in out["error"], out
    status, out = server.request("POST", "/v1/models/ranker:predict",
                                 {"instances": [{**ctx, req: [1.0, "x"]}]})
    assert status == 422 and f"instances[0].{req}[1]: feature {req!r}: value 'x' is not a number" in out["error"]


# --- metadata and health --------------------------------------------------------------------------------
def test_metadata_has_the_feature_spec_version_and_signature(server, model):
    status, meta = server.request("GET", "/v1/models/ranker")
    assert status == 200
    assert meta["name"] == "ranker" and meta["version"] == "1"
    assert meta["feature_spec"] == json.loads((model / "feature_spec.json").read_text())
    assert meta["source"]["path"] == str(model)
    assert meta["model_version_status"][0]["state"] == "AVAILABLE"
    assert meta["limits"] == {"max_documents": 1000, "max_queries": 100, "max_body_bytes": MAX_BODY}
    assert set(meta["signature"]["inputs"]) == {f.name for f in FeatureSpec.load(model).context
                                                + FeatureSpec.load(model).example} | {"example_list_mask"}
    assert server.request("GET", "/v1/models/ranker/metadata")[1] == meta


def test_health_and_readiness(server):
    assert server.request("GET", "/healthz") == (200, {"status": "ok"})
    status, out = server.request("GET", "/readyz")
    out = json.loads(out)
    assert status == 200 and out["status"] == "ready" and out["model"] == "ranker"
    assert out["queries_scored"] >= out["model_calls"] > 0


def test_the_server_is_still_up_after_everything(server, spec):
    assert server.alive()
    status, _ = server.request("POST", "/v1/rank", {"context": {spec.context[0].name: 1.0},
                                                     "documents": [{spec.example[0].name: 1.0}]})
    assert status == 200
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


# --- the micro-batcher, in process ---------------------------------------------------------------------
@pytest.mark.parametrize("inline_max_documents", [4096, 0])  # on the event loop's thread / in a worker thread
def test_the_batcher_groups_concurrent_requests_and_splits_results_back(inline_max_documents):
    from ranking_exp.serve.batcher import MicroBatcher
    from ranking_exp.serve.schema import Query

    calls: list[int] = []

    def score(queries):
        time.sleep(0.02)  # a model call: requests arriving meanwhile wait for the next batch
        calls.append(len(queries))
        return [np.full(q.size, float(q.size)) for q in queries]

    def query(n):
        return Query({}, {}, n)

    async def main():
        b = MicroBatcher(score, max_batch_size=8, max_wait_ms=0.0, inline_max_documents=inline_max_documents)
        await b.start()
        try:
            sizes = [[i % 5 + 1] * (1 + i % 3) for i in range(20)]  # 20 requests of 1-3 queries
            out = await asyncio.gather(*(b.submit([query(n) for n in s]) for s in sizes))
            big = await b.submit([query(2)] * 20)  # more queries than a batch: still scored
        finally:
            await b.stop()
        return sizes, out, big

    sizes, out, big = asyncio.run(main())
    for s, scores in zip(sizes, out):
        assert [a.tolist() for a in scores] == [[float(n)] * n for n in s]
    assert len(big) == 20
    assert sum(calls) == sum(map(len, sizes)) + 20
    assert len(calls) < 20  # grouped
    assert max(calls[:-1]) <= 8  # within max_batch_size, except the one oversized request


# --- start-up failures --------------------------------------------------------------------------------
def _savedmodel_without_ranking_signature(path: Path, spec_from: Path) -> Path:
    import tensorflow as tf

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(self, x):
            return 2 * x

    m = Plain()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.double})
    shutil.copy(spec_from / "feature_spec.json", path / "feature_spec.json")
    return path


@pytest.mark.parametrize("kind", ["no such dir", "not an export", "corrupt", "no signature", "bad runs uri",
                                  "bad models uri", "port in use", "bad setting", "missing model"])
def test_startup_failure_is_one_line_exit_2(kind, model, tmp_path):
    args, expected = [], ""
    if kind == "no such dir":
        args, expected = ["model=/no/such/dir"], "error: model: /no/such/dir: no such directory"
    elif kind == "not an export":
        (tmp_path / "x.txt").write_text("hello")
        args, expected = [f"model={tmp_path}"], "error: model: " + str(tmp_path) + " is not a ranking_exp export"
    elif kind == "corrupt":
        shutil.copy(model / "feature_spec.json", tmp_path)
        (tmp_path / "saved_model.pb").write_bytes(b"not a protobuf")
        args, expected = [f"model={tmp_path}"], f"error: model: {tmp_path}: cannot load the SavedModel"
    elif kind == "no signature":
        path = _savedmodel_without_ranking_signature(tmp_path / "plain", model)
        args, expected = [f"model={path}"], f"error: model: {path}: no 'serving_features' signature"
    elif kind == "bad runs uri":
        args = ["model=runs:/0123456789abcdef/model", f"tracking_uri=sqlite:///{tmp_path / 'm.db'}"]
        expected = "error: model: cannot load 'runs:/0123456789abcdef/model' from MLflow"
    elif kind == "bad models uri":
        args = ["model=models:/no_such_model@champion", f"tracking_uri=sqlite:///{tmp_path / 'm.db'}"]
        expected = "error: model: cannot load 'models:/no_such_model@champion' from MLflow"
    elif kind == "port in use":
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        args, expected = [f"model={model}", f"port={port}"], f"error: port: cannot listen on 127.0.0.1:{port}"
    elif kind == "bad setting":
        args, expected = [f"model={model}", "max_documents=0"], "error: max_documents: must be > 0"
    elif kind == "missing model":
        args, expected = [], "error: model: required but not set"
    r = run_cli(args, cwd=tmp_path, module="ranking_exp.serve", timeout=300)
    if kind == "port in use":
        held.close()
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(expected), r.stderr[-2000:]
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert "Traceback" not in r.stderr + r.stdout


def test_a_model_dir_inside_a_run_dir_names_its_run_and_default_name(trained):
    from ranking_exp.serve.model import default_name, describe_source

    work, results = trained
    model_dir = Path(results["model_dir"])
    source = describe_source(str(model_dir), model_dir, "sqlite:///mlflow.db", str(work))
    assert source["run_id"] == results["run_id"]
    assert default_name(str(model_dir), source, model_dir) == "best_model_by_metric"
    assert default_name("runs:/abc/model", {"run_id": "abc"}, model_dir) == "model"
    assert default_name("models:/my ranker@champion", {"registered_model": "my ranker"}, model_dir) == "my_ranker"


# --- MLflow URIs ---------------------------------------------------------------------------------------
def test_serves_a_registered_model_by_models_uri(trained, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    work, results = trained
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mv = mlflow.register_model(f"runs:/{results['run_id']}/model", "serve_ranker")
    MlflowClient(uri).set_registered_model_alias("serve_ranker", "champion", mv.version)

    s = Server(serve_cmd("model=models:/serve_ranker@champion", f"tracking_uri={uri}"), cwd=tmp_path,
               log=tmp_path / "server.log")
    try:
        status, meta = s.request("GET", "/v1/models/serve_ranker")
        assert status == 200, meta
        assert meta["version"] == str(mv.version) == "1"
        assert meta["source"]["run_id"] == results["run_id"]
        assert meta["source"]["registered_model"] == "serve_ranker"
        reference = Reference(Path(results["model_dir"]))
        q = make_query(reference.spec, 20, np.random.default_rng(5))
        status, out = s.request("POST", "/v1/rank", q)
        assert status == 200, out
        np.testing.assert_allclose(out["scores"], reference.scores(q["context"], q["documents"]), rtol=1e-6, atol=1e-6)
    finally:
        s.stop()


@pytest.mark.slow
def test_mlflow_models_serve_ranks_the_same(trained, tmp_path):
    work, results = trained
    reference = Reference(Path(results["model_dir"]))
    spec = reference.spec
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    s = Server([mlflow_bin, "models", "serve", "-m", f"runs:/{results['run_id']}/model", "--env-manager", "local",
                "-h", "127.0.0.1", "-p", "{port}"], cwd=work, log=tmp_path / "mlflow.log", ready_path="/ping",
               # mlflow models serve runs `uvicorn` from PATH: the one beside this Python
               env={"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    try:
        rng = np.random.default_rng(6)
        queries = [make_query(spec, n, rng) for n in (5, 11)]
        names = [f.name for f in spec.context + spec.example]
        rows = [[qid, *[q["context"].get(n, d.get(n)) for n in names]]
                for qid, q in zip(("a", "b"), queries) for d in q["documents"]]
        status, out = s.request("POST", "/invocations", {"dataframe_split": {"columns": ["qid", *names], "data": rows}})
        assert status == 200, out
        preds = out["predictions"]
        assert len(preds) == 16
        for q, part in ((queries[0], preds[:5]), (queries[1], preds[5:])):
            want = reference.scores(q["context"], q["documents"])
            np.testing.assert_allclose([p["score"] for p in part], want, rtol=1e-5, atol=1e-6)
            ranks = np.argsort(np.argsort(-want, kind="stable"), kind="stable") + 1
            assert [p["rank"] for p in part] == ranks.tolist()
    finally:
        s.stop()


# --- MQ2008: server = in-process SavedModel = predict CLI ------------------------------------------------
@pytest.mark.slow
def test_mq2008_server_scores_equal_savedmodel_and_predict_cli(mq2008_fold1, tmp_path):
    from ranking_exp.data.letor import read_letor

    r = run_cli(["dataset=letor", f"dataset.path={mq2008_fold1}", "train.epochs=1", "train.verbose=0",
                 "scorer.hidden_layer_dims=[16,8]", "tracking.log_model=false"], cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    [results] = list(tmp_path.glob("outputs/*/*/results.json"))
    model_dir = Path(json.loads(results.read_text())["model_dir"])
    test_file = mq2008_fold1 / "test.txt.gz"
    r = run_cli([f"model={model_dir}", f"input={test_file}", f"output={tmp_path / 'scores.txt'}"], cwd=tmp_path,
                module="ranking_exp.predict")
    assert r.returncode == 0, r.stderr[-3000:]
    cli_scores = np.loadtxt(tmp_path / "scores.txt")

    spec = FeatureSpec.load(model_dir)
    names = spec.example_names
    indices = [int(n[1:]) for n in names]  # LETOR features are named f<index>
    queries = [q.dense(indices)[0] for q in read_letor(test_file)]
    assert sum(len(q) for q in queries) == len(cli_scores)
    reference = Reference(model_dir)

    s = Server(serve_cmd(f"model={model_dir}"), cwd=tmp_path, log=tmp_path / "server.log")
    try:
        served = []
        for start in range(0, len(queries), 50):
            batch = [{"documents": [dict(zip(names, map(float, row))) for row in q]} for q in queries[start:start + 50]]
            status, out = s.request("POST", "/v1/rank", {"queries": batch})
            assert status == 200, out
            served.extend(np.array(res["scores"]) for res in out["results"])
    finally:
        s.stop()
    np.testing.assert_allclose(np.concatenate(served), cli_scores, rtol=1e-5, atol=1e-5)
    for q, got in list(zip(queries, served))[:: max(1, len(queries) // 25)]:
        docs = [dict(zip(names, map(float, row))) for row in q]
        np.testing.assert_allclose(got, reference.scores({}, docs), rtol=1e-5, atol=1e-6)
