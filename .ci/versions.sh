#!/usr/bin/env bash
# The supported-versions check of pyproject.toml's bounds: for the lowest and the highest versions
# that pyproject.toml allows of duckdb, polars, altair and snakemake, build a virtualenv, install
# landscope in it, run the smoke study to its reports and tests/test_store.py + tests/test_cli.py.
#
# torch is installed at TORCH_SPEC (default torch==2.13.0, the CPU build the Makefile uses) in both sets:
# PyPI serves other torch versions only as multi-GB CUDA wheels, and no CPU index is reachable here, so
# torch's own bounds (>=2.2,<3) are not exercised by this check.
#
#   bash .ci/versions.sh                 both sets
#   SETS=lowest bash .ci/versions.sh     one set
#   KEEP=1 ...                           keep the work folder (venvs, studies, logs); printed at the end
# Exits non-zero naming every set and stage that failed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
SETS="${SETS:-lowest highest}"
BOUNDED="duckdb polars altair snakemake"   # torch: see above
WORK="$(mktemp -d "${TMPDIR:-/tmp}/landscope-versions.XXXXXX")"
export PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_NUM_THREADS=1
failures=()
cleanup() { if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "work folder kept: $WORK"; fi; }
trap cleanup EXIT

# pins SET PYTHON: one `name==version` line per bounded package, read from pyproject.toml's [project]
# dependencies: lowest -> the lower bound itself; highest -> the newest release on the index that the
# specifier allows (pip index versions), so the check follows new releases without editing this file.
pins() {
    "$2" - "$1" "$ROOT/pyproject.toml" $BOUNDED <<'EOF'
import json, subprocess, sys, tomllib
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.version import Version

which, pyproject, *names = sys.argv[1:]
with open(pyproject, "rb") as f:
    reqs = {r.name: r for r in map(Requirement, tomllib.load(f)["project"]["dependencies"])}
for name in names:
    spec = reqs[name].specifier
    if which == "lowest":
        low = [s.version for s in spec if s.operator == ">="]
        if not low:
            sys.exit(f"{name}: no '>=' lower bound in pyproject.toml")
        print(f"{name}=={low[0]}")
        continue
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name],
                         capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Available versions:"))
    versions = [Version(v.strip()) for v in line.split(":", 1)[1].split(",")]
    allowed = [v for v in versions if not v.is_prerelease and spec.contains(v)]
    if not allowed:
        sys.exit(f"{name}: no release on the index satisfies {spec}")
    print(f"{name}=={max(allowed)}")
EOF
}

# stage SET NAME CMD...: runs CMD with its output in $WORK/SET/NAME.log, prints the elapsed time, and on
# failure the log's tail; returns CMD's status.
stage() {
    local set="$1" name="$2"; shift 2
    local log="$WORK/$set/$name.log" t0=$SECONDS rc=0
    "$@" >"$log" 2>&1 || rc=$?
    printf '[%s] %-12s %4ds  %s\n' "$set" "$name" $((SECONDS - t0)) "$([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)")"
    if [ $rc != 0 ]; then
        echo "----- last lines of $log -----"; tail -n 40 "$log"; echo "-----"
        failures+=("$set: $name")
    fi
    return $rc
}

build() {  # build SET: the venv with torch first, then landscope under the pins
    local set="$1" venv="$WORK/$1/venv"
    "$PYTHON" -m venv "$venv" &&
    "$venv/bin/python" -m pip install --quiet "$TORCH_SPEC" &&
    { echo "$TORCH_SPEC"; pins "$set" "$venv/bin/python"; } >"$WORK/$set/constraints.txt" &&
    cat "$WORK/$set/constraints.txt" &&
    "$venv/bin/python" -m pip install --quiet -c "$WORK/$set/constraints.txt" -e "$ROOT" pytest &&
    "$venv/bin/python" -m pip check &&
    "$venv/bin/python" -c "
import sys
from importlib.metadata import version
from pip._vendor.packaging.version import Version
pins = dict(l.strip().split('==') for l in open('$WORK/$set/constraints.txt') if '==' in l)
same = lambda n, v: Version(Version(version(n)).public) == Version(Version(v).public)
bad = [f'{n} {version(n)} != {v}' for n, v in pins.items() if not same(n, v)]
print('installed:', ', '.join(f'{n} {version(n)}' for n in pins))
sys.exit('not the pinned versions: ' + '; '.join(bad) if bad else 0)"
}

smoke() {  # smoke SET: the smoke study in a copy of the workflow, to its reports and database
    local set="$1" study="$WORK/$1/study"
    mkdir -p "$study" &&
    cp -r "$ROOT"/Snakefile "$ROOT"/workflow "$ROOT"/config "$ROOT"/profiles "$ROOT"/envs "$study"/ &&
    (cd "$study" && PATH="$WORK/$set/venv/bin:$PATH" snakemake --cores 2 --configfile config/smoke.yaml) &&
    test -s "$study/reports/index.html" && test -s "$study/results/landscope.duckdb" &&
    "$WORK/$set/venv/bin/python" -c "
import duckdb
con = duckdb.connect('$study/results/landscope.duckdb', read_only=True)
n = con.execute('SELECT count(*) FROM runs').fetchone()[0]
print('landscope.duckdb: runs', n)
assert n > 0, 'landscope.duckdb: the runs view is empty'"
}

tests() {  # tests SET: the store and CLI tests with this set's interpreter
    (cd "$ROOT" && PATH="$WORK/$1/venv/bin:$PATH" "$WORK/$1/venv/bin/python" -m pytest -q -p no:cacheprovider \
        tests/test_store.py tests/test_cli.py)
}

echo "supported-versions check in $WORK ($TORCH_SPEC in every set)"
for set in $SETS; do
    case "$set" in lowest|highest) ;; *) echo "unknown set '$set' (lowest, highest)"; exit 2;; esac
    mkdir -p "$WORK/$set"
    t0=$SECONDS
    if stage "$set" build build "$set"; then
        grep '^installed:' "$WORK/$set/build.log" | sed "s/^/[$set] /"
        stage "$set" smoke smoke "$set"
        stage "$set" tests tests "$set"
    fi
    printf '[%s] %-12s %4ds\n' "$set" total $((SECONDS - t0))
done
if [ ${#failures[@]} != 0 ]; then
    printf 'supported-versions check FAILED: %s\n' "${failures[@]}"
    exit 1
fi
echo "supported-versions check passed: $SETS"
