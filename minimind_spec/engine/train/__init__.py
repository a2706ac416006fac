"""Training: the engine half of the stage registry (`stages/`: each kind's factory returns its
data, pure objective and watches), the one loop every stage runs (`loop`: set-up, restore, step,
evaluate, save), precision (`precision`), the optimizer and schedule (`optim`), checkpoints
(`checkpoint`), data parallelism (`distributed`), the watches (`monitors`), the throughput probe
(`probe`), plots (`report`), and `run`, which executes a `TrainingPlan` stage after stage."""
