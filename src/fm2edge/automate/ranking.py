"""How `fm2edge auto` scores and ranks its candidates and chooses what it ships: a validation score (or agreement
with the teacher on held-out images), ties that validation's noise cannot separate, and the most accurate (model,
precision) that meets the budgets."""

from __future__ import annotations

import math

from fm2edge.automate.measure import Candidate
from fm2edge.automate.sizes import within_budget
from fm2edge.config import ExportConfig

# Most share of the images checked on which a pretrained student's graph may answer otherwise than its fp32 graph
# and still win a validation tie by its larger input (:func:`choose`): the drop past which an export warns
# (--export.max_int8_drop, in points)
FAITHFUL_DROP = ExportConfig().max_int8_drop / 100
# A candidate trailing the leader after a rung by more than this, beyond what the noise of the images it was scored
# on explains (99%), is left behind even where the halving would keep it: its place in the next rung buys epochs
# it cannot turn into a win, and the time goes to the others. Small CNNs from scratch trailed the Lite0 students by
# 20-25 points after 4-6 epochs on the cat/dog photos and by as much after 30; the CIFAR-10 small CNNs stayed within
# a point of each other.
HOPELESS_GAP = 0.10
Z_99 = 2.576


METRIC_KEYS = {"accuracy": "val_acc", "balanced_accuracy": "val_balanced_acc"}  # --auto.metric: its figure
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}  # and its name in messages


def val_score(figures: dict, metric: str) -> float | None:
    """The --auto.metric figure of a stage's validation ``figures`` (``val_acc``, ``val_balanced_acc``)."""
    return figures.get(METRIC_KEYS[metric])


def score(t: dict) -> float:
    """What ranks a trained candidate: its agreement with the teacher on the held-out images where it has one,
    else its validation score (``val_score``: --auto.metric's figure; validation accuracy where it has none)."""
    return t.get("teacher_agreement", graph_score(t))


def graph_score(o: dict) -> float:
    """An entry's --auto.metric figure on validation (``val_score``), its validation accuracy where it has none (a
    stage cached before the figure was recorded)."""
    return o["val_acc"] if o.get("val_score") is None else o["val_score"]


def rank(trained: list[dict], within: float | None = None) -> list[dict]:
    """Best first on :func:`score` (agreement with the teacher on the held-out unlabelled images where validation was
    too small to rank and there are such images, else validation accuracy); ties (common on small validation
    splits) to the higher validation accuracy, then to the lower validation loss.

    ``within`` (:func:`tie_width`): where validation is too small to rank and nothing else ranks, scores within it of
    the best are a tie, which goes first to the candidates that start pretrained: the prior the studies measured
    (from random weights, students trailed pretrained ones by 20-25 points on small photo folders), where six
    validation images would otherwise choose (a from-scratch CNN scoring 6 of 6 there was chosen over a pretrained
    one scoring 5 of 6, and scored 83% on the test photos against the teacher's 94%); among those, the larger
    input first (a pretrained backbone scores higher with more pixels below the size it was pretrained at: see
    :mod:`fm2edge.automate.sizes`)."""
    best = max((score(t) for t in trained), default=0.0)

    def key(t: dict) -> tuple:
        tied, first = tie_to_pretrained(score(t), best, within, t.get("candidate", ""))
        size = Candidate.parse(t["candidate"]).size if first else 0
        return (not tied, not first, -size, -score(t), -t["val_acc"],
                t["val_loss"] if t["val_loss"] is not None else float("inf"))

    return sorted(trained, key=key)


def tie_to_pretrained(value: float, best: float, within: float | None, candidate: str) -> tuple[bool, bool]:
    """(``value`` ties with ``best``, and ``candidate`` starts pretrained and ties): the leading keys by which
    :func:`rank` and :func:`choose` order candidates, the true ones first. Without ``within`` every value ties and
    nothing is preferred, so the scores alone order them."""
    tied = within is None or best - value <= within
    return tied, tied and within is not None and Candidate.parse(candidate).pretrained


def tie_width(plan: dict) -> float | None:
    """How far apart validation accuracies can be and still be a tie (its 95% half-width) where validation is too
    small to rank candidates and no held-out images rank them instead; None where the scores rank."""
    selection = plan["selection"]
    return selection["half_width"] if selection["noisy"] and not plan["held_out"]["images"] else None


def scored_images(plan: dict) -> int:
    """How many validation images the candidates' scores are as noisy as accuracy on: all of them, or with
    --auto.metric balanced_accuracy fewer, as its small classes decide (``effective_images``)."""
    return plan["selection"].get("effective_images", plan["val_images"])


def hopeless(ranked: list[dict], scored_on: int) -> dict[str, float]:
    """{candidate: points behind the leader, as a share} for those of ``ranked`` (best first, as :func:`rank` orders
    them) trailing the leader by more than HOPELESS_GAP beyond the 99% noise of two accuracies measured on
    ``scored_on`` images each."""
    lead = score(ranked[0])
    behind = {}
    for t in ranked[1:]:
        s = score(t)
        noise = Z_99 * math.sqrt((lead * (1 - lead) + s * (1 - s)) / max(1, scored_on))
        if lead - s > HOPELESS_GAP + noise:
            behind[t["candidate"]] = lead - s
    return behind


def choose(finalists: list[dict], latency_ms: float | None, max_mb: float | None,
           noisy: bool = False, within: float | None = None) -> dict | None:
    """The most accurate (model, precision) on validation whose measured latency and size meet the budget; ties go to
    the model with the lower validation loss (a finer signal than accuracy on few images), then to the closer agreement
    with the fp32 graph, then to the faster one. When validation is too small to rank (``noisy``), each graph counts its
    own agreement with the teacher on the held-out unlabelled images where there are some (``teacher_agreement``:
    hundreds of images, int8's losses included); without them the graphs of one model are not told apart by validation:
    each counts its model's fp32 validation accuracy less its disagreement with the fp32 graph (on training or
    validation images, whichever is larger: the most it can lose), so the int8 recipe (or fp32) most faithful to the
    model is chosen, and a model whose only graph within the budget is an unfaithful int8 one does not win a tie against
    another's fp32 graph on the lower validation loss of its model (an int8 graph agreeing on 97.2% of 180 training
    images was chosen that way over the other model's fp32 graph: 90.50% test, where such runs scored 95-95.5%). There,
    graphs that agree with the fp32 graph equally go to the one whose probabilities stay closest to it (``fp32_gap``;
    the fp32 graph's is 0) before the faster: a tie on the model's own training images is no evidence that quantising
    costs nothing, and within the budget speed buys nothing (an int8 graph agreeing on all 77 such images, chosen for
    its speed, lost one of nine validation images that its fp32 graph, also within the budget, had right). ``within``:
    scores that close to the best are a tie, which goes first to the pretrained models (as in :func:`rank`), and among
    those to the larger input, as in :func:`rank`, where the graph answers as its fp32 graph on all but FAITHFUL_DROP
    of the images checked (its model's validation score then says as little as the others', and a pretrained
    backbone scores higher with more pixels: at 112 px the teacher's own weights score 94.4% on unseen cats and dogs,
    at 160 px 96.5%; an average of Lite0 at 112 px, fp32, won a tie on the loss of seven validation images over the
    128 px model's int8 graph, as fast and as faithful to its fp32 graph; Tux Paint's 160 px student lost one to
    its 128 px one on one of 46 validation images); a less faithful graph is ordered by its score, which counts what
    it loses (an int8 graph agreeing on 97.2% of the training images, above)."""
    def loss(o: dict) -> float:
        return float("inf") if o.get("val_loss") is None else o["val_loss"]

    scored = [(option_score(f, o, noisy), o, f) for f in finalists for o in f["options"]
              if within_budget(o, latency_ms, max_mb)]
    if not scored:
        return None
    best = max(s[0] for s in scored)

    def gap(o: dict) -> float:
        return o.get("fp32_gap", 0.0) if noisy else 0.0

    def key(s: tuple) -> tuple:
        tied, first = tie_to_pretrained(s[0], best, within, s[1].get("candidate", ""))
        size = Candidate.parse(s[1]["candidate"]).size if first else 0
        faithful = 1 - s[1].get("agreement_with_fp32", 1.0) <= FAITHFUL_DROP
        return (tied, first, size if faithful else 0, s[0], size, -loss(s[1]), s[1].get("agreement_with_fp32", 1.0),
                -gap(s[1]), -s[1]["p50_ms"])

    return max(scored, key=key)[1]


def option_score(finalist: dict, o: dict, noisy: bool) -> float:
    """What :func:`choose` ranks one exported graph ``o`` of ``finalist`` on: its validation score; where validation
    is too small to rank (``noisy``), its agreement with the teacher on held-out images where there are some, else its
    model's fp32 validation score less what the graph is measured to change (at most one error per disagreement)."""
    if not noisy:
        return graph_score(o)
    if "teacher_agreement" in o:
        return o["teacher_agreement"]
    model = next(graph_score(p) for p in finalist["options"] if p["precision"] == "fp32")
    return model - (1 - o.get("agreement_with_fp32", 1.0))
