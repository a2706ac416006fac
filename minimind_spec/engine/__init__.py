"""The torch side of minimind-spec: everything that needs weights.

`compile` turns the module graph into an `nn.Module`, `trainability` sets which parameter
roles train, `export` writes and reads model directories. The front end (everything else in
`minimind_spec/`) never imports this package; the CLI imports it lazily, inside the commands
that need it, so `validate`, `explain`, `render`, `diff` start without loading torch.
"""

from .compile import assemble, compile_graph, compile_model, materialize
from .export import load_model_files, write_model_files
from .trainability import TrainableSummary, parameters_by_role, set_trainable

__all__ = [
    "TrainableSummary", "assemble", "compile_graph", "compile_model", "load_model_files", "materialize",
    "parameters_by_role", "set_trainable", "write_model_files",
]
