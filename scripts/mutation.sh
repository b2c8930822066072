#!/usr/bin/env bash
# Mutation testing of the workbench's core (issue 14, part 3). Not part of `make test` or CI:
# run by hand, from anywhere:
#
#     scripts/mutation.sh            # every target below
#     scripts/mutation.sh loss cache # some of them
#     scripts/mutation.sh --summary  # only print the scores of the last run
#
# Configuration: [tool.mutmut] in pyproject.toml (files mutated, fast test selection).
# mutmut 3 copies research/ and tests/ into ./mutants/ (git-ignored), rewrites every
# function of the configured files into a trampoline and, for each mutant, runs only the
# tests of the selection that call the mutated function. Results are kept in mutants/
# and reused by the next run (delete mutants/ to start over, e.g. after editing research/).
#
# Needs mutmut 3.8.1: `pip install -e '.[mutation]'` (or MUTMUT=/path/to/mutmut).
# One mutant at a time, niced, one torch thread: the machine is shared.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV_BIN="${VENV_BIN:-$(dirname "$(command -v python)")}"
MUTMUT="${MUTMUT:-$VENV_BIN/mutmut}"
PYTHON="${PYTHON:-$VENV_BIN/python}"

# The tests run inside mutants/: the mutated copy of research/ must be the one imported
# (mutmut puts mutants/ first on sys.path; an editable install of another checkout comes
# after it, but a PYTHONPATH pointing at a checkout would not).
unset PYTHONPATH
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# tests/conftest.py finds ../shared/data relative to the repository, which mutants/ is not.
export RESEARCH_SHARED_DATA="${RESEARCH_SHARED_DATA:-$ROOT/../shared/data}"
export MPLBACKEND=Agg

# target name -> mutant name patterns (module.x_function / module.xǁClassǁmethod, fnmatch).
# The "core" functions only: I/O helpers and backend glue (ONNX export, the onnxruntime and
# torchao wrappers) are left out, as are decorated functions, which mutmut 3 never mutates
# (Tracker.run, a @contextmanager, and Distiller.teacher_logits, under @torch.no_grad).
declare -A TARGETS=(
  [loss]="research.distill.loss.*"
  [distiller]="research.distill.distiller.*"
  [cache]="research.distill.cache.x_model_fingerprint* research.distill.cache.xǁTeacherLogitCacheǁkey* research.distill.cache.xǁTeacherLogitCacheǁlogits*"
  [selection]="research.sweep.x_best_trials* research.sweep.x__objective_values* research.sweep.x_count_finished*"
  [status]="research.sweep.x__pruning_callback* research.sweep.x__mark_failed_run* research.tracking.xǁTrackerǁend* research.tracking.x__one_line*"
  [prune]="research.compress.prune.x_sparsity_schedule* research.compress.prune.x_split_epochs* research.compress.prune.x_global_magnitude_prune* research.compress.prune.x_measured_sparsity* research.compress.prune.x_effective_weight* research.compress.prune.x_output_layers* research.compress.prune.x_channel_ratio_for* research.compress.prune.x_structured_prune*"
  [quantize]="research.compress.quantize.x_resolve_mode* research.compress.quantize.x_calibration_batch* research.compress.quantize.x_quantize_int8* research.compress.quantize.x_has_convolutions*"
  [lowrank]="research.compress.lowrank.*"
)
ORDER=(loss distiller cache selection status prune quantize lowrank)

summary() {
  # Score per target from mutmut's result files (mutants/research/**.py.meta).
  TARGET_SPEC="$(for t in "${ORDER[@]}"; do echo "$t=${TARGETS[$t]}"; done)" "$PYTHON" - <<'EOF'
import fnmatch, json, os, pathlib
from mutmut.stats import status_by_exit_code

codes = {}
for meta in pathlib.Path("mutants").rglob("*.py.meta"):
    codes.update(json.loads(meta.read_text())["exit_code_by_key"])
cols = ["killed", "survived", "timeout", "no tests", "not checked", "other", "total"]
print("| target | " + " | ".join(cols) + " | score |")
print("|---|" + "---:|" * (len(cols) + 1))
survivors = []
for line in os.environ["TARGET_SPEC"].splitlines():
    name, _, patterns = line.partition("=")
    keys = sorted(k for k in codes if any(fnmatch.fnmatch(k, p) for p in patterns.split()))
    counts = dict.fromkeys(cols, 0)
    for k in keys:
        status = status_by_exit_code[codes[k]]
        counts[status if status in counts else "other"] += 1
        if status in ("survived", "no tests"):
            survivors.append(f"{name}: {k} ({status})")
    counts["total"] = len(keys)
    tested = counts["killed"] + counts["survived"] + counts["timeout"] + counts["no tests"]
    score = f"{100 * (counts['killed'] + counts['timeout']) / tested:.0f}%" if tested else "-"
    print(f"| {name} | " + " | ".join(str(counts[c]) for c in cols) + f" | {score} |")
print()
print("survivors (mutmut show NAME for the diff):")
print("\n".join(survivors) or "none")
EOF
}

if [[ "${1:-}" == "--summary" ]]; then
  summary
  exit 0
fi
selected=("$@")
[[ ${#selected[@]} -eq 0 ]] && selected=("${ORDER[@]}")
patterns=()
for t in "${selected[@]}"; do
  [[ -n "${TARGETS[$t]:-}" ]] || { echo "unknown target $t; one of: ${ORDER[*]}" >&2; exit 2; }
  read -r -a p <<<"${TARGETS[$t]}"
  patterns+=("${p[@]}")
done

# One run for all selected targets: the clean test run and the test-to-function map are
# collected once; each mutant then runs only the tests that call its function.
nice -n 10 "$MUTMUT" run --max-children 1 "${patterns[@]}" || status=$?
summary
exit "${status:-0}"
