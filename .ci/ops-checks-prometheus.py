"""Checks a running Prometheus that scrapes one shoes-vz server with the alert rules loaded.

Usage: ops-checks-prometheus.py PROMETHEUS_URL DASHBOARD_JSON TIMEOUT_SECONDS
(called by .ci/ops-checks.sh). Waits, up to the timeout, until the target is up and every rule
has been evaluated, then checks:
  - the server's counters are typed `counter` and no shoesvz family is left untyped (the
    mismatch this endpoint once had, an OpenMetrics body under a 0.0.4 Content-Type, is caught
    before, by the Content-Type and `promtool check metrics` checks in ops-checks.sh: it looks
    the same from Prometheus' metadata API);
  - every alert rule evaluates without error;
  - every dashboard query, with Grafana's variables filled in as Grafana would, is valid
    PromQL that Prometheus answers, and every dashboard variable finds its values.
Exits 1 with the reasons on any failure.
"""

import json
import re
import sys
import time
import urllib.parse
import urllib.request

COUNTERS = [
    "shoesvz_queue_timeouts",
    "shoesvz_runners_finished",
    "shoesvz_runners_unclaimed",
    "shoesvz_warm_start_fallbacks",
]
NEVER_EVALUATED = "0001-01-01T00:00:00Z"


def api(base, path, **params):
    url = f"{base}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        # Bad queries answer 400 with a JSON error body.
        return json.load(error)


def ready(base):
    targets = api(base, "targets")["data"]["activeTargets"]
    up = any(t["labels"].get("job") == "shoes-vz" and t["health"] == "up" for t in targets)
    rules = [r for g in api(base, "rules")["data"]["groups"] for r in g["rules"]]
    evaluated = rules and all(r.get("lastEvaluation", NEVER_EVALUATED) != NEVER_EVALUATED for r in rules)
    metadata = api(base, "metadata")["data"]
    return up and evaluated and all(c in metadata for c in COUNTERS)


def fill_variables(expr):
    """Grafana's variables as Grafana fills them for a query."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace('"$job"', '"shoes-vz"')
        .replace('"$instance"', '".*"')
    )


def main():
    base, dashboard_path, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready(base):
                break
        except (OSError, ValueError):
            pass  # not listening yet, or not ready (503 with a plain-text body)
        if time.monotonic() > deadline:
            sys.exit(f"Prometheus did not scrape shoes-vz and evaluate the rules within {timeout:.0f}s")
        time.sleep(0.5)

    problems = []
    metadata = api(base, "metadata")["data"]
    for name, entries in sorted(metadata.items()):
        if name.startswith("shoesvz_") and any(e["type"] in ("unknown", "untyped") for e in entries):
            problems.append(f"Prometheus reads {name} as untyped: {entries}")
    for counter in COUNTERS:
        kinds = [e["type"] for e in metadata.get(counter, [])]
        if kinds != ["counter"]:
            problems.append(f"Prometheus reads {counter} as {kinds}, not counter")
    print(f"metadata: {len(COUNTERS)} counters typed counter, no shoesvz family untyped")

    rules = [r for g in api(base, "rules")["data"]["groups"] for r in g["rules"]]
    for rule in rules:
        if rule["health"] != "ok":
            problems.append(f"rule {rule['name']}: {rule['health']} {rule.get('lastError', '')}")
    print(f"rules: {len(rules)} evaluated by Prometheus")

    with open(dashboard_path, encoding="utf-8") as f:
        dashboard = json.load(f)
    queries = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for title, expr in queries:
        answer = api(base, "query", query=fill_variables(expr))
        if answer.get("status") != "success":
            problems.append(f"panel {title!r}: {answer.get('error')} in {expr}")
    print(f"dashboard: {len(queries)} queries answered")

    variables = 0
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        variables += 1
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["definition"])
        if not match:
            problems.append(f"variable {variable['name']}: unexpected definition {variable['definition']}")
            continue
        selector, label = match.groups()
        answer = api(base, "series", **{"match[]": fill_variables(selector)})
        values = {series.get(label) for series in answer.get("data", [])} - {None}
        if not values:
            problems.append(f"variable {variable['name']}: {variable['definition']} finds no value")
    print(f"dashboard: {variables} variables find values")

    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
