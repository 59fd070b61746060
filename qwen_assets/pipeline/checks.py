"""Quality rules for stored vectors and coordinates, as plain functions the asset checks call.

Each returns the problems found (empty when all is well), so a failure says what is wrong.
"""

from __future__ import annotations

import numpy as np

NORM_TOLERANCE = 1e-3
SAME_VECTOR_TOLERANCE = 1e-5  # two float32 unit vectors this close are one


def all_the_same(vectors: np.ndarray) -> bool:
    """Several unit vectors that are one: the texts did not reach the model."""
    return len(vectors) > 1 and float(np.ptp(vectors, axis=0).max()) < SAME_VECTOR_TOLERANCE


def embedding_problems(
    vectors: np.ndarray, expected_rows: int, expected_dimension: int | None
) -> list[str]:
    problems = []
    if vectors.shape[0] != expected_rows:
        problems.append(f"{vectors.shape[0]} rows for {expected_rows} sample documents")
    if expected_dimension is not None and vectors.shape[1] != expected_dimension:
        problems.append(f"dimension {vectors.shape[1]}, configured {expected_dimension}")
    if not np.isfinite(vectors).all():
        problems.append("non-finite values")
    else:
        norms = np.linalg.norm(vectors, axis=1)
        off = int((np.abs(norms - 1) > NORM_TOLERANCE).sum())
        if off:
            problems.append(f"{off} vectors are not unit length")
        if all_the_same(vectors):
            problems.append(
                f"all {len(vectors)} vectors are the same: the texts did not reach the model "
                "(an instruction that fills its token limit?)"
            )
    return problems


def coordinate_problems(coordinates: np.ndarray, expected_rows: int) -> list[str]:
    problems = []
    if coordinates.shape[0] != expected_rows:
        problems.append(f"{coordinates.shape[0]} points for {expected_rows} documents")
    if not np.isfinite(coordinates).all():
        problems.append("non-finite coordinates")
    return problems
