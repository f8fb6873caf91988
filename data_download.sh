#!/usr/bin/env bash
# Download (or copy from a local mirror) the raw Amazon review data used by the course.
#
# Sources (He & McAuley WWW'16; McAuley et al. SIGIR'15; Ni et al. EMNLP'19; Hou et al. 2024):
#   2014 (default): 5-core reviews + category metadata, SNAP / McAuley "productGraph" files
#   2018:           5-core reviews + metadata, UCSD amazon_v2 (nijianmo)
#   2023:           full reviews + metadata, McAuley-Lab Amazon-Reviews-2023
# Then: `rarec-lite prepare --dataset cloth` (it finds the files where this script puts them).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash data_download.sh [--dataset cloth|book] [--version 2014|2018|2023] [--dest DIR] [--from DIR]

Get the raw Amazon review files for the course.

  --dataset cloth|book    Clothing, Shoes & Jewelry (default) or Books
  --version 2014|2018|2023
                          2014 (default; the paper's data): reviews_<Cat>_5.json.gz + meta_<Cat>.json.gz
                          2018: <Cat>_5.json.gz + meta_<Cat>.json.gz
                          2023: <Cat>.jsonl.gz + meta_<Cat>.jsonl.gz
  --dest DIR              where to put the files
                          (default: ${RAREC_HOME:-$HOME/.cache/rarec-lite}/raw/<dataset>)
  --from DIR              copy from a local mirror instead of downloading (offline classrooms).
                          DIR, DIR/amazon_<dataset> and DIR/<dataset> are searched for either the
                          raw files above or the OpenP5 layout (user_sequence.txt + an item *.tsv).
                          Without --from, $RAREC_MIRROR is used the same way when it is set.
  -h, --help              this help

Downloads go to <file>.part (resumed on the next run), are checked with `gzip -t`, and are
then renamed into place; a file that is already complete is skipped.
Environment: RAREC_DOWNLOAD_BASE=URL replaces every upstream base URL (a local mirror server,
tests); RAREC_DOWNLOAD_RETRIES (default 3) and RAREC_DOWNLOAD_TIMEOUT (connect timeout, s, default 20).
EOF
}

die() { printf 'data_download.sh: error: %s\n' "$*" >&2; exit 1; }

dataset=cloth
version=2014
dest=""
from=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dataset) [[ $# -ge 2 ]] || die "--dataset needs a value"; dataset="$2"; shift 2 ;;
    --dataset=*) dataset="${1#*=}"; shift ;;
    --version) [[ $# -ge 2 ]] || die "--version needs a value"; version="$2"; shift 2 ;;
    --version=*) version="${1#*=}"; shift ;;
    --dest) [[ $# -ge 2 ]] || die "--dest needs a value"; dest="$2"; shift 2 ;;
    --dest=*) dest="${1#*=}"; shift ;;
    --from) [[ $# -ge 2 ]] || die "--from needs a value"; from="$2"; shift 2 ;;
    --from=*) from="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

case "$dataset" in
  cloth) cat_name="Clothing_Shoes_and_Jewelry" ;;
  book) cat_name="Books" ;;
  *) die "--dataset must be cloth or book (got '$dataset')" ;;
esac

# Each entry: "<base URL>|<path under it>"; the local file name is the path's last part.
case "$version" in
  2014)
    base="http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
    files=("$base|reviews_${cat_name}_5.json.gz" "$base|meta_${cat_name}.json.gz") ;;
  2018)
    files=("https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall|${cat_name}_5.json.gz"
           "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2|meta_${cat_name}.json.gz") ;;
  2023)
    base="https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023"
    files=("$base|raw/review_categories/${cat_name}.jsonl.gz" "$base|raw/meta_categories/meta_${cat_name}.jsonl.gz") ;;
  *) die "--version must be 2014, 2018 or 2023 (got '$version')" ;;
esac

if [[ -z "$dest" ]]; then
  dest="${RAREC_HOME:-$HOME/.cache/rarec-lite}/raw/$dataset"
fi
mkdir -p "$dest" || die "cannot create destination directory $dest"

# gzip_ok FILE: true when FILE is a complete, readable gzip.
gzip_ok() { [[ -s "$1" ]] && gzip -t "$1" 2>/dev/null; }

# copy_atomic SRC DST: copy to DST.part, check gzip integrity for .gz, then rename.
copy_atomic() {
  local src="$1" dst="$2"
  if [[ -f "$dst" ]] && cmp -s "$src" "$dst"; then
    echo "  $(basename "$dst"): already there, skipped"
    return 0
  fi
  rm -f "$dst.part"
  cp "$src" "$dst.part"
  chmod u+w "$dst.part"
  if [[ "$dst" == *.gz ]] && ! gzip_ok "$dst.part"; then
    rm -f "$dst.part"
    die "$src is not a complete gzip file (gzip -t failed); the mirror copy is damaged"
  fi
  mv -f "$dst.part" "$dst"
  echo "  $(basename "$dst"): copied"
}

# --------------------------------------------------------------------------- mirror copy
if [[ -z "$from" && -n "${RAREC_MIRROR:-}" ]]; then
  from="$RAREC_MIRROR"
  echo "Using RAREC_MIRROR=$from"
fi

if [[ -n "$from" ]]; then
  [[ -d "$from" ]] || die "--from $from: not a directory"
  for dir in "$from" "$from/amazon_$dataset" "$from/$dataset"; do
    [[ -d "$dir" ]] || continue
    # raw files of the requested version
    raw_found=1
    for entry in "${files[@]}"; do
      name="$(basename "${entry#*|}")"
      [[ -f "$dir/$name" ]] || raw_found=0
    done
    if [[ $raw_found -eq 1 ]]; then
      echo "Copying the $version $dataset raw files from $dir to $dest"
      for entry in "${files[@]}"; do
        name="$(basename "${entry#*|}")"
        copy_atomic "$dir/$name" "$dest/$name"
      done
      echo "Done. Next: rarec-lite prepare --dataset $dataset"
      exit 0
    fi
    # OpenP5 processed layout: user_sequence.txt + item table(s)
    if [[ -f "$dir/user_sequence.txt" ]]; then
      if [[ "$version" != 2014 ]]; then
        names=""
        for entry in "${files[@]}"; do names="$names $(basename "${entry#*|}")"; done
        rmdir "$dest" 2>/dev/null || true  # created above; leave nothing behind when it is still empty
        die "$dir has only the OpenP5 layout (user_sequence.txt), which is the 2014 5-core data; --version $version needs the $version raw files (${names# }) there, or drop --version to use the 2014 data"
      fi
      echo "Copying the OpenP5-style $dataset files from $dir to $dest"
      copy_atomic "$dir/user_sequence.txt" "$dest/user_sequence.txt"
      shopt -s nullglob
      tables=("$dir"/*.tsv)
      shopt -u nullglob
      if [[ ${#tables[@]} -eq 0 ]]; then
        echo "  note: no item table (*.tsv) next to user_sequence.txt; item text will fall back to 'item <ASIN>'"
      fi
      for table in "${tables[@]}"; do
        copy_atomic "$table" "$dest/$(basename "$table")"
      done
      [[ -f "$dir/SOURCE.md" ]] && copy_atomic "$dir/SOURCE.md" "$dest/SOURCE.md"
      echo "Done. Next: rarec-lite prepare --dataset $dataset"
      exit 0
    fi
  done
  names=""
  for entry in "${files[@]}"; do names="$names $(basename "${entry#*|}")"; done
  die "no $dataset data in $from, $from/amazon_$dataset or $from/$dataset (looked for:$names, or user_sequence.txt + an item .tsv)"
fi

# --------------------------------------------------------------------------- download
retries="${RAREC_DOWNLOAD_RETRIES:-3}"
connect_timeout="${RAREC_DOWNLOAD_TIMEOUT:-20}"
if command -v curl >/dev/null 2>&1; then
  fetcher=curl
elif command -v wget >/dev/null 2>&1; then
  fetcher=wget
else
  die "neither curl nor wget is installed; install one, or copy the files with --from DIR"
fi

errlog="$(mktemp)"
trap 'rm -f "$errlog"' EXIT

# fetch URL PART: download (resuming PART if it exists) into PART. Returns the tool's status.
fetch() {
  local url="$1" part="$2"
  if [[ $fetcher == curl ]]; then
    curl -fL -sS --retry "$retries" --retry-delay 2 --connect-timeout "$connect_timeout" \
      -C - -o "$part" "$url" 2>"$errlog"
  else
    wget -q -c --tries="$retries" --timeout="$connect_timeout" -O "$part" "$url" 2>"$errlog"
  fi
}

offline_message() {
  local url="$1" status="$2" part="$3" detail
  detail="$(tail -n 1 "$errlog" 2>/dev/null || true)"
  {
    echo
    echo "Could not download $url ($fetcher exit status $status${detail:+: $detail})."
    echo "This machine may be offline, or the server may be down. To work offline, copy the"
    echo "data from a local mirror instead: bash data_download.sh --dataset $dataset --from DIR"
    echo "(or set RAREC_MIRROR=DIR), where DIR holds the raw files or the OpenP5 layout"
    echo "(user_sequence.txt + item_brand_categories.tsv), e.g. ../shared/data on the course machines."
    if [[ -s "$part" ]]; then
      echo "The partial download is kept at $part; running this script again resumes it."
    fi
  } >&2
}

# fetch URL into PART (resuming); on failure explain the offline options and stop
fetch_or_exit() {
  local status=0
  fetch "$1" "$2" || status=$?
  if [[ $status -ne 0 ]]; then
    offline_message "$1" "$status" "$2"
    exit 1
  fi
}

echo "Downloading the $version $dataset files to $dest"
for entry in "${files[@]}"; do
  base="${entry%%|*}"
  rel="${entry#*|}"
  name="$(basename "$rel")"
  if [[ -n "${RAREC_DOWNLOAD_BASE:-}" ]]; then
    url="${RAREC_DOWNLOAD_BASE%/}/$name"
  else
    url="$base/$rel"
  fi
  target="$dest/$name"
  part="$target.part"
  if gzip_ok "$target"; then
    echo "  $name: already complete, skipped"
    continue
  fi
  if [[ -f "$target" ]]; then
    echo "  $name: existing file fails gzip -t; downloading it again"
    rm -f "$target"
  fi
  if gzip_ok "$part"; then
    echo "  $name: partial download is already complete"
  else
    [[ -s "$part" ]] && echo "  $name: resuming from $(wc -c <"$part" | tr -d ' ') bytes"
    echo "  $name: $url"
    fetch_or_exit "$url" "$part"
    if ! gzip_ok "$part"; then
      # A resumed file can be corrupt if the server's copy changed: start over once.
      echo "  $name: gzip -t failed; downloading it again from the start"
      rm -f "$part"
      fetch_or_exit "$url" "$part"
      if ! gzip_ok "$part"; then
        rm -f "$part"
        die "$url: the downloaded file is not a valid gzip (gzip -t failed); it was removed"
      fi
    fi
  fi
  mv -f "$part" "$target"
  echo "  $name: ok ($(wc -c <"$target" | tr -d ' ') bytes)"
done
echo "Done. Next: rarec-lite prepare --dataset $dataset"
