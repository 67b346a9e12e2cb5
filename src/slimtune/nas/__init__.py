"""Elastic super-networks: dimensions and search spaces, sampling during training, heuristic sub-networks."""

from .elastic import ELASTIC_VERSION, Binding, Dimension, SearchSpace
from .heuristics import HEURISTICS, lowest_loss, most_frequent, nncf_candidates, parse_selection
from .sampling import HISTORY_FILE, SAMPLERS, ElasticSampler, sandwich, uniform
from .space import ELASTIC_CONFIG, PRESETS, ElasticSpace, RankGroup, frequencies, rank_dimensions

__all__ = ["ELASTIC_VERSION", "Binding", "Dimension", "SearchSpace", "HEURISTICS", "lowest_loss", "most_frequent",
           "nncf_candidates", "parse_selection", "HISTORY_FILE", "SAMPLERS", "ElasticSampler", "sandwich", "uniform",
           "ELASTIC_CONFIG", "PRESETS", "ElasticSpace", "RankGroup", "frequencies", "rank_dimensions"]
