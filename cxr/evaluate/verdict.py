"""The verdict said plainly: does stacking beat the best single member, and soft voting?

Takes: the methods' metrics and McNemar's tests. Makes: (stacking helps, a two-sentence verdict).
"""

from __future__ import annotations

from cxr.evaluate.stats import McNemarResult
from cxr.evaluate.types import SOFT, STACKING, MethodResult


def _pp(d: float) -> str:
    return f"{abs(d) * 100:.1f} percentage points"


def verdict(
    result_by_key: dict[str, MethodResult], best: str, tests: dict[str, McNemarResult], alpha: float
) -> tuple[bool, str]:
    """(stacking helps, plain-language verdict). Helps = more accurate than the best member and p < alpha."""
    st = result_by_key[STACKING].metrics
    bm = result_by_key[f"member:{best}"].metrics
    sv = result_by_key[SOFT].metrics
    t_best, t_soft = tests["stacking_vs_best_member"], tests["stacking_vs_soft_vote"]
    d_best = st.accuracy - bm.accuracy
    helps = d_best > 0 and t_best.p_value < alpha
    accs = f"{st.accuracy:.1%} vs {bm.accuracy:.1%}; McNemar p = {t_best.p_value:.3g}"
    if helps:
        first = (
            f"Stacking helps: it is {_pp(d_best)} more accurate than the best single member, {best} ({accs})."
        )
    elif d_best > 0:
        first = (
            f"Stacking does not significantly help: it is {_pp(d_best)} more accurate than the best single member, "
            f"{best} ({accs} >= {alpha:g}), a difference within chance."
        )
    elif d_best == 0:
        first = (
            f"Stacking does not help: it is exactly as accurate as the best single member, {best} ({accs})."
        )
    else:
        first = f"Stacking does not help: it is {_pp(d_best)} less accurate than the best single member, {best} ({accs})."
    d_soft = st.accuracy - sv.accuracy
    p_soft = f"McNemar p = {t_soft.p_value:.3g}"
    if d_soft > 0:
        second = f"Against soft voting it is {_pp(d_soft)} better ({p_soft}{'' if t_soft.p_value < alpha else ', not significant'})."
    elif d_soft == 0:
        second = f"Soft voting, which needs no training, is exactly as accurate ({p_soft})."
    else:
        second = (
            f"Soft voting, which needs no training, is {_pp(d_soft)} more accurate ({p_soft}"
            f"{'' if t_soft.p_value < alpha else ', not significant'})."
        )
    return helps, f"{first} {second}"
