"""`sweeper plan`: what a search with these options will cost on this machine (`sweeper.search.plan_measure`
measures, `sweeper.search.plan` models), printed as a table and written to OUT/plan.json for `search` to reuse.
"""

from __future__ import annotations


def cmd_plan(args) -> int:
    """`sweeper plan`: the table, and OUT/plan.json for `search` to reuse."""
    from sweeper.cli.inputs import resolve_backbone, resolve_data
    from sweeper.files import write_json
    from sweeper.search.plan import PLAN_FILE, format_plan
    from sweeper.search.plan_measure import make_plan
    from sweeper.search.space import default_space_path, find_space, load_space

    space = load_space(find_space(args.space) if args.space else default_space_path())
    source = resolve_data(args)
    result = make_plan(args, space, source=source, backbone=resolve_backbone(args, source))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / PLAN_FILE, result)
    print(format_plan(result))
    print(f"plan: {args.out / PLAN_FILE}")
    return 0
