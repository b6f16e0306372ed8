"""notbugs: "Adversarial Examples Are Not Bugs, They Are Features" (Ilyas et al., 2019) on CIFAR-10.

The science lives here as a plain library (no Prefect, no DVC): data, models, attacks, training,
construction of D_R / D_NR / D_rand / D_det, evaluation and result tables. `notbugs.cli` runs each
stage from the command line; `flows/` and `dvc.yaml` are thin layers over the same functions.
"""

__version__ = "0.1.0"
