"""Ad-hoc (2026-11-27): train the profile's standard source model with another seed, in the
precision of the given params file, into DATA_DIR/models/standard. Used to see how much D_rand's
downstream accuracy moves between source models of one precision (run from the repository root:
python bench/measured/cpu-2026-11-27/precision/seeded_source.py PARAMS DATA_DIR OFFSET)."""
import sys

sys.path.insert(0, ".")
from notbugs import stages as S  # noqa: E402
from notbugs import units as U  # noqa: E402
from notbugs.config import load_params  # noqa: E402

params_path, data_dir, offset = sys.argv[1], sys.argv[2], int(sys.argv[3])
params = load_params(params_path, "cpu")
default_seed = U._seed
U._seed = lambda p, name: default_seed(p, name) + offset  # the only change: the training seed
print(S.stage_source(params, "standard", data_dir, "cpu"))
