"""One training run: its options and configuration, the loop and its stages, checkpoints and
--resume, the run folder and its lock, logs, processes and precision, and --evaluate and the
linear probe of a checkpoint."""
