"""Stage 2 of training: the LVLM heads (projector, prompt learner, selector) and the LoRA adapter.

data.py (samples, encoding, batch order) -> cache.py (frozen features) -> loop.py (`add_arguments`, `run`: the
training loop, resume from OUT/last via training/checkpoint.py) -> heldout.py (answer accuracy) -> export.py
(checkpoint folder). `python -m training lvlm ...` calls `add_arguments` and `run`.
"""
from training.lvlm.cache import CHUNK, FeatureCache, pseudo_result
from training.lvlm.data import Sample, batch_order, encode_sample, load_samples, split_samples
from training.lvlm.export import export, write_checkpoint_config
from training.lvlm.heldout import detection_question, heldout_accuracy
from training.lvlm.loop import add_arguments, lr_factor, run

__all__ = ["CHUNK", "FeatureCache", "Sample", "add_arguments", "batch_order", "detection_question", "encode_sample",
           "export", "heldout_accuracy", "load_samples", "lr_factor", "pseudo_result", "run", "split_samples",
           "write_checkpoint_config"]
