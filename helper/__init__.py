"""What the entry scripts build a run from, top-down:

- the command-line programs: ``report`` (tables of runs, ``--cost``), ``table`` (a table's
  rows and their status), ``slurm`` (its launcher), ``export`` (a deployable student),
  ``cost`` (parameters, MACs, latency), ``fkd_labels`` (FKD's stored teacher outputs), and
  ``python -m helper.teachers`` (the teacher zoo);
- ``run/``: one training run (options, loop, checkpoints, resume, run folder, logs,
  processes, precision, --evaluate and the linear probe);
- ``teachers/``: the teachers (zoo, downloads, published figures, normalisation, fast forward,
  cache, stores, a student run's set-up);
- ``core/``: the leaves every layer imports (errors, argparse types, weight files, option
  groups, the user's own code), importing nothing else of the toolbox.
"""
