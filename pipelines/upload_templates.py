"""Upload compiled pipeline templates to an Artifact Registry KFP repository.

    python -m pipelines.upload_templates --host https://REGION-kfp.pkg.dev/PROJECT/REPO \
        --tag v1.2.3 build/pipelines/*.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def upload(host: str, templates: list[Path], tags: list[str]) -> list[tuple[str, str]]:
    """Upload each template with `tags` (plus 'latest'); return (package name, version) pairs."""
    from kfp.registry import RegistryClient

    client = RegistryClient(host=host)
    return [tuple(client.upload_pipeline(file_name=str(t), tags=[*tags, "latest"])) for t in templates]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True, help="https://REGION-kfp.pkg.dev/PROJECT/REPO")
    parser.add_argument("--tag", action="append", default=[], help="a tag for every template (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, send nothing")
    parser.add_argument("templates", nargs="+", type=Path)
    args = parser.parse_args(argv)
    missing = [str(t) for t in args.templates if not t.is_file()]
    if missing:
        print(f"error: templates not found: {missing}", file=sys.stderr)
        return 2
    if not args.host.startswith("https://") or "-kfp.pkg.dev/" not in args.host:
        print(f"error: --host {args.host!r} must look like https://REGION-kfp.pkg.dev/PROJECT/REPO", file=sys.stderr)
        return 2
    if args.dry_run:
        for template in args.templates:
            print(f"would upload {template} to {args.host} with tags {[*args.tag, 'latest']}")
        return 0
    for name, version in upload(args.host, args.templates, args.tag):
        print(f"uploaded {name} version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
