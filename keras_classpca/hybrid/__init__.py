"""The hybrid builder: solve the bottom layers of a model, freeze them, train the rest."""

from keras_classpca.hybrid.builder import freeze_solved_layers, hybridize
from keras_classpca.hybrid.cache import SolveCache
from keras_classpca.hybrid.planner import Plan, plan_model
from keras_classpca.hybrid.policy import AutoRule
from keras_classpca.hybrid.progressive import ProgressiveReport, fit_progressive
from keras_classpca.hybrid.report import HybridReport, SolvedLayer
from keras_classpca.hybrid.settling import FreezeOut, SettleOnChange
from keras_classpca.hybrid.training import PrefixOutputCache, fit_top

__all__ = ["AutoRule", "FreezeOut", "HybridReport", "Plan", "PrefixOutputCache",
           "ProgressiveReport", "SettleOnChange", "SolveCache", "SolvedLayer",
           "fit_progressive", "fit_top", "freeze_solved_layers", "hybridize", "plan_model"]
