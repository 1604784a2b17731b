"""Pure evaluation metrics on tensors: FID, KID, precision/recall, nearest neighbours, memorisation.

Never imports Lightning, models or callbacks; callbacks compose these functions.
"""

from genbench.metrics.cache import cached_features
from genbench.metrics.features import (
    FeatureExtractor,
    InceptionWeightsUnavailable,
    MetricProtocol,
    extract_features,
    inception_extractor,
    load_inception,
    pixel_features,
    to_inception_input,
    write_random_inception_weights,
)
from genbench.metrics.frechet import feature_statistics, fid_from_features, frechet_distance
from genbench.metrics.kid import KIDResult, kernel_inception_distance
from genbench.metrics.neighbours import (
    memorisation_ratio,
    memorisation_ratio_of_distances,
    nearest_neighbours,
)
from genbench.metrics.precision_recall import PrecisionRecall, manifold_radii, precision_recall

__all__ = [
    "FeatureExtractor",
    "InceptionWeightsUnavailable",
    "KIDResult",
    "MetricProtocol",
    "PrecisionRecall",
    "cached_features",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_extractor",
    "kernel_inception_distance",
    "load_inception",
    "manifold_radii",
    "memorisation_ratio",
    "memorisation_ratio_of_distances",
    "nearest_neighbours",
    "pixel_features",
    "precision_recall",
    "to_inception_input",
    "write_random_inception_weights",
]
