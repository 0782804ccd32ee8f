"""The adapter layer: LoRA adapter directories recognised, listed, validated, read, applied to a model
and merged, in one place beside the model layer.

`directory` reads and writes the files (the only module that names them), `merge` holds the exact
merge math as pure tensor functions, `apply` has the one shape check and the one way an update goes
into a model's weights, and `peft` is where we hand over to PEFT (adapters beyond plain LoRA, and
PEFT's own combination types). LocalModel, soups, the server and the studies all go through here.
"""

from personalm.adapters.apply import apply_deltas, apply_factors, check_shapes, merge_into, soup_applied
from personalm.adapters.directory import (
    Adapter,
    UnsupportedAdapter,
    is_adapter_dir,
    list_adapters,
    load_adapter,
    read_config,
    save_factors,
    validate,
)
from personalm.adapters.merge import LoraFactors, check_weights, exact_deltas, exact_factors, separate_average

__all__ = [
    "Adapter",
    "LoraFactors",
    "UnsupportedAdapter",
    "apply_deltas",
    "apply_factors",
    "check_shapes",
    "check_weights",
    "exact_deltas",
    "exact_factors",
    "is_adapter_dir",
    "list_adapters",
    "load_adapter",
    "merge_into",
    "read_config",
    "save_factors",
    "separate_average",
    "soup_applied",
    "validate",
]
