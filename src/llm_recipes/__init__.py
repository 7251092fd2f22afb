"""llm-recipes: every stage of a language model's life as a short script and a recipe.

Importing the package first (every script does, before any library) keeps two lines of library start-up noise out of
every log: they say nothing about a run, and a user learns to skip warnings. Transformers imports torchao at
start-up whenever it is installed; torchao 0.18's wheel ships two CUDA kernels built for Python 3.10 (mxfp8 and
cutlass sm90a, which no CPU run and no quantization here uses), so each process logged "Failed to load ..._C_mxfp8
.cpython-310...so", and torch 2.13 logs a deprecation for each Enum that torchao registers with pytree. Only those
messages are dropped; every other warning of those libraries still shows.
"""

import logging as _logging


class _DropKnownNoise(_logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: _logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


_logging.getLogger("torchao").addFilter(_DropKnownNoise("Failed to load", "cpython-310"))
_logging.getLogger("torch.utils._pytree").addFilter(
    _DropKnownNoise("is an Enum subclass and is now natively supported by torch.compile"))
