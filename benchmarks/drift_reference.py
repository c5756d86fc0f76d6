"""An independent, literal reference for the drift metrics (docs/local-twin.md): loops over buckets, scipy for JSD.

Slow on purpose and written apart from fleetops.monitoring, so the two can check each other.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon


def reference_jsd(p_values: np.ndarray, q_values: np.ndarray, buckets: int = 10) -> float:
    sides = []
    for values in (p_values, q_values):
        finite = values[np.isfinite(values)]
        low, high = float(finite.min()), float(finite.max())
        if low == high:
            sides.append([(low, high, float(finite.size))])
            continue
        width = (high - low) / buckets
        counts = [0.0] * buckets
        for value in finite:
            counts[min(int((value - low) / width), buckets - 1)] += 1
        edges = [low + i * width for i in range(buckets)] + [high]
        sides.append([(edges[i], edges[i + 1], counts[i]) for i in range(buckets)])
    points = sorted({edge for side in sides for low, high, _ in side for edge in (low, high)})
    segments = list(zip(points[:-1], points[1:], strict=True)) + [(x, x) for x in points]
    masses = []
    for side in sides:
        mass = []
        for seg_low, seg_high in segments:
            total = 0.0
            for low, high, count in side:
                if low == high:
                    total += count if seg_low == seg_high == low else 0.0
                elif seg_low < seg_high:
                    overlap = max(0.0, min(high, seg_high) - max(low, seg_low))
                    total += count * overlap / (high - low)
            mass.append(total)
        masses.append(np.array(mass))
    return min(1.0, float(jensenshannon(masses[0], masses[1], base=2) ** 2))


def reference_linf(p_values: list, q_values: list) -> float:
    p_counts, q_counts = {}, {}
    for counts, values in ((p_counts, p_values), (q_counts, q_values)):
        for value in values:
            if value is not None:
                counts[value] = counts.get(value, 0) + 1
    p_total, q_total = sum(p_counts.values()), sum(q_counts.values())
    return max(abs(p_counts.get(v, 0) / p_total - q_counts.get(v, 0) / q_total) for v in set(p_counts) | set(q_counts))
