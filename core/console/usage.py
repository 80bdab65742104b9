"""A service's usage by team and its estimated cost: price per hour of its cluster × the calls' remote seconds.

A caller's team is the prefix of its name when it has one (``ml-platform/ci``, ``airflow:etl``), else the team it
is a member of in the registry (the first by name when several), else its own name: its personal namespace.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from tether.compute.state import load_state
from tether.console.charts import stacked_bars
from tether.console.html import e, table
from tether.console.machines import price_per_hour
from tether.registry.access import teams_of
from tether.registry.engine import transaction
from tether.registry.models import CallRecord
from tether.registry.store import Store

__all__ = ["cluster_price", "team_section", "teams_of_callers"]


def teams_of_callers(store: Store, callers: Iterable[str]) -> dict[str, str]:
    """Caller → its team (see the module docstring)."""
    out: dict[str, str] = {}
    with transaction(store.engine) as conn:
        for caller in set(callers):
            for sep in ("/", ":"):
                if sep in caller:
                    out[caller] = caller.split(sep, 1)[0]
                    break
            else:
                teams = sorted(teams_of(conn, caller))
                out[caller] = teams[0] if teams else caller
    return out


def cluster_price(cluster: str | None) -> float | None:
    """$/h of the cluster named ``cluster`` from this server's state of it (None: unknown here)."""
    return price_per_hour(load_state(cluster)) if cluster else None


def team_section(calls: list[CallRecord], teams: dict[str, str], price: float | None, cluster: str | None) -> str:
    """Calls per day by team, and per team: calls, callers, remote seconds and estimated cost."""
    days = sorted({c.started_at.strftime("%Y-%m-%d") for c in calls})
    index = {d: i for i, d in enumerate(days)}
    per_day: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    seconds: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    callers: dict[str, set[str]] = defaultdict(set)
    for c in calls:
        who = c.caller or "unknown"
        team = teams.get(who, who)
        per_day[team][index[c.started_at.strftime("%Y-%m-%d")]] += 1
        seconds[team] += c.duration_s
        count[team] += 1
        callers[team].add(who)

    def cost(s: float) -> str:
        return "unknown" if price is None else f"${price * s / 3600:.4f}"

    rows = [[f'<span class="team">{e(t)}</span>', e(count[t]), e(", ".join(sorted(callers[t]))),
             e(f"{seconds[t]:.3f}"), f'<span class="cost">{e(cost(seconds[t]))}</span>'] for t in sorted(count)]
    total = sum(seconds.values())
    rows.append(["<b>all</b>", e(len(calls)), "", e(f"{total:.3f}"),
                 f'<b id="cost-total">{e(cost(total))}</b>'])
    where = f"cluster {cluster}" if cluster else "no cluster named in its config"
    rate = f"${price:.4f}/h" if price is not None else "unknown (its cluster's price is not known on this server)"
    return ('<h3 id="usage-teams">By team, and estimated cost</h3>'
            f'<p class="muted" id="cost-basis">price per hour × remote seconds: {e(where)} at {e(rate)}</p>'
            f'<div class="grid"><div class="card" id="chart-teams">'
            f'{stacked_bars(days, per_day, title="calls per day by team")}</div><div>'
            + table(["team", "calls", "callers", "remote seconds", "estimated cost"], rows) + "</div></div>")
