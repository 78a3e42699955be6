"""`dnc measure`: the deep-neural-collapse and AGOP tables of `dnc analyze` for any PyTorch model, or for saved
embeddings (README, "Measure your own model").

    from dnc_cli import measure          # or: from dnc_cli.measure import measure
    table = measure(model, (x, y), num_classes=10, layers=["layer4", "fc"])

The subpackage is itself callable (`dnc_cli.measure(...)` is `dnc_cli.measure.api.measure(...)`), so that both
imports above give something to call whichever ran first.

    api.py       measure() and run_measure(): the options checked, the model prepared and put back
    inputs.py    the splits' data as batches, labels, device and dtype, the model in eval mode
    hooks.py     layer selection (names, globs), module outputs as features, the model's outputs
    layers.py    one selected module: its SVD stages' maps, its AGOP, its NFA rows
    agop.py      the exact AGOP of any nn.Linear / nn.Conv2d (input patches) from autograd
    stats.py     a split's streaming NC accumulators, the Gram figure's sample
    session.py   the hooks and the two sweeps per split, NC3's classifier, the rows
    features.py  precomputed embeddings (npz, pt, parquet)
    loading.py   `dnc measure`'s model (factory or torchvision), its weights, the dataset's batches
    outputs.py   the run layout `dnc measure` writes (what `dnc plot` and `dnc report` read)
    command.py   the Hydra app `dnc measure`
"""

import sys
import types

from dnc_cli.measure.api import Measured, measure, run_measure

__all__ = ["Measured", "measure", "run_measure"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return measure(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
