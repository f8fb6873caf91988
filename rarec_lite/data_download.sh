#!/usr/bin/env bash
# Download (or copy from a local mirror) the raw Amazon review data used by the course.
#
# Sources (He & McAuley WWW'16; McAuley et al. SIGIR'15; Ni et al. EMNLP'19; Hou et al. 2024):
#   2014 (default): 5-core reviews + category metadata, SNAP / McAuley "productGraph" files
#   2018:           5-core reviews + metadata, UCSD amazon_v2 (nijianmo)
#   2023:           full reviews + metadata, McAuley-Lab Amazon-Reviews-2023
# Category names and aliases: rarec_lite/data/categories.tsv (the package reads the same table).
# Then: `rarec-lite prepare --dataset NAME` (it finds the files where this script puts them).
# The file lives in the package (rarec_lite/data_download.sh, so that an installed course, e.g. on
# Colab, can run it: rarec_lite.course.fetch_raw); data_download.sh at the top is a link to it.
set -euo pipefail

# where this script was called from: the repository root (through the link) or rarec_lite/ (the package)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
table="$here/data/categories.tsv"
[[ -f "$table" ]] || table="$here/rarec_lite/data/categories.tsv"

usage() {
  cat <<'EOF'
Usage: bash data_download.sh [--dataset NAME] [--version 2014|2018|2023] [--dest DIR] [--from DIR]

Get the raw Amazon review files for the course.

  --dataset NAME          any category of the release: a short alias (cloth (default), beauty, sports,
                          toys, scientific, instruments, arts, games, office, book, ...) or the
                          release's own name (Industrial_and_Scientific); --list shows them all
  --list                  list every category: name, releases, aliases
  --version 2014|2018|2023
                          default: the first release that has the category (2014 for cloth, the
                          paper's data; 2018 for scientific)
                          2014: reviews_<Cat>_5.json.gz + meta_<Cat>.json.gz
                          2018: <Cat>_5.json.gz + meta_<Cat>.json.gz
                          2023: <Cat>.jsonl.gz + meta_<Cat>.jsonl.gz
  --dest DIR              where to put the files
                          (default: ${RAREC_HOME:-$HOME/.cache/rarec-lite}/raw/<key>, where the key is
                          the category's first alias, e.g. scientific)
  --from DIR              copy from a local mirror instead of downloading (offline classrooms).
                          DIR, DIR/amazon_<key> and DIR/<key> are searched for the raw files above,
                          the LC-Rec layout (<Name>.inter.json + <Name>.item.json, <Name> one of the
                          category's names, e.g. Scientific) or the OpenP5 layout (user_sequence.txt +
                          an item *.tsv; only for 2014 data).
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
version=""
list_only=0
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
    --list) list_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[[ -f "$table" ]] || die "category table $table not found (run the script from its repository)"
case "$version" in
  ""|2014|2018|2023) ;;
  *) die "--version must be 2014, 2018 or 2023 (got '$version')" ;;
esac
if [[ $list_only -eq 1 ]]; then
  printf '%-32s %-16s %s\n' name releases aliases
  awk -F'\t' '!/^#/ && NF == 4 { printf "%-32s %-16s %s\n", $1, $2, $4 }' "$table"
  exit 0
fi

# resolve NAME in the table: "<release name>\t<key>\t<release>" of the first row whose name (any case)
# or an alias is NAME and that the release has (without --version: the first release that has it);
# "-\t<releases>" when it exists only in other releases
resolved="$(awk -F'\t' -v want="$(printf '%s' "$dataset" | tr '[:upper:]' '[:lower:]')" -v ver="$version" '
  /^#/ || NF != 4 { next }
  {
    n = split($4, al, ","); hit = (tolower($1) == want)
    for (i = 1; i <= n; i++) if (al[i] == want) hit = 1
    if (!hit) next
    key = (n > 0 && al[1] != "") ? al[1] : tolower($1)
    if (ver == "") { split($2, vs, ","); print $1 "\t" key "\t" vs[1]; found = 1; exit }
    if (index("," $2 ",", "," ver ",")) { print $1 "\t" key "\t" ver; found = 1; exit }
    other = other (other ? ", " : "") $2
  }
  END { if (!found && other) print "-\t" other }' "$table")"
if [[ -z "$resolved" ]]; then
  die "unknown dataset '$dataset'; bash data_download.sh --list shows every category and its aliases"
fi
IFS=$'\t' read -r cat_name key resolved_version <<<"$resolved"
if [[ "$cat_name" == "-" ]]; then
  die "dataset '$dataset' is not in the $version release (it is in: $key); choose --version accordingly"
fi
version="$resolved_version"

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
esac

if [[ -z "$dest" ]]; then
  dest="${RAREC_HOME:-$HOME/.cache/rarec-lite}/raw/$key"
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
  # a relative RAREC_MIRROR not found from here is read from the repository root, as
  # rarec_lite.paths.mirror does: RAREC_MIRROR=../shared/data works from any directory
  if [[ ! -d "$from" && "$from" != /* ]]; then
    for root in "$here" "$here/.."; do  # run through the link at the top, or as rarec_lite/data_download.sh
      if [[ -d "$root/$from" ]]; then from="$(cd "$root/$from" && pwd)"; break; fi
    done
  fi
  echo "Using RAREC_MIRROR=$from"
fi

if [[ -n "$from" ]]; then
  [[ -d "$from" ]] || die "--from $from: not a directory"
  # the category's names, lower case, for LC-Rec file names (Scientific.inter.json for scientific)
  lc_names="$(awk -F'\t' -v k="$key" '!/^#/ && NF == 4 { n = split($4, al, ","); kk = (n > 0 && al[1] != "") ? al[1] : tolower($1)
            if (kk == k) { printf "%s\n", tolower($1); for (i = 1; i <= n; i++) print al[i] } }' "$table")"
  for dir in "$from" "$from/amazon_$key" "$from/$key"; do
    [[ -d "$dir" ]] || continue
    # raw files of the requested version
    raw_found=1
    for entry in "${files[@]}"; do
      name="$(basename "${entry#*|}")"
      [[ -f "$dir/$name" ]] || raw_found=0
    done
    if [[ $raw_found -eq 1 ]]; then
      echo "Copying the $version $cat_name raw files from $dir to $dest"
      for entry in "${files[@]}"; do
        name="$(basename "${entry#*|}")"
        copy_atomic "$dir/$name" "$dest/$name"
      done
      echo "Done. Next: rarec-lite prepare --dataset $key"
      exit 0
    fi
    # LC-Rec layout: <Name>.inter.json + <Name>.item.json, <Name> one of the category's names
    # (any name in the dataset's own folder when it holds a single pair)
    shopt -s nullglob
    inters=("$dir"/*.inter.json)
    shopt -u nullglob
    pick=""
    for inter in "${inters[@]}"; do
      stem="$(basename "$inter" .inter.json)"
      if printf '%s\n' "$lc_names" | grep -qxF "$(printf '%s' "$stem" | tr '[:upper:]' '[:lower:]')"; then pick="$inter"; break; fi
    done
    if [[ -z "$pick" && ${#inters[@]} -eq 1 && "$dir" != "$from" ]]; then pick="${inters[0]}"; fi
    if [[ -n "$pick" ]]; then
      stem="$(basename "$pick" .inter.json)"
      [[ -f "$dir/$stem.item.json" ]] || die "$pick has no $stem.item.json beside it (the LC-Rec layout needs both)"
      echo "Copying the LC-Rec $cat_name files ($stem.inter.json + $stem.item.json) from $dir to $dest"
      echo "  note: LC-Rec data is already processed (5-core, renumbered ids, no timestamps); --version does not apply"
      copy_atomic "$pick" "$dest/$stem.inter.json"
      copy_atomic "$dir/$stem.item.json" "$dest/$stem.item.json"
      [[ -f "$dir/SOURCE.md" ]] && copy_atomic "$dir/SOURCE.md" "$dest/SOURCE.md"
      echo "Done. Next: rarec-lite prepare --dataset $key"
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
      echo "Copying the OpenP5-style $key files from $dir to $dest"
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
      echo "Done. Next: rarec-lite prepare --dataset $key"
      exit 0
    fi
  done
  names=""
  for entry in "${files[@]}"; do names="$names $(basename "${entry#*|}")"; done
  rmdir "$dest" 2>/dev/null || true
  die "no $key ($cat_name) data in $from, $from/amazon_$key or $from/$key (looked for:$names, <Name>.inter.json + <Name>.item.json, or user_sequence.txt + an item .tsv)"
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
    echo "data from a local mirror instead: bash data_download.sh --dataset $key --from DIR"
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

echo "Downloading the $version $cat_name files to $dest"
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
echo "Done. Next: rarec-lite prepare --dataset $key"
