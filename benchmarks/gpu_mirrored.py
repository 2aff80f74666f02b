"""strategy=mirrored on a GPU machine: is the GPU used, and what does it buy over the CPU?

Runs the same ``python -m ranking_exp strategy=mirrored`` training twice on a larger synthetic
set (DNN 1024-512-256, 128 lists per batch): once with the GPUs hidden (``CUDA_VISIBLE_DEVICES=``,
MirroredStrategy on the CPU) and once with them visible, and reads each run's
``train_docs_per_sec`` (real documents per second of the training loop, steady state: the
median over epochs after the first) from the MLflow run it records. During the GPU run it samples
``nvidia-smi`` to show the GPU is really used (peak utilization and memory). On a machine without
an NVIDIA GPU, or whose TensorFlow cannot see one, it records the CPU run and says why there is no
GPU run. Writes benchmarks/results/gpu_mirrored.json and prints a table.

    python benchmarks/gpu_mirrored.py [--lists 20000] [--max-docs 200] [--epochs 4]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "gpu_mirrored.json"


def visible_gpus(env: dict) -> list[str]:
    code = "import tensorflow as tf; print('GPUS', [d.name for d in tf.config.list_physical_devices('GPU')])"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    line = [x for x in r.stdout.splitlines() if x.startswith("GPUS")]
    return eval(line[0][5:]) if line else []  # noqa: S307 (our own print of a list of names)


class GpuSampler(threading.Thread):
    """Peak utilization (%) and memory (MiB) of GPU 0 from nvidia-smi, every 0.5 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.util, self.mem, self._stop = 0, 0, threading.Event()

    def run(self):
        while not self._stop.is_set():
            r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                "--id=0"], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip():
                u, m = (int(float(x)) for x in r.stdout.strip().split(","))
                self.util, self.mem = max(self.util, u), max(self.mem, m)
            self._stop.wait(0.5)

    def stop(self):
        self._stop.set()
        self.join()


def train(work: Path, env: dict, args) -> dict:
    work.mkdir(parents=True)
    db = work / "mlflow.db"
    cmd = [sys.executable, "-m", "ranking_exp", "strategy=mirrored", f"dataset.num_train={args.lists}",
           "dataset.num_vali=500", "dataset.num_test=50", f"dataset.max_docs={args.max_docs}",
           "scorer.hidden_layer_dims=[1024,512,256]", "train.batch_size=128", f"train.epochs={args.epochs}",
           "train.verbose=0", f"tracking.uri=sqlite:///{db}", f"hydra.run.dir={work / 'run'}", "tracking.log_model=false"]
    started = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"training failed:\n{r.stderr[-3000:]}")
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("ranking_exp").experiment_id])[0]
    speed = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_docs_per_sec"), key=lambda m: m.step)]
    return {"docs_per_sec_per_epoch": speed, "docs_per_sec_steady": statistics.median(speed[1:] or speed),
            "best_val_ndcg_10": run.data.metrics.get("best_val_ndcg_10"), "wall_seconds": time.perf_counter() - started}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lists", type=int, default=20000)
    p.add_argument("--max-docs", type=int, default=200)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    work = Path(tempfile.mkdtemp(prefix="gpu_mirrored-"))
    result: dict = {"setup": vars(args) | {"out": str(args.out)}, "nvidia_smi": bool(shutil.which("nvidia-smi"))}
    gpus = visible_gpus(base)
    result["gpus_seen_by_tensorflow"] = gpus
    result["cpu"] = train(work / "cpu", {**base, "CUDA_VISIBLE_DEVICES": ""}, args)
    if gpus:
        sampler = GpuSampler() if result["nvidia_smi"] else None
        if sampler:
            sampler.start()
        result["gpu"] = train(work / "gpu", base, args)
        if sampler:
            sampler.stop()
            result["gpu"].update(peak_utilization_pct=sampler.util, peak_memory_mib=sampler.mem)
        result["speedup"] = result["gpu"]["docs_per_sec_steady"] / result["cpu"]["docs_per_sec_steady"]
    else:
        result["no_gpu_run"] = ("TensorFlow sees no GPU here" + ("" if result["nvidia_smi"] else " (no nvidia-smi)")
                                + "; TF 2.15 needs the CUDA 12 libraries (pip install 'tensorflow[and-cuda]==2.15.*')")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'device':<6} {'docs/s steady':>14} {'best val NDCG@10':>17} {'peak GPU util':>14}")
    for k in ("cpu", "gpu"):
        if k in result:
            r = result[k]
            util = f"{r['peak_utilization_pct']}%" if "peak_utilization_pct" in r else ""
            print(f"{k:<6} {r['docs_per_sec_steady']:>14,.0f} {r['best_val_ndcg_10']:>17.4f} {util:>14}")
    print(result.get("no_gpu_run", f"GPU / CPU: {result.get('speedup', 0):.1f}x"))


if __name__ == "__main__":
    main()
