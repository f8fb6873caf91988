"""The Amazon categories the course knows by name: each release's own names, short aliases, labels.

One table, ``categories.tsv`` next to this file, lists every category of the public 2014, 2018 and
2023 Amazon review releases (McAuley et al. SIGIR'15 / He & McAuley WWW'16; Ni, Li & McAuley
EMNLP'19; Hou et al. arXiv 2403.03952), the releases that have it, the root node of its category
paths, and short aliases (``cloth``, ``beauty``, ``sports``, ``toys``, ``scientific``,
``instruments``, ``book``, ...). ``data_download.sh`` reads the same table, so the script and the
package agree on names.

A dataset is known by its **key**: the category's first alias (``scientific`` for
``Industrial_and_Scientific``), or its lower-cased name when it has none. The key names the
processed directory (``$RAREC_HOME/processed/<key>``), the download directory and every label.
``toy`` is the synthetic dataset (:func:`rarec_lite.data.synthetic_dataset`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("categories.tsv")
VERSIONS = ("2014", "2018", "2023")
TOY = "toy"


@dataclass(frozen=True)
class Category:
    """One row of ``categories.tsv``.

    Attributes:
        name: the release's own spelling, used in its file names (``Industrial_and_Scientific``).
        versions: the releases that have it (``("2018", "2023")``).
        root: the root node of its category paths in the metadata (``Industrial & Scientific``).
        aliases: short names (``("scientific", "industrial")``); the first is the key.
    """

    name: str
    versions: tuple[str, ...]
    root: str
    aliases: tuple[str, ...]

    @property
    def key(self) -> str:
        """The dataset key: the first alias, else the lower-cased name."""
        return self.aliases[0] if self.aliases else self.name.lower()

    @property
    def label(self) -> str:
        """What reports call the dataset: ``"Amazon Industrial & Scientific"``."""
        return f"Amazon {self.root}"


def _read_table(path: Path = TABLE) -> tuple[Category, ...]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise ValueError(f"{path}:{lineno}: expected 4 tab-separated fields (name, versions, root, aliases)")
        name, versions, root, aliases = fields
        vs = tuple(v.strip() for v in versions.split(",") if v.strip())
        if not vs or set(vs) - set(VERSIONS):
            raise ValueError(f"{path}:{lineno}: versions {versions!r} must be among {', '.join(VERSIONS)}")
        rows.append(Category(name.strip(), vs, root.strip(), tuple(a.strip() for a in aliases.split(",") if a.strip())))
    return tuple(rows)


CATEGORIES: tuple[Category, ...] = _read_table()


def known_names() -> list[str]:
    """Every name :func:`resolve` accepts: aliases and the releases' own names, sorted."""
    names = {TOY}
    for c in CATEGORIES:
        names.add(c.name)
        names.update(c.aliases)
    return sorted(names, key=str.lower)


def resolve(name: str, version: str | int | None = None) -> Category:
    """The category called ``name`` (an alias or a release's name, case-insensitive), in ``version``.

    An alias names the first row that has it in ``version`` (any release when ``version`` is
    ``None``): ``beauty`` is ``Beauty`` in 2014, ``All_Beauty`` in 2018 and 2023.

    Raises:
        ValueError: an unknown name (with the closest known names), a known category that the
            release does not have (with the releases that do), or an unknown release.
    """
    if version is not None and str(version) not in VERSIONS:
        raise ValueError(f"unknown release {version!r}; choose one of {', '.join(VERSIONS)}")
    wanted = str(name).strip().lower()
    matches = [c for c in CATEGORIES if c.name.lower() == wanted]
    matches += [c for c in CATEGORIES if wanted in c.aliases and c not in matches]
    if not matches:
        lower = sorted({n.lower() for n in known_names()})
        close = difflib.get_close_matches(wanted, lower, n=4, cutoff=0.6)
        close += [n for n in lower if wanted and wanted in n and n not in close][:4]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        aliases = sorted({TOY} | {a for c in CATEGORIES for a in c.aliases})
        raise ValueError(f"unknown dataset {name!r}{hint}; known: {', '.join(aliases)}, or a release's own "
                         f"category name (e.g. Industrial_and_Scientific; all in {TABLE})")
    if version is None:
        return matches[0]
    for c in matches:
        if str(version) in c.versions:
            return c
    have = sorted({v for c in matches for v in c.versions})
    raise ValueError(f"dataset {name!r} ({matches[0].name}) is not in the {version} release; "
                     f"it is in {', '.join(have)}")


def dataset_key(name: str) -> str:
    """The key of ``name`` (``"Industrial_and_Scientific"`` and ``"scientific"`` both give
    ``"scientific"``; ``"toy"`` stays ``"toy"``). Raises ``ValueError`` as :func:`resolve`."""
    if str(name).strip().lower() == TOY:
        return TOY
    return resolve(name).key


def category_of_key(key: str) -> Category:
    """The category whose key is ``key`` (the first in the table). Raises ``ValueError`` when none."""
    for c in CATEGORIES:
        if c.key == key:
            return c
    return resolve(key)


def label(name: str | None) -> str:
    """What to call a dataset in reports and figures: ``"Amazon Clothing, Shoes & Jewelry"``,
    ``"Amazon Industrial & Scientific"``, ``"synthetic toy data"``; an unknown name is returned as is."""
    if not name:
        return "?"
    if str(name).lower() == TOY:
        return "synthetic toy data"
    try:
        return category_of_key(dataset_key(name)).label
    except ValueError:
        return str(name)


def short_label(name: str | None) -> str:
    """The root alone, for figure titles and sentences: ``"Clothing, Shoes & Jewelry"``, ``"toy"``."""
    if not name:
        return "?"
    if str(name).lower() == TOY:
        return "toy"
    try:
        return category_of_key(dataset_key(name)).root
    except ValueError:
        return str(name)


def root_names() -> frozenset[str]:
    """Every category's root node, with ``&`` and ``and`` spellings (the metadata uses both):
    dropped from item text, since every item of a file has it."""
    roots = set()
    for c in CATEGORIES:
        roots.update({c.root, c.root.replace(" & ", " and "), c.name.replace("_", " "),
                      c.name.replace("_and_", " & ").replace("_", " ")})
    roots.add("Clothing, Shoes and Jewelry")
    return frozenset(roots)


#: Amazon's file-name spelling of each dataset key's category (the first release that has it).
CATEGORY_FILE_NAMES = {}
for _c in CATEGORIES:
    CATEGORY_FILE_NAMES.setdefault(_c.key, _c.name)
del _c
