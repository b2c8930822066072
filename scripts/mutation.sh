#!/usr/bin/env bash
# Mutation testing of the workbench's core (issue 14, part 3). Not part of `make test` or CI.
#
#     scripts/mutation.sh                  # every target of [tool.mutation.targets] in pyproject.toml
#     scripts/mutation.sh loss cache       # some of them
#     scripts/mutation.sh --summary [T...] # only print the scores and survivors of the last run
#
# Each target runs in its own fresh folder, mutants/<target>/ (git-ignored): a copy of
# research/ and tests/ and a pyproject.toml whose [tool.mutmut] names the target's files
# and tests. mutmut 3 then copies that into mutants/<target>/mutants/, rewrites every
# function of the files into a trampoline and, for each mutant whose name matches the
# target's `functions`, runs the target's tests that call the mutated function.
# Test files of a target that do not exist (yet) are skipped.
#
# Needs mutmut 3.8.1: `pip install -e '.[mutation]'`; VENV_BIN=/path/to/venv/bin picks
# the environment (default: the one of `python` on PATH).
# One mutant at a time, niced, one torch thread: the machine is shared.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV_BIN="${VENV_BIN:-$(dirname "$(command -v python)")}"
MUTMUT="$VENV_BIN/mutmut"
PYTHON="$VENV_BIN/python"

# The tests must import the mutated copy: mutmut puts its mutants/ folder first on
# sys.path (an editable install of this or another checkout comes after it); a
# PYTHONPATH naming a checkout would win over it.
unset PYTHONPATH
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
# tests/conftest.py finds ../shared/data next to the repository, which the copies are not.
export RESEARCH_SHARED_DATA="${RESEARCH_SHARED_DATA:-$ROOT/../shared/data}"

targets() { "$PYTHON" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["mutation"]["targets"]))'; }

# pyproject.toml for one target: the repository's, with [tool.mutmut]'s only_mutate and
# test selection replaced by the target's (existing test files only).
write_config() {
  "$PYTHON" - "$1" "$2" <<'PY'
import json, re, sys, tomllib
from pathlib import Path
target, out = sys.argv[1], Path(sys.argv[2])
text = Path("pyproject.toml").read_text()
cfg = tomllib.loads(text)["tool"]
spec = cfg["mutation"]["targets"][target]
tests = [t for t in spec["tests"] if Path(t.split("::")[0]).exists()]
mutmut = {**cfg["mutmut"], "only_mutate": spec["files"], "pytest_add_cli_args_test_selection": tests}
# drop every [tool.mutmut] / [tool.mutation...] table, then append the target's [tool.mutmut]
kept = re.split(r"(?m)^(?=\[)", text)
kept = [part for part in kept if not re.match(r"\[tool\.(mutmut|mutation)[\].]", part)]
body = "".join(kept).rstrip() + "\n\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in mutmut.items())
out.write_text(body)
print(" ".join(spec["functions"]))
PY
}

summary() {
  local t="$1"
  [[ -d "mutants/$t/mutants" ]] || { echo "| $t | (not run) |"; return; }
  ( cd "mutants/$t" && "$PYTHON" - "$t" <<'PY'
import fnmatch, json, pathlib, sys, tomllib
from mutmut.stats import status_by_exit_code
target = sys.argv[1]
patterns = tomllib.loads(pathlib.Path("../../pyproject.toml").read_text())["tool"]["mutation"]["targets"][target]["functions"]
codes = {}
for meta in pathlib.Path("mutants").rglob("*.py.meta"):
    codes.update(json.loads(meta.read_text())["exit_code_by_key"])
keys = sorted(k for k in codes if any(fnmatch.fnmatch(k, p) for p in patterns))
cols = ["killed", "survived", "timeout", "no tests", "not checked"]
counts = dict.fromkeys(cols + ["other"], 0)
lines = []
for k in keys:
    s = status_by_exit_code[codes[k]]
    counts[s if s in counts else "other"] += 1
    if s not in ("killed", "timeout"):
        lines.append(f"    {s}: {k}")
tested = sum(counts[c] for c in ("killed", "survived", "timeout", "no tests"))
score = f"{100 * (counts['killed'] + counts['timeout']) / tested:.0f}%" if tested else "-"
print(f"| {target} | " + " | ".join(str(counts[c]) for c in cols + ["other"]) + f" | {len(keys)} | {score} |")
pathlib.Path("survivors.txt").write_text("\n".join(lines) + "\n")
PY
  )
}

table() {
  echo "| target | killed | survived | timeout | no tests | not checked | other | total | score |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for t in "$@"; do summary "$t"; done
  echo
  for t in "$@"; do
    [[ -s "mutants/$t/survivors.txt" ]] && { echo "$t (cd mutants/$t && mutmut show NAME):"; cat "mutants/$t/survivors.txt"; }
  done
  return 0
}

if [[ "${1:-}" == "--summary" ]]; then
  shift
  [[ $# -eq 0 ]] && set -- $(targets)
  table "$@"
  exit 0
fi
[[ $# -eq 0 ]] && set -- $(targets)

rc=0
for t in "$@"; do
  work="mutants/$t"
  rm -rf "$work"
  mkdir -p "$work"
  cp -r research tests "$work/"
  read -r -a functions <<<"$(write_config "$t" "$work/pyproject.toml")"
  if ! grep -q '^pytest_add_cli_args_test_selection = \["' "$work/pyproject.toml"; then
    # an empty selection would make pytest run the whole suite once per mutant
    echo "== $t: none of its tests exist: every mutant has no test"
    continue
  fi
  echo "== $t: $(date -Is)"
  start=$SECONDS
  ( cd "$work" && nice -n 10 "$MUTMUT" run --max-children 1 "${functions[@]}" ) >"$work/run.log" 2>&1 || rc=$?
  echo "   $((SECONDS - start)) s, log in $work/run.log"
done
table "$@"
exit "$rc"
