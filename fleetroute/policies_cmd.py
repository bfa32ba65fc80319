"""``fleetroute policies``: the named routing policies, their rules and parameters."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from router.policy.registry import describe_policies


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def policies(as_json: bool) -> None:
    """Routing policies: name, rule and parameters with their defaults."""
    described = describe_policies()
    if as_json:
        listing = [
            {"name": name, "description": description, "parameters": parameters}
            for name, description, parameters in described
        ]
        click.echo(json.dumps(listing, indent=2))
        return
    table = Table(title="Routing policies")
    table.add_column("policy", style="bold", no_wrap=True)
    table.add_column("rule")
    table.add_column("parameters (defaults)")
    for name, description, parameters in described:
        table.add_row(name, description, ", ".join(f"{k}={v}" for k, v in parameters.items()) or "-")
    Console().print(table)
