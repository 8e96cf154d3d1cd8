"""Evaluation of recommenders: HR@K, NDCG@K, AUC (paper Sec. 4.1). See ``docs/evaluation.md``; the
protocol choices: ``docs/design.md``.

* :mod:`.metrics` -- pure metric functions (ties, K, AUC conventions);
* :mod:`.scoring` -- candidate log-likelihoods as TRL's DPO scores them, prompt once;
* :mod:`.generation` -- the paper's generation protocol and its title parser;
* :mod:`.evaluate` -- :func:`evaluate_recommender`, the one call returning a dict (and a JSON file);
* :mod:`.callback` -- :class:`RecommendationEvalCallback` for evaluation during training.
"""

from .callback import RecommendationEvalCallback
from .evaluate import (
    RecEvalConfig,
    evaluate_auc,
    evaluate_ranking,
    evaluate_recommender,
    example_groups,
    position_diagnostic,
)
from .generation import GenerationSettings, generate_answers, match_candidates, parse_titles, rank_from_generation
from .metrics import (
    auc_interval,
    auc_score,
    average_ranks,
    binary_auc,
    hit_rate_at_k,
    mean_interval,
    ndcg_at_k,
    ndcg_gains,
    paired_bootstrap,
    ranking_metrics,
    target_rank,
)
from .scoring import score_candidates, tokenize_candidates

__all__ = [
    "GenerationSettings",
    "RecEvalConfig",
    "RecommendationEvalCallback",
    "auc_interval",
    "auc_score",
    "average_ranks",
    "binary_auc",
    "evaluate_auc",
    "evaluate_ranking",
    "evaluate_recommender",
    "example_groups",
    "generate_answers",
    "hit_rate_at_k",
    "mean_interval",
    "match_candidates",
    "ndcg_at_k",
    "ndcg_gains",
    "paired_bootstrap",
    "position_diagnostic",
    "parse_titles",
    "rank_from_generation",
    "ranking_metrics",
    "score_candidates",
    "target_rank",
    "tokenize_candidates",
]
