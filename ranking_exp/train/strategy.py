"""The ``strategy`` group: which ``tf.distribute`` strategy a run trains under.

``make_strategy`` must run before TensorFlow executes its first op (multi-worker strategies
configure the runtime), so the experiment calls it first thing.
"""
from __future__ import annotations

import socket
import urllib.parse

import tensorflow as tf

from ranking_exp import cluster as cluster_lib
from ranking_exp.config import StrategyConfig
from ranking_exp.errors import ConfigError, UserError


class NoTPU(UserError):
    """strategy=tpu without a reachable TPU."""


def make_strategy(cfg: StrategyConfig) -> tf.distribute.Strategy | None:
    """None means TensorFlow's default (no distribution)."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "mirrored":
        # All local GPUs when present, else the CPU.
        return tf.distribute.MirroredStrategy(devices=list(cfg.devices) if cfg.devices else None)
    if cfg.kind == "multi_worker_mirrored":
        return _multi_worker(cfg)
    if cfg.kind == "tpu":
        return _tpu(cfg)
    raise ConfigError(f"strategy: strategy={cfg.kind} is not supported")


def _multi_worker(cfg: StrategyConfig) -> tf.distribute.MultiWorkerMirroredStrategy:
    cluster = cfg.cluster()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=cfg.collective_timeout)
    if cluster is None:  # one worker, its local devices
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    cluster_lib.check_port_free(cluster)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.jobs), task_type=cluster.task_type, task_id=cluster.task_index, rpc_layer="grpc")
    watchdog = cluster_lib.ConnectWatchdog(cluster, cfg.connect_timeout)  # TensorFlow would wait forever
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    finally:
        watchdog.done()


def _tpu(cfg: StrategyConfig) -> tf.distribute.TPUStrategy:
    address = cfg.tpu.strip()
    if address.startswith("grpc://"):  # check the address first: TensorFlow would wait on it for minutes
        parsed = urllib.parse.urlparse(address)
        try:
            with socket.create_connection((parsed.hostname, parsed.port or 8470), timeout=5.0):
                pass
        except (OSError, ValueError) as e:
            raise NoTPU(f"strategy.tpu: no TPU found at {address} ({getattr(e, 'strerror', None) or e})") from None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="" if address == "local" else address)
        if address not in ("", "local"):
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"at {address!r}" if address else "on this machine (set strategy.tpu=grpc://HOST:8470 or a TPU name)"
        raise NoTPU(f"strategy.tpu: no TPU found {where} ({reason})") from None


def num_workers(strategy: tf.distribute.Strategy | None) -> int:
    """Workers reading input (1 unless multi-worker)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return max(1, strategy.extended._num_workers)  # noqa: SLF001 (no public accessor in TF 2.15)
    return 1
