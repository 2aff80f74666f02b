"""The ``strategy`` group: which ``tf.distribute`` strategy a run trains under.

``make_strategy`` must run before TensorFlow executes its first op (multi-worker strategies
configure the runtime), so the experiment calls it first thing.
"""
from __future__ import annotations

import os
import socket
import sys
import urllib.parse

import tensorflow as tf

from ranking_exp import cluster as cluster_lib
from ranking_exp.config import PartitionerConfig, StrategyConfig
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
    if cfg.kind == "parameter_server":
        return _parameter_server(cfg)
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


def is_parameter_server(strategy: tf.distribute.Strategy | None) -> bool:
    return isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)


def make_partitioner(cfg: PartitionerConfig, num_ps: int):
    """``strategy.variable_partitioner`` as a ``tf.distribute.experimental.partitioners`` object."""
    partitioners = tf.distribute.experimental.partitioners
    if cfg.kind == "none":
        return None
    if cfg.kind == "fixed_shards":
        return partitioners.FixedShardsPartitioner(num_shards=cfg.num_shards)
    if cfg.kind == "min_size_max_shards":
        return partitioners.MinSizePartitioner(min_shard_bytes=cfg.min_shard_bytes,
                                               max_shards=cfg.max_shards or num_ps,
                                               bytes_per_string=cfg.bytes_per_string)
    if cfg.kind == "max_size":
        return partitioners.MaxSizePartitioner(max_shard_bytes=cfg.max_shard_bytes, max_shards=cfg.max_shards,
                                               bytes_per_string=cfg.bytes_per_string)
    raise ConfigError(f"strategy.variable_partitioner.kind: {cfg.kind!r} is not supported")


def _parameter_server(cfg: StrategyConfig) -> tf.distribute.experimental.ParameterServerStrategy:
    """The coordinator's strategy (the ``chief`` task). A ``worker`` or ``ps`` task of the cluster
    runs its server instead and never returns (TensorFlow's pattern: they only serve)."""
    cluster = cfg.cluster()
    if cluster.task_type != "chief":
        serve_forever(cluster)
    cluster_lib.check_port_free(cluster)
    # The coordinator gives up on an unreachable worker at once and reschedules its steps on the
    # others, rather than waiting in gRPC (TensorFlow's advice for parameter-server training).
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    cluster_lib.wait_for_peers(cluster, cfg.connect_timeout)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.jobs), task_type="chief", task_id=0, rpc_layer="grpc")
    partitioner = make_partitioner(cfg.variable_partitioner, len(cluster.jobs["ps"]))
    watchdog = cluster_lib.ConnectWatchdog(cluster, cfg.connect_timeout)  # TensorFlow would wait forever
    try:
        return tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    finally:
        watchdog.done()


def serve_forever(cluster: cluster_lib.Cluster, threads: int | None = None) -> None:
    """Runs this ``worker`` or ``ps`` task's server until the process is killed: it executes what
    the coordinator sends (training steps, variables); it never ends by itself."""
    cluster_lib.check_port_free(cluster)
    config = None
    if threads:
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster.jobs), job_name=cluster.task_type,
                                  task_index=cluster.task_index, protocol="grpc", config=config, start=True)
    print(f"{cluster.task_type}[{cluster.task_index}] serving at {cluster.address} (parameter_server cluster from "
          f"{cluster.source}); stop it when the coordinator is done", file=sys.stderr, flush=True)
    server.join()
    raise SystemExit(0)  # join() returns only when the server is stopped


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
    """Workers reading input (1 unless multi-worker): under parameter_server, the shards of an
    exact evaluation (one per worker; the training input is every worker's own, unsharded)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or is_parameter_server(strategy):
        return max(1, strategy.extended._num_workers)  # noqa: SLF001 (no public accessor in TF 2.15)
    return 1
