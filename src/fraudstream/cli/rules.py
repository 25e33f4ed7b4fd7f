"""`fraudstream rules` and `fraudstream lists`: the rule book and the live lists for
automation, as on the dashboard's Rules and Lists pages. ``--by`` names the dashboard user
accountable for a change (their role applies: four eyes hold here too)."""

from __future__ import annotations

import json
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from fraudstream.cli._options import err, fail, out, settings_of

rules_app = typer.Typer(help="The rule book: draft, approve, publish, roll back, backtest.")
lists_app = typer.Typer(help="Live allow and block lists of cards and terminals.")
_BY = typer.Option(help="The dashboard user accountable for the change (their role applies).")


def _run(ctx: typer.Context, by: str, step, *args: Any, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
    from fraudstream.clock import SystemClock
    from fraudstream.store.db import connect
    from fraudstream.store.lists import ListError
    from fraudstream.store.rulebook import RuleBookError
    from fraudstream.store.users import active_user

    with connect(settings_of(ctx), autocommit=True) as conn:
        user = active_user(conn, by)
        if user is None:
            fail(f"--by {by!r}: no active dashboard user of that name", 2)
        try:
            return step(conn, *args, by=user, at=SystemClock().now(), **kwargs)
        except (RuleBookError, ListError) as error:
            fail(str(error), 2)


def _rules_file(path: Path) -> list[dict[str, Any]]:
    from fraudstream.policy.rules import RulesError, load_rules

    try:
        rules = load_rules(path)
    except RulesError as error:
        fail(str(error), 2)
    return [rule.model_dump(mode="json", exclude_unset=True) for rule in rules.rule]


@rules_app.command("list")
def rules_list(ctx: typer.Context) -> None:
    """Every version: number, status, rules, who drafted and approved it, note."""
    from fraudstream.store.db import connect
    from fraudstream.store.rulebook import versions

    with connect(settings_of(ctx)) as conn:
        table = versions(conn)
    for row in table.itertuples():
        typer.echo(
            f"{row.version}\t{row.status}\t{len(row.rules)} rules\tdrafted by {row.drafted_by}"
            f"\tapproved by {row.approved_by or '-'}\t{row.note}"
        )


@rules_app.command("draft")
def rules_draft(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A rules file (TOML, as policy.rules_file).")],
    by: Annotated[str, _BY],
    note: Annotated[str, typer.Option(help="What changes, and why.")] = "",
) -> None:
    """Draft a new version from FILE."""
    from fraudstream.store.rulebook import draft

    version = _run(ctx, by, draft, _rules_file(file), note=note)
    err.print(f"version {version} drafted: another supervisor approves it")
    out.print(version)


@rules_app.command("approve")
def rules_approve(
    ctx: typer.Context, version: Annotated[int, typer.Argument()], by: Annotated[str, _BY]
) -> None:
    """Approve VERSION (a supervisor who did not draft it)."""
    from fraudstream.store.rulebook import approve

    _run(ctx, by, approve, version)
    err.print(f"version {version} approved")


@rules_app.command("publish")
def rules_publish(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument()],
    by: Annotated[str, _BY],
    shadow: Annotated[bool, typer.Option(help="Run it in shadow, beside the live one.")] = False,
) -> None:
    """Publish an approved VERSION (an earlier one than the live: a rollback); engines pick
    it up within seconds."""
    from fraudstream.store.rulebook import publish

    _run(ctx, by, publish, version, target="shadow" if shadow else "live")
    err.print(f"version {version} {'runs in shadow' if shadow else 'is live'}")


@rules_app.command("backtest")
def rules_backtest(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(help="A rules file; or --version.")] = None,
    version: Annotated[int | None, typer.Option(help="A stored version.")] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="The last DAYS days.")] = 14,
    capacity: Annotated[int, typer.Option(min=1, help="Cards analysts review a day.")] = 100,
) -> None:
    """What the rules would have reviewed and declined per day on stored predictions, their
    precision and recall on matured labels beside the live policy's (JSON lines)."""
    from fraudstream.model.registry import Registry
    from fraudstream.policy.rules import load_rules
    from fraudstream.store.backtest import backtest
    from fraudstream.store.db import connect
    from fraudstream.store.lists import active_lists
    from fraudstream.store.rulebook import version_rules

    if (file is None) == (version is None):
        raise typer.BadParameter("give a rules FILE or --version, not both")
    settings = settings_of(ctx)
    registry = Registry(settings.models_dir)
    model = registry.current()
    thresholds = registry.metadata(model)["thresholds"] if model else {"review": 2, "decline": 3}
    today = datetime.now(timezone.utc).date()
    with connect(settings) as conn:
        rules = load_rules(file) if file else version_rules(conn, version)  # type: ignore[arg-type]
        rules = rules.model_copy(update={"lists": active_lists(conn, datetime.now(timezone.utc))})
        result = backtest(
            conn, rules, first=today - timedelta(days=days), last=today, thresholds=thresholds,
            matured_before=today - timedelta(days=settings.engine.quality_maturity_days),
            capacity=capacity,
        )  # fmt: skip
    for row in result.days.to_dict("records"):
        typer.echo(json.dumps({k: (None if v != v else v) for k, v in row.items()}, default=str))
    err.print(
        f"{result.rows:,} predictions; totals: "
        + json.dumps({k: round(v, 4) for k, v in result.totals.items()})
        + (f"; never read: {', '.join(result.unread)}" if result.unread else "")
    )


@lists_app.command("show")
def lists_show(ctx: typer.Context) -> None:
    """The entries in force: id, list, value, reason, who, expiry."""

    from fraudstream.store.db import connect
    from fraudstream.store.lists import entries

    with connect(settings_of(ctx)) as conn:
        table = entries(conn, datetime.now(timezone.utc))
    for row in table.itertuples():
        until = (
            "-" if row.expires_at is None or row.expires_at != row.expires_at else row.expires_at
        )
        typer.echo(f"{row.id}\t{row.list_name}\t{row.value}\t{row.reason}\t{row.added_by}\t{until}")


@lists_app.command("add")
def lists_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="e.g. blocked_cards, allowed_terminals")],
    value: Annotated[str, typer.Argument(help="A card token or a terminal id.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the entry).")],
    by: Annotated[str, _BY],
    until: Annotated[
        datetime | None, typer.Option(help="Expiry (UTC; a date means its end).")
    ] = None,
) -> None:
    """Put VALUE on list NAME; every engine applies it within seconds."""
    from fraudstream.store.lists import add_entry

    expires = None
    if until is not None:
        expires = until.replace(tzinfo=timezone.utc)
        if until.time() == time.min:
            expires = datetime.combine(until.date(), time.max, timezone.utc)
    entry = _run(ctx, by, add_entry, name, value, reason=reason, expires_at=expires)
    err.print(f"entry {entry} added to {name}")


@lists_app.command("remove")
def lists_remove(
    ctx: typer.Context, entry: Annotated[int, typer.Argument()], by: Annotated[str, _BY]
) -> None:
    """Take entry ENTRY off its list."""
    from fraudstream.store.lists import remove_entry

    _run(ctx, by, remove_entry, entry)
    err.print(f"entry {entry} removed")
