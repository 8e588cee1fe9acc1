"""`sweeper cache`: list the feature cache's entries (sizes, checksums, last use) or prune it
(`sweeper.data.cache_folder` knows the folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sweeper.data.cache_folder import PRUNE_DAYS, default_cache_root, listing, prune
from sweeper.errors import SweeperError


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days > 0:
        raise argparse.ArgumentTypeError(f"expected a number of days > 0, got '{text}'")
    return days


def add_parser(sub) -> None:
    """`sweeper cache`'s sub-command on the CLI's sub-parsers."""
    p = sub.add_parser("cache", help="list the feature cache's entries (sizes, checksums, last use) or prune it")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default: $SWEEPER_CACHE or ~/.cache/sweeper)")
    p.add_argument("--verify", action="store_true", help="check every entry's checksum (reads every byte)")
    p.add_argument("--prune", action="store_true", help="remove partial files of killed builds and entries unused "
                                                        "for --days days")
    p.add_argument("--days", type=_days, default=PRUNE_DAYS,
                   help=f"with --prune: remove entries unused for this many days (default {PRUNE_DAYS})")
    p.set_defaults(func=cmd_cache)


def cmd_cache(args: argparse.Namespace) -> int:
    """`sweeper cache [--cache-dir DIR] [--verify] [--prune [--days N]]`."""
    root = Path(args.cache_dir or default_cache_root())
    if not root.is_dir():
        raise SweeperError(f"{root}: no feature cache here ({'not a folder' if root.exists() else 'no such folder'})")
    if args.prune:
        print(prune(root, days=args.days))
    else:
        print("\n".join(listing(root, verify=args.verify)))
    return 0
