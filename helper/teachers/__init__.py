"""The teachers, in one place: the zoo of published and trained teachers and its command line
(``zoo.py``; ``python -m helper.teachers``), their downloads and published figures, the
normalisation a checkpoint was trained with, the fast forward a run gives them, the cache of
their outputs and the stores it is written to, and a student run's set-up of its teachers."""
