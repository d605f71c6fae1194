"""``percolate-models``: build and check the Triton model repository."""
from __future__ import annotations

import argparse
import json
import sys

from .build import BuildOptions, build, stale_repository_files, verify
from .catalog import MODELS
from .errors import PercolateError
from .paths import ProjectPaths
from .tune import GROUP_ERRORS, TUNED, group_of


def _variant(text: str) -> tuple[str, str]:
    name, sep, variant = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected MODEL=VARIANT, got {text!r}")
    return name, variant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="percolate-models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="export, cache and install every model (idempotent)")
    b.add_argument("--only", action="append", default=[], choices=[m.name for m in MODELS],
                   help="build only this model (repeatable)")
    b.add_argument("--variant", action="append", default=[], type=_variant,
                   metavar="MODEL=VARIANT",
                   help="weight variant to install for the cpu target, e.g. text_embedding=fp32 ("
                        + "; ".join(f"{m.name}: {', '.join(m.variants)}, default "
                                    + ("the fastest on this machine within the accuracy floor"
                                       if m.name in TUNED else
                                       f"the fastest on this machine with no more {GROUP_ERRORS[group]} than "
                                       f"fp32 when the whole group is built, else {m.default}"
                                       if (group := group_of(m.name)) else m.default)
                                    for m in MODELS if len(m.variants) > 1)
                        + "); the gpu target always gets the fp32 reference")
    b.add_argument("--no-tune", action="store_true",
                   help="install the catalog's default variants instead of timing them on this machine")
    v = sub.add_parser("verify", help="check the repository against the manifest")
    v.add_argument("--only", action="append", default=[], choices=[m.name for m in MODELS],
                   help="the repository need hold only this model (repeatable; for one built with "
                        "`build --only`); default every catalog model")
    sub.add_parser("check", help="check, without writing, that the committed configs and model.py "
                                 "files are what the catalog renders (CI runs it before the build)")
    sub.add_parser("show", help="print the manifest (artefacts, sources, accuracy)")
    args = parser.parse_args(argv)
    paths = ProjectPaths.from_env()
    try:
        if args.command == "build":
            build(paths, BuildOptions(models=tuple(args.only), variants=dict(args.variant), tune=not args.no_tune),
                  say=lambda line: print(line, flush=True))
        elif args.command == "check":
            stale = stale_repository_files(paths)
            for relative in stale:
                print(f"stale: {paths.model_repository / relative} differs from the catalog", file=sys.stderr)
            if stale:
                print("run `percolate-models build` and commit the files it rewrites", file=sys.stderr)
                return 1
            print(f"{paths.model_repository}: committed configs and model.py files match the catalog")
        elif args.command == "verify":
            problems = verify(paths, args.only or None)
            for problem in problems:
                print(f"problem: {problem}", file=sys.stderr)
            if problems:
                print("run `percolate-models build` to repair the repository", file=sys.stderr)
                return 1
            print(f"{paths.model_repository}: every artefact matches {paths.manifest}")
        else:
            print(paths.manifest.read_text() if paths.manifest.exists()
                  else json.dumps({"error": "no manifest: run `percolate-models build`"}))
    except PercolateError as err:
        print(f"percolate-models: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("percolate-models: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
