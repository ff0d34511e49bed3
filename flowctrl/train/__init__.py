"""Training: one engine, several tasks. Import-light (nothing heavy is imported here).

- :mod:`flowctrl.train.engine` — the one loop every run goes through (:func:`~flowctrl.train.engine.run`):
  accelerate setup, start / bit-exact resume, checkpoints, optimizer step, LR schedule, metrics, time limit,
  gathering sharded (FSDP / ZeRO-3) weights; :class:`~flowctrl.train.engine.TrainTask` is what a task adds.
- :mod:`flowctrl.train.tasks` — the tasks (``codec``, ``refiner``, ``fgm``, ``video``: models, data, loss,
  final save) and the ``flowctrl train <command>`` registry (``TASKS``, ``COMMANDS``).
- configs: :mod:`flowctrl.train.config` (``flowctrl train flow``, ``model:`` picks the stage-1 task) and
  :mod:`flowctrl.train.video_loop` (``flowctrl train video``); both modules also keep the entry points
  ``train(cfg, …)`` and the names importable from them before the engine existed.
- data: :mod:`~flowctrl.train.data` (stage-1 flows and sparse conditions), :mod:`~flowctrl.train.video_data`
  (stage-2 clips), :mod:`~flowctrl.train.scenes` (synthetic 3D scenes with exact flow),
  :mod:`~flowctrl.train.shards` (``flowctrl prepare-data`` output); :mod:`~flowctrl.train.losses` (shared terms).
"""
