"""Whether the paper's claims hold in our numbers, judged by direction rather than by distance from its figures:
an accuracy clearly above another (or above chance) by the test set's sampling error (and, for a set with trainees,
by their spread over seeds), and Figure 3's relation by Pearson's r and its one-sided significance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from notbugs.report_paper import CHANCE, ROBUST_EPS, SET_LABEL
from notbugs.report_tables import Measured, Spread, TransferPoint, setting_of

# A difference between two accuracies counts when it exceeds this many standard errors of the test-set
# sampling: against chance (10%), 3 are 0.9 points at 10,000 test images and 2.8 at 1,000; between two
# accuracies near 50% over 1,000 images each, 6.7.
CLEAR_SE = 3.0
# The one-sided 5% critical value of Student's t by degrees of freedom: for Figure 3's r (n points: n - 2) and for
# a claim over a set's trainees (n of them: n - 1; a spread of three models is rough, and the normal 1.645 would
# overstate what it shows). Above 10 the value for 10, which is a little strict.
T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812}
# Figure 3's relation is judged over at least this many architectures: two points always correlate
# perfectly (the paper has five).
MIN_ARCHS = 4


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims and whether our numbers bear it out (holds None: cannot tell yet)."""

    key: str
    text: str
    holds: bool | None
    detail: str


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r, only over MIN_ARCHS points or more (fewer always correlate almost perfectly)."""
    if len(xs) < MIN_ARCHS or np.std(xs) == 0 or np.std(ys) == 0:
        return None
    return float(np.corrcoef(xs, ys)[0, 1])


def clearly_above(a: float, n_a: int, b: float, n_b: int | None = None) -> bool:
    """Whether accuracy a (percent, over n_a test images) exceeds b by more than CLEAR_SE standard errors of
    the sampling: b is another accuracy over n_b images (a two-proportion test), or an exact rate such as
    chance (n_b None)."""
    pa, pb = a / 100.0, b / 100.0
    if n_b is None:
        se = math.sqrt(pb * (1.0 - pb) / n_a)
    else:
        pooled = (pa * n_a + pb * n_b) / (n_a + n_b)
        se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    return pa - pb > CLEAR_SE * se


def seeds_lower_bound(spread: Spread | None) -> float | None:
    """The one-sided 95% lower bound (percent) of the clean accuracy's mean over a set's trainees, from their spread
    over seeds (Student's t); None without two or more scored trainees."""
    if spread is None or spread.n < 2 or spread.clean_sd is None:
        return None
    t = T95[min(spread.n - 1, 10)]
    return spread.clean_mean - t * spread.clean_sd / math.sqrt(spread.n)


def _above_chance(row: Measured) -> tuple[bool, str]:
    """Whether the set's model is clearly above chance by the test set's sampling error and, where the set has
    trainees, whether their mean is by their spread over seeds too; and how it was judged."""
    holds = clearly_above(row.clean, row.clean_n, CHANCE)
    detail = f"{row.clean:.1f} (chance {CHANCE:.0f})"
    bound = seeds_lower_bound(row.spread)
    if bound is not None:
        holds = holds and bound > CHANCE
        detail += (f"; over its {row.spread.n} trainees {row.spread.clean_mean:.1f} ± {row.spread.clean_sd:.1f}, "
                   f"one-sided 95% lower bound {bound:.1f}")
    return holds, detail


def _robust_pair(evals: pd.DataFrame, a: str | None, b: str | None) -> tuple | None:
    """The robust accuracies (percent, n) of models a and b at eps ROBUST_EPS under the strongest attack setting
    both were scored with, and that setting's steps: (a %, a n, b %, b n, steps), or None. Each model's own
    strongest would set, say, a 10-step score against a weekly re-evaluation's 100-step one."""
    def settings(model_id):
        found = evals[(evals["model_id"] == model_id) & (evals["attack"] == "pgd_l2")]
        found = found[np.isclose(found["eps"].astype(float), ROBUST_EPS)]
        return {setting_of(e): e for _, e in found.iterrows()}

    if a is None or b is None:
        return None
    sa, sb = settings(a), settings(b)
    shared = sorted(set(sa) & set(sb), key=lambda k: (k[0] * k[1], k))
    if not shared:
        return None
    ea, eb = sa[shared[-1]], sb[shared[-1]]
    return 100.0 * float(ea["accuracy"]), int(ea["n"]), 100.0 * float(eb["accuracy"]), int(eb["n"]), shared[-1][0]


def critical_r(n: int) -> float:
    """The smallest Pearson r over n points that is positive at the one-sided 5% level."""
    t = T95[min(n - 2, 10)]
    return t / math.sqrt(n - 2 + t * t)


def relation_holds(r: float, n: int) -> bool | None:
    """Figure 3's claim from Pearson's r over n points: True when significantly positive, False when not
    positive, None when positive but not significantly."""
    if r >= critical_r(n):
        return True
    return False if r <= 0 else None


def judge_claims(fig2: list[Measured], tab1: list[Measured], points: list[TransferPoint], r: float | None,
                 evals: pd.DataFrame) -> list[Claim]:
    """The paper's CIFAR-10 claims, judged by direction rather than by distance from its figures: a weaker
    reproduction (a CPU profile, a smaller model) can bear every claim out while missing every number."""
    m = {row.ref.key: row for row in fig2 + tab1}
    standard, d_r, d_nr = m["standard"], m["d_r"], m["d_nr"]
    claims = []

    text = ("Robust features alone give robustness: standard training on D_R gives a more robust model than "
            "standard training on D")
    pair = _robust_pair(evals, d_r.model_id, standard.model_id)
    if pair is None:
        claims.append(Claim("d_r_robust", text, None, "needs the robust accuracy of D_R's model and of the standard "
                                                      "one under one attack setting"))
    else:
        a, na, b, nb, steps = pair
        claims.append(Claim("d_r_robust", text, clearly_above(a, na, b, nb),
                            f"robust accuracy ({steps} steps): D_R {a:.1f}, standard {b:.1f}"))

    text = ("Non-robust features alone give accuracy but no robustness: D_NR's model is well above chance on the "
            "test set and less robust than D_R's")
    pair = _robust_pair(evals, d_r.model_id, d_nr.model_id)
    if d_nr.clean is None or pair is None:
        claims.append(Claim("d_nr", text, None, "needs D_NR's clean accuracy, and D_NR's and D_R's robust accuracy "
                                                "under one attack setting"))
    else:
        a, na, b, nb, steps = pair
        above, clean = _above_chance(d_nr)
        holds = above and clearly_above(a, na, b, nb)
        claims.append(Claim("d_nr", text, holds, f"D_NR clean {clean}; robust ({steps} steps): D_NR {b:.1f}, "
                                                 f"D_R {a:.1f}"))

    for key, how in (("d_rand", "towards a random class"), ("d_det", "towards the next class")):
        row = m[key]
        text = (f"Non-robust features suffice for generalisation: a model trained only on adversarial examples "
                f"{how}, labelled as their target ({SET_LABEL[key]}), is above chance on the real test set")
        if row.clean is None:
            claims.append(Claim(key, text, None, f"needs the clean accuracy of {SET_LABEL[key]}'s model"))
        else:
            claims.append(Claim(key, text, *_above_chance(row)))

    complete = [p for p in points if p.success is not None and p.d_det_acc is not None]
    text = ("Transferability goes with learning from non-robust features: architectures the attack transfers to "
            "more learn more from D_det (Figure 3)")
    if r is None:
        claims.append(Claim("figure3", text, None, f"{len(complete)} architecture(s) with both numbers: at least "
                                                   f"{MIN_ARCHS} with some spread are needed to judge (the paper "
                                                   "has 5)"))
    else:
        claims.append(Claim("figure3", text, relation_holds(r, len(complete)),
                            f"Pearson r = {r:+.2f} over {len(complete)} architectures (positive at the one-sided 5% "
                            f"level from {critical_r(len(complete)):.2f})"))
    return claims
