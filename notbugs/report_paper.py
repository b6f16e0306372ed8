"""The paper's side of the report: its claim in brief, its CIFAR-10 numbers (Figure 2, Table 1) with the
attack setting they were measured at, and the labels of the training sets. notbugs/report.py sets our numbers
beside these."""

from __future__ import annotations

from dataclasses import dataclass

from notbugs.sets import SETS

PAPER_CLAIM = (
    "Ilyas et al. (2019) argue that adversarial examples are not bugs but features: a dataset's "
    "predictive signal splits into robust features, which survive a small l2 perturbation, and "
    "non-robust ones, which are predictive yet brittle and invisible to humans. On CIFAR-10 they "
    "build new training sets from the representations of a robust and a standard model (D_R, D_NR) "
    "and from targeted adversarial examples relabelled as their target (D_rand, D_det), train "
    "ordinary classifiers on them and test on the real test set. Training on D_R gives robustness "
    "without adversarial training; training on D_NR gives good accuracy but none; and models "
    "trained only on mislabelled adversarial examples (D_rand, D_det) still generalise to the "
    "correctly labelled test set, so the perturbations carry real, transferable features."
)

ROBUST_EPS = 0.25  # the paper's Figure 2 legend: l2 PGD at eps 0.25
CHANCE = 10.0  # percent: ten balanced classes
CONSTRUCTED = tuple(SETS)  # the constructed sets (notbugs/sets.py), in the paper's order
SET_LABEL = {"d": "D", **{name: s.label for name, s in SETS.items()}}  # the original training set, and each built one


@dataclass(frozen=True)
class PaperRow:
    """One reference result: which model to look up and what the paper reports for it (percent)."""

    key: str
    training: str  # standard | adversarial
    train_set: str  # "d" or a constructed set (notbugs/sets.py)
    clean: float | None
    robust: float | None
    source: str
    # The paper's point for this row is that robust accuracy is near zero, so a robust accuracy well
    # above the paper's contradicts the result rather than beating it.
    robust_near_zero: bool = False
    robust_approx: bool = False  # the paper gives the robust accuracy as "~0", not as a figure


FIGURE2 = (
    PaperRow("standard", "standard", "d", 95.3, 4.5, "paper Fig. 2 / Table 7", robust_near_zero=True),
    PaperRow("adversarial", "adversarial", "d", 90.8, 82.3, "authors' released checkpoint"),
    PaperRow("d_r", "standard", "d_r", 84.1, 48.3, "paper Fig. 2"),
    PaperRow("d_nr", "standard", "d_nr", 87.7, 0.8, "paper Fig. 2", robust_near_zero=True),
)
TABLE1 = (
    PaperRow("d", "standard", "d", 95.3, None, "paper Table 1"),
    PaperRow("d_rand", "standard", "d_rand", 63.3, 0.0, "paper Table 1", robust_near_zero=True, robust_approx=True),
    PaperRow("d_det", "standard", "d_det", 43.7, 0.0, "paper Table 1", robust_near_zero=True, robust_approx=True),
)


def row_label(ref: PaperRow) -> str:
    """"Standard training on D_R": how the row's model was trained, and on which set."""
    return f"{ref.training.capitalize()} training on {SET_LABEL[ref.train_set]}"


def bar_group(ref: PaperRow) -> str:
    """The row's bar group in Figure 2: the training where the set is D ("adversarial (D)"), else the set."""
    return f"{ref.training} ({SET_LABEL['d']})" if ref.train_set == "d" else SET_LABEL[ref.train_set]
