"""The one training loop, for every stage.

Short and linear, after big_vision's ``train.py``: build the task, mesh and data; initialise the state
shape-first straight into its shardings (or restore the latest checkpoint); then call one jitted,
state-donating step per batch. Metrics are fetched only every ``log_every`` steps, so the host never
waits on the device step by step.

A run is safe to kill at any moment and to re-run with the same command: one process per workdir
(``workdir_lock``); the latest *complete* checkpoint is restored, and one that is damaged or belongs
to another config is an error, never a fresh start (``vqd_jax.checkpoint``); non-finite updates are
never applied nor saved (``nonfinite``); metrics.jsonl and TensorBoard continue the restored step's
history without repeating steps (``metrics``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from vqd_jax import sharding as sharding_lib
from vqd_jax import checkpoint as ckpt_lib
from vqd_jax.data import configured as data_config
from vqd_jax.training import metrics as metrics_lib
from vqd_jax.training import nonfinite
from vqd_jax.training import tasks as tasks_lib
from vqd_jax.training import workdir_lock

log = logging.getLogger(__name__)


def _peek(iterator) -> dict[str, Any]:
  """One batch from ``iterator`` without advancing it (the batch is only used for its shapes)."""
  state = iterator.get_state()
  batch = next(iterator)
  iterator.set_state(state)
  return batch


def _preview_copy(state: Any) -> Any:
  """``state`` with its weights whole on this host's first device (None off process 0).

  Previews are small programs that process 0 runs alone, next to the frozen autoencoder that lives
  on one device; weights sharded over the mesh would drag every device and host into sampling.
  Every process must call this (gathering across hosts is a collective).
  """
  weights = {"params": state.params, "ema_params": state.ema_params}
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    weights = multihost_utils.process_allgather(weights, tiled=True)
  if jax.process_index() != 0:
    return None
  return state.replace(opt_state=None, **jax.device_put(weights, jax.local_devices()[0]))


def keyed_train_step(task, state, batch, key):
  """``task.train_step`` with the step's key folded from ``key`` and ``state.step`` inside the
  program: an eager ``fold_in`` on the host would wait for the previous step every step."""
  return task.train_step(state, batch, jax.random.fold_in(key, state.step))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after: int | None = None) -> dict[str, float]:
  """Trains ``config.stage`` in ``workdir``, resuming from its latest checkpoint if there is one.

  Args:
    config: a config from ``configs/`` (see there for the fields).
    workdir: where checkpoints, metrics, TensorBoard logs and sample grids go (local or gs://).
    stop_after: stop (after checkpointing) once this step is reached, as a preemption would; the
      schedule still follows ``config.train.num_steps``. Used by the kill-and-resume tests.

  Returns:
    The last logged metrics.

  Raises:
    workdir_lock.WorkdirLockError: another training process uses ``workdir``.
    vqd_jax.checkpoint.CheckpointError: a checkpoint cannot be restored or saved.
    nonfinite.NonFiniteError: the loss or gradients became NaN/inf (see ``train.nonfinite``).
  """
  # Before anything is built or written: a preset without data says what to set.
  data_config.check_data_config(config.data, config.stage)
  nonfinite.check_config(config.train)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
  with workdir_lock.hold(workdir, jax.process_index()):
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                         async_save=config.train.async_checkpoints)
    try:
      metrics = _train(config, workdir, checkpointer, stop_after)
    except BaseException:
      _close_quietly(checkpointer)
      raise
    checkpointer.close()  # a failed last asynchronous save raises here
  return metrics


def _close_quietly(checkpointer: ckpt_lib.Checkpointer) -> None:
  """Lets a save in flight finish without hiding the error that is already on its way up."""
  try:
    checkpointer.close()
  except Exception as e:  # pylint: disable=broad-except
    log.error("While stopping: %s", e)


def _last_good_checkpoint(checkpointer: ckpt_lib.Checkpointer) -> int | None:
  try:
    checkpointer.wait()
  except ckpt_lib.CheckpointError as e:
    log.error("%s", e)
  return checkpointer.latest_step()


def _restore_or_init(task, checkpointer, iterator, config, config_json, init_key, example,
                     state_shardings, abstract_state, workdir):
  """``(state, start step)``: the chosen checkpoint restored, or a fresh (warm-started) state."""
  start = checkpointer.resume_step(config.train.restore_step)
  if start is None:
    init = jax.jit(lambda k, b: nn.meta.unbox(task.init_state(k, b)),
                   out_shardings=state_shardings)
    state = init(init_key, example)
    if hasattr(task, "warm_start"):  # a run that starts from another run's weights
      state = task.warm_start(state)
    log.info("Initialised a fresh %s run in %s.", config.stage, workdir)
    return state, 0
  state, data_state = checkpointer.restore(start, abstract_state, config_json)
  if data_state:
    iterator.set_state(data_state)
  log.info("Resumed %s from step %d in %s.", config.stage, start, workdir)
  return state, start


def _train(config, workdir, checkpointer, stop_after):
  is_main = jax.process_index() == 0
  task = tasks_lib.make_task(config, workdir)
  mesh = sharding_lib.make_mesh(dict(config.mesh))
  rules = sharding_lib.rules_from_config(config.sharding_rules)
  # Each host loads the rows of every global batch that its devices hold.
  iterator = task.make_train_iterator(*sharding_lib.process_batch_slot(mesh))
  config_json = json.loads(config.to_json_best_effort())
  num_steps = int(config.train.num_steps)
  key = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(key)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    example = sharding_lib.global_batch(_peek(iterator), mesh)
    boxed_shapes = jax.eval_shape(task.init_state, init_key, example)
    state_shardings = sharding_lib.tree_shardings(boxed_shapes, mesh, rules)
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        sharding_lib.strip_boxes(boxed_shapes), state_shardings)
    state, start = _restore_or_init(task, checkpointer, iterator, config, config_json, init_key,
                                    example, state_shardings, abstract_state, workdir)

    repl = sharding_lib.replicated(mesh)
    step_fn = jax.jit(
        functools.partial(nonfinite.guarded, functools.partial(keyed_train_step, task)),
        donate_argnums=(0,),
        in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh), repl),
        out_shardings=(state_shardings, repl))
    # The history after the restored step is dropped: those steps are trained again.
    writer = metrics_lib.MetricWriter(workdir, resume_step=start)
    try:
      return _steps(config, workdir, task, checkpointer, writer, iterator, mesh, step_fn, state,
                    start, train_key, config_json, stop_after, is_main)
    finally:
      writer.close()


def _steps(config, workdir, task, checkpointer, writer, iterator, mesh, step_fn, state, start,
           train_key, config_json, stop_after, is_main) -> dict[str, float]:
  """The training loop proper, from ``start`` to ``num_steps`` (or ``stop_after``)."""
  cfg = config.train
  num_steps = int(cfg.num_steps)
  monitor = nonfinite.NonfiniteMonitor(cfg.nonfinite, cfg.max_nonfinite_steps,
                                       lambda: _last_good_checkpoint(checkpointer))
  buffer = metrics_lib.MetricBuffer()
  bar = metrics_lib.progress_bar(num_steps, start, config.stage, is_main)
  last_metrics: dict[str, float] = {}
  t_start = time.perf_counter()
  step = start
  try:  # an error ends the bar's line first, so its message starts a line of its own
    while step < num_steps:
      batch = sharding_lib.global_batch(next(iterator), mesh)
      state, metrics = step_fn(state, batch, train_key)
      step += 1
      buffer.add(metrics)
      monitor.add(step, metrics)
      bar.update(1)
      done = step == num_steps or (stop_after is not None and step >= stop_after)
      if step % cfg.log_every == 0 or done:
        last_metrics = buffer.flush()
        last_metrics["minutes"] = (time.perf_counter() - t_start) / 60
        writer.write_scalars(step, last_metrics)
        bar.set_postfix(loss=f"{last_metrics.get('loss', float('nan')):.4f}",
                        sps=f"{last_metrics['steps_per_sec']:.2f}")
        monitor.check()
      if cfg.sample_every and (step % cfg.sample_every == 0 or done):
        preview_state = _preview_copy(state)
        if is_main:
          with jax.set_mesh(None):  # a single-device program, outside the training mesh
            task.write_previews(preview_state, step, writer, os.path.join(workdir, "previews"))
      preempted = checkpointer.reached_preemption(step)
      if step % cfg.ckpt_every == 0 or done or preempted:
        monitor.check()  # a non-finite step since the last log is never saved
        writer.flush()  # a kill after this save must not lose the history up to its step
        checkpointer.save(step, state, iterator.get_state(), config_json, force=True)
      if done or preempted:
        break
  finally:
    bar.close()
  return last_metrics
