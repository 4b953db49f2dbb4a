"""The ``lprviz`` command.

Sub-commands: ``lpr`` (per-atom LPR of test structures), ``datasets list|fetch|import``,
``app`` (start the Streamlit app). User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lprviz.errors import InputError


def _cmd_lpr(args: argparse.Namespace) -> int:
    raise NotImplementedError  # owned by the features/models work


def _cmd_datasets_list(args: argparse.Namespace) -> int:
    from lprviz import datasets

    rows = [("name", "kind", "cached", "size", "licence", "description")]
    for info in datasets.list_available():
        size = f"{info.size_bytes / 1e6:.1f} MB"
        rows.append((info.name, info.kind, "yes" if info.cached else "no", size, info.licence,
                     info.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    print(f"cache: {datasets.cache_dir()}")
    return 0


def _cmd_datasets_fetch(args: argparse.Namespace) -> int:
    from lprviz import datasets

    paths = datasets.fetch(args.name, base_url=args.base_url, dest=args.dest)
    for path in paths:
        print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB, sha256 verified)")
    return 0


def _cmd_datasets_import(args: argparse.Namespace) -> int:
    from lprviz import datasets

    info = datasets.import_file(args.file, name=args.name)
    print(f"imported as '{info.name}' ({info.kind}): {info.path}")
    return 0


def _cmd_app(args: argparse.Namespace) -> int:
    raise NotImplementedError  # owned by the app work


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``lprviz`` command."""
    parser = argparse.ArgumentParser(prog="lprviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("lpr", help="per-atom LPR of test structures")
    p.set_defaults(func=_cmd_lpr)

    pd = sub.add_parser("datasets", help="list, fetch or import datasets")
    dsub = pd.add_subparsers(dest="datasets_command", required=True)
    p = dsub.add_parser("list", help="shipped, fetchable and cached datasets")
    p.set_defaults(func=_cmd_datasets_list)
    p = dsub.add_parser("fetch", help="download a real DFT dataset (checksums verified)")
    p.add_argument("name", help="fetchable dataset, e.g. mlearn-Si (see: lprviz datasets list)")
    p.add_argument("--base-url", default=None,
                   help="replace the pinned download prefix (a mirror; https only)")
    p.add_argument("--dest", default=None,
                   help="directory for the files (default: the lprviz cache, where load looks)")
    p.set_defaults(func=_cmd_datasets_fetch)
    p = dsub.add_parser("import", help="import a dataset file you already have")
    p.add_argument("file", help="extxyz (or ASE-readable) or mlearn JSON file")
    p.add_argument("--name", default=None, help="name to load it by (default: file stem)")
    p.set_defaults(func=_cmd_datasets_import)

    p = sub.add_parser("app", help="start the Streamlit app")
    p.set_defaults(func=_cmd_app)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lprviz`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"lprviz: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
