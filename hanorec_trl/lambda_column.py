"""The hardness lambda (paper Eq. 4-6) on its way from a dataset column to the loss (``docs/trainer.md``).

``HaNoDPOConfig.hardness_column`` names the column; unset, ``"hano_lambda"`` is read when the dataset has it, and a
dataset without it trains with lambda = 1 (one :class:`MissingHardnessWarning`), so a plain TRL preference dataset
trains as with ``use_hardness=False``. A column named explicitly is required. :func:`lambda_values` checks a map-style
dataset's column once, naming the rows; :class:`HardnessCollator` carries the column through TRL's collators (which
drop unknown keys) and checks streamed rows batch by batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset

__all__ = ["HardnessCollator", "MissingHardnessWarning", "lambda_values"]


class MissingHardnessWarning(UserWarning):
    """A dataset has no hardness column and ``hardness_column`` was left unset: lambda = 1 for its rows."""


def missing_column_message(column: str, where: str) -> str:
    return (
        f"{where} has no {column!r} column: lambda = 1 for its rows (HaRS off for them; logged as "
        f"hano/lambda_defaulted = 1). Add the column with hanorec_trl.add_hardness_column (docs/hardness.md), or set "
        "use_hardness=False to silence this warning; set hardness_column to make the column required."
    )


def lambda_values(dataset: Any, column: str, name: str, maximum: float = math.inf, required: bool = True
                  ) -> np.ndarray | None:
    """The lambda column of a map-style ``dataset`` as float64, checked: finite numbers in [0, ``maximum``].

    Returns None when the column cannot be read up front (a streamed dataset: its batches are checked by
    :class:`HardnessCollator`) or, with ``required=False``, when the dataset has no such column. Errors name the
    dataset and the rows.
    """
    if not isinstance(dataset, Dataset):
        return None
    if column not in dataset.column_names:
        if not required:
            return None
        raise ValueError(
            f"hardness_column={column!r} (use_hardness=True) is not a column of the {name} dataset; its columns are "
            f"{dataset.column_names}. Compute it with hanorec_trl.add_hardness_column (from a HardnessIndex, item "
            "embeddings or an item encoder), name the right column, or set use_hardness=False."
        )
    import pyarrow as pa

    arrow_type = dataset.features.arrow_schema.field(column).type
    if not (pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type)):
        raise TypeError(
            f"column {column!r} of the {name} dataset must hold one number per row (lambda), but its type is "
            f"{arrow_type}"
        )
    values = np.asarray(dataset.data.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        shown = ", ".join(f"row {i}: {values[i]}" for i in bad[:5])
        raise ValueError(
            f"column {column!r} of the {name} dataset has {bad.size} invalid lambda value(s) (NaN, inf or negative; "
            f"lambda must be finite and >= 0): {shown}"
        )
    large = np.flatnonzero(values > maximum)
    if large.size:
        shown = ", ".join(f"row {i}: {values[i]:g}" for i in large[:5])
        raise ValueError(
            f"column {column!r} of the {name} dataset has {large.size} lambda value(s) above lambda_max={maximum:g} "
            f"({shown}). Eq. 6 gives lambda = sigmoid(Delta) / sigmoid(mean Delta), below 10 for cosine "
            "similarities; such a value would scale beta (and the gradients) by it. Fix the column, or raise "
            "HaNoDPOConfig.lambda_max if it is intended."
        )
    return values


class HardnessCollator:
    """Wraps a collator: takes ``column`` out of each example, collates the rest, adds it back as a float tensor.

    TRL's preference collators ignore unknown keys, so without this the hardness column would never reach the loss.
    A batch without the column comes back without it when ``required`` is False (the trainer then uses lambda = 1);
    a batch where only some examples have it is refused.
    """

    def __init__(self, inner: Callable, column: str, maximum: float = math.inf, required: bool = True):
        self.inner = inner
        self.column = column
        self.maximum = maximum
        self.required = required

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        have = [self.column in example for example in examples]
        if not any(have) and not self.required:
            return self.inner(examples)
        if not all(have):
            missing = [i for i, has in enumerate(have) if not has]
            raise ValueError(
                f"examples {missing[:10]} of a batch have no hardness column {self.column!r} (use_hardness=True); "
                "add it to every row with hanorec_trl.add_hardness_column"
            )
        values = [example[self.column] for example in examples]
        try:
            lambdas = torch.tensor(values, dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise TypeError(f"hardness column {self.column!r} must hold one number per row, got {values[:4]}") from e
        if lambdas.dim() != 1:
            raise TypeError(f"hardness column {self.column!r} must hold one number per row, got {values[:4]}")
        bad = ~torch.isfinite(lambdas) | (lambdas < 0) | (lambdas > self.maximum)
        if bad.any():
            raise ValueError(
                f"invalid lambda in a batch (NaN, inf, negative or above lambda_max={self.maximum:g}) in column "
                f"{self.column!r}: {lambdas[bad].tolist()[:5]}"
            )
        batch = self.inner([{k: v for k, v in example.items() if k != self.column} for example in examples])
        batch[self.column] = lambdas
        return batch
