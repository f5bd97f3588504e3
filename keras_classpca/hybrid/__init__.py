"""The hybrid builder: solve the bottom layers of a model, freeze them, train the rest."""

from keras_classpca.hybrid.builder import hybridize
from keras_classpca.hybrid.cache import SolveCache
from keras_classpca.hybrid.planner import Plan, plan_model
from keras_classpca.hybrid.report import HybridReport, SolvedLayer
from keras_classpca.hybrid.training import PrefixOutputCache, fit_top

__all__ = ["HybridReport", "Plan", "PrefixOutputCache", "SolveCache", "SolvedLayer", "fit_top",
           "hybridize", "plan_model"]
