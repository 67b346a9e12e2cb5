"""Elastic super-networks: rank search spaces, sampling during training, heuristic sub-networks."""

from .heuristics import HEURISTICS, lowest_loss, most_frequent, nncf_candidates, parse_selection
from .sampling import HISTORY_FILE, ElasticSampler
from .space import ELASTIC_CONFIG, PRESETS, ElasticSpace, RankGroup, frequencies

__all__ = ["HEURISTICS", "lowest_loss", "most_frequent", "nncf_candidates", "parse_selection", "HISTORY_FILE",
           "ElasticSampler", "ELASTIC_CONFIG", "PRESETS", "ElasticSpace", "RankGroup", "frequencies"]
