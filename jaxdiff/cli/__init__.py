"""The ``jaxdiff`` command (argument parsing, demos, process tuning) on top of everything else."""

from ._main import console_main as console_main
from ._main import enable_compilation_cache as enable_compilation_cache
from ._main import find_shared_data as find_shared_data
from ._main import load_nircam_pair as load_nircam_pair
from ._main import main as main
from ._main import run_demo as run_demo
from ._main import tune_host_malloc as tune_host_malloc
