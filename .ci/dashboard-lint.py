#!/usr/bin/env python3
"""Checks deploy/grafana/flowwatch.json against grafana/dashboard-linter's rules, which cannot be
installed here (it is a Go program with no release for this machine). Each rule below carries the
linter's name; PromQL is parsed by promql-parser (pinned in .ci/test), a port of Prometheus's own
parser, so selectors, ranges and functions are read as Prometheus reads them.

    python3 .ci/dashboard-lint.py [dashboard.json]   # prints every problem, exits 1 on any
    python3 .ci/dashboard-lint.py --self-test        # each rule must catch a broken copy

On top of the linter's rules: the rows the dashboard promises (docs/dashboards.md), unique panel
ids, and a uid, so an import replaces rather than duplicates it.
"""

import copy
import datetime
import json
import re
import sys

import promql_parser

DASHBOARD = "deploy/grafana/flowwatch.json"
ROWS = ["Overview", "Flows", "API", "Push", "Process"]
DATASOURCE_UIDS = {"$datasource", "${datasource}"}
# What stands in for $__rate_interval while parsing, to recognise it after: a range no one writes
# (dashboard-linter uses 8869990787ms, which promql-parser's millisecond parsing overflows).
RATE_INTERVAL = "8869990s"
RATE_INTERVAL_SECONDS = 8869990.0
PANELS_WITH_QUERIES = {"stat", "singlestat", "graph", "table", "timeseries", "gauge"}
# Grafana's unit ids (packages/grafana-data/src/valueFormats/categories.ts), the families a
# dashboard of an exporter uses.
UNITS = set(
    "none string short percent percentunit sci locale "
    "bytes decbytes bits decbits kbytes deckbytes mbytes decmbytes gbytes decgbytes "
    "pps binBps Bps binbps bps "
    "dateTimeAsIso dateTimeAsIsoNoDateIfToday dateTimeAsUS dateTimeAsLocal dateTimeAsSystem dateTimeFromNow "
    "hertz ns µs ms s m h d dtdurationms dtdurations dthms dtdhms timeticks clockms clocks "
    "cps ops reqps rps wps iops cpm opm rpm wpm mps mpm "
    "bool bool_yes_no bool_on_off".split()
)


def lint(dashboard):
    """Every problem of `dashboard`, one line each, named by rule."""
    problems = []
    templates = dashboard.get("templating", {}).get("list", [])
    problems += template_datasource(templates)
    for name in ("job", "instance"):
        problems += template_variable(templates, name)
    problems += template_reload_and_queries(templates)
    if dashboard.get("editable", True):
        problems.append("uneditable-dashboard: set editable to false")
    if not dashboard.get("uid"):
        problems.append("flowwatch: the dashboard needs a uid")
    panels = dashboard.get("panels", [])
    rows = [p.get("title") for p in panels if p.get("type") == "row"]
    if rows != ROWS:
        problems.append(f"flowwatch: rows should be {ROWS}, are {rows}")
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        problems.append("flowwatch: panel ids repeat")
    for panel in panels:
        if panel.get("type") in PANELS_WITH_QUERIES:
            problems += [f"panel '{panel.get('title')}': {p}" for p in lint_panel(panel)]
    return problems


def template_datasource(templates):
    sources = [t for t in templates if t.get("type") == "datasource"]
    if len(sources) != 1:
        return ["template-datasource-rule: one templated data source variable is needed"]
    source = sources[0]
    problems = []
    if source.get("name") not in ("datasource", "prometheus_datasource"):
        problems.append("template-datasource-rule: name it 'datasource'")
    if source.get("label") not in ("Data source", "Prometheus data source"):
        problems.append("template-datasource-rule: label it 'Data source'")
    if source.get("query") != "prometheus":
        problems.append("template-datasource-rule: its query must be 'prometheus'")
    return problems


def template_variable(templates, name):
    rule = f"template-{name}-rule"
    found = [t for t in templates if t.get("name") == name]
    if not found:
        return [f"{rule}: the {name} variable is missing"]
    t = found[0]
    problems = []
    if (t.get("datasource") or {}).get("uid") not in DATASOURCE_UIDS:
        problems.append(f"{rule}: use the datasource '$datasource'")
    if t.get("type") != "query":
        problems.append(f"{rule}: make it a Prometheus query")
    if t.get("label") != name.title():
        problems.append(f"{rule}: label it '{name.title()}'")
    if not t.get("multi"):
        problems.append(f"{rule}: make it a multi select")
    if t.get("allValue") != ".+":
        problems.append(f"{rule}: allValue must be '.+'")
    return problems


def template_reload_and_queries(templates):
    problems = []
    for t in templates:
        if t.get("type") != "query":
            continue
        if t.get("refresh") != 2:
            problems.append(f"template-on-time-change-reload-rule: refresh '{t.get('name')}' on time range change (2)")
        query = t.get("query")
        text = query.get("query", "") if isinstance(query, dict) else query or ""
        problems += [f"template-label-promql-rule: '{t.get('name')}': {p}" for p in variable_query(text)]
    return problems


def variable_query(text):
    call = re.fullmatch(r"\s*([a-z_]+)\((.*)\)\s*", text)
    if not call:
        return [f"not a function call: {text!r}"]
    function, argument = call.groups()
    if function not in ("label_names", "label_values", "metrics", "query_result"):
        return [f"unknown function {function}"]
    if function == "label_values" and "," in argument:
        argument, label = argument.rsplit(",", 1)
        if not re.fullmatch(r"\s*[a-zA-Z_][a-zA-Z0-9_]*\s*", label):
            return [f"not a label name: {label.strip()!r}"]
    if function in ("label_values", "query_result") and argument.strip():
        try:
            promql_parser.parse(substituted(argument))
        except Exception as e:
            return [f"invalid PromQL {argument!r}: {e}"]
    return []


def lint_panel(panel):
    problems = []
    if not panel.get("title") or not panel.get("description"):
        problems.append("panel-title-description-rule: give it a title and a description")
    if (panel.get("datasource") or {}).get("uid") not in DATASOURCE_UIDS:
        problems.append("panel-datasource-rule: use the templated datasource")
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    if unit not in UNITS:
        problems.append(f"panel-units-rule: unit {unit!r} is not one of Grafana's")
    targets = panel.get("targets") or []
    if not targets:
        problems.append("panel-no-targets-rule: it has no query")
    for target in targets:
        if (target.get("datasource") or {}).get("uid", "${datasource}") not in DATASOURCE_UIDS:
            problems.append(f"panel-datasource-rule: query {target.get('refId')} uses another datasource")
        problems += lint_query(target.get("expr", ""))
    return problems


def substituted(expr):
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("${__rate_interval}", RATE_INTERVAL)


def lint_query(expr):
    try:
        tree = promql_parser.parse(substituted(expr))
    except Exception as e:
        return [f"target-promql-rule: invalid PromQL {expr!r}: {e}"]
    problems = []

    def visit(node, parents):
        if isinstance(node, promql_parser.VectorSelector):
            problems.extend(selector(node, parents, expr))
        elif isinstance(node, promql_parser.MatrixSelector):
            problems.extend(matrix(node, parents, expr))
            visit(node.vector_selector, parents + [node])
            return
        for child in children(node):
            visit(child, parents + [node])

    visit(tree, [])
    return problems


def children(node):
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, promql_parser.Call):
        return list(node.args)
    if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        return [node.expr]
    return []


def selector(node, parents, expr):
    problems = []
    matchers = {(m.name, m.value): m.op for m in node.matchers.matchers}
    for name in ("job", "instance"):
        if matchers.get((name, f"${name}")) != promql_parser.MatchOp.Re:
            problems.append(f"target-{name}-rule: {node} in {expr!r} lacks {name}=~\"${name}\"")
    if (node.name or "").endswith("_total"):
        ranged = len(parents) >= 2 and isinstance(parents[-1], promql_parser.MatrixSelector)
        call = parents[-2] if ranged else None
        if not (isinstance(call, promql_parser.Call) and call.func.name in ("rate", "irate", "increase")):
            problems.append(f"target-counter-agg-rule: counter {node.name} in {expr!r} is not in rate, irate or increase")
    return problems


def matrix(node, parents, expr):
    inside = parents[-1] if parents else None
    if isinstance(inside, promql_parser.Call) and inside.func.name in ("rate", "irate"):
        if abs(node.range.total_seconds() - RATE_INTERVAL_SECONDS) > 0.001:
            return [f"target-rate-interval-rule: {expr!r} should use $__rate_interval"]
    elif abs(node.range.total_seconds() - RATE_INTERVAL_SECONDS) < 0.001:
        return [f"target-rate-interval-rule: $__rate_interval used outside rate or irate in {expr!r}"]
    return []


def self_test(dashboard):
    """Every rule must catch its own kind of breakage; returns the mutations nothing caught."""
    def first_panel(d):
        return next(p for p in d["panels"] if p.get("type") == "timeseries" and "rate(" in p["targets"][0]["expr"])

    def set_expr(d, change):
        target = first_panel(d)["targets"][0]
        target["expr"] = change(target["expr"])

    mutations = {
        "template-datasource-rule": lambda d: d["templating"]["list"].pop(0),
        "template-job-rule": lambda d: d["templating"]["list"][1].update(allValue=""),
        "template-instance-rule": lambda d: d["templating"]["list"][2].update(multi=False),
        "template-on-time-change-reload-rule": lambda d: d["templating"]["list"][1].update(refresh=1),
        "template-label-promql-rule": lambda d: d["templating"]["list"][2]["query"].update(query="label_values(up{, instance)"),
        "uneditable-dashboard": lambda d: d.update(editable=True),
        "panel-title-description-rule": lambda d: first_panel(d).update(description=""),
        "panel-datasource-rule": lambda d: first_panel(d).update(datasource={"uid": "prometheus"}),
        "panel-units-rule": lambda d: first_panel(d)["fieldConfig"]["defaults"].update(unit="furlongs"),
        "panel-no-targets-rule": lambda d: first_panel(d).update(targets=[]),
        "target-promql-rule": lambda d: set_expr(d, lambda e: e + " +"),
        "target-job-rule": lambda d: set_expr(d, lambda e: e.replace('job=~"$job", ', "", 1)),
        "target-instance-rule": lambda d: set_expr(d, lambda e: e.replace(', instance=~"$instance"', "", 1)),
        "target-rate-interval-rule": lambda d: set_expr(d, lambda e: e.replace("$__rate_interval", "5m", 1)),
        "target-counter-agg-rule": lambda d: set_expr(d, lambda e: re.sub(r"rate\((\w+_total\{[^}]*\})\[\$__rate_interval\]\)", r"\1", e, count=1)),
        "flowwatch: rows": lambda d: next(p for p in d["panels"] if p["type"] == "row").update(title="Misc"),
    }
    missed = []
    for rule, mutate in mutations.items():
        broken = copy.deepcopy(dashboard)
        mutate(broken)
        if not any(p.startswith(rule) or f": {rule}" in p for p in lint(broken)):
            missed.append(rule)
    return missed


def main(argv):
    if argv[1:] == ["--self-test"]:
        with open(DASHBOARD, encoding="utf-8") as f:
            missed = self_test(json.load(f))
        if missed:
            print("these rules did not catch their breakage:", ", ".join(missed))
            return 1
        print("dashboard lint self-test: every rule caught its breakage")
        return 0
    path = argv[1] if len(argv) > 1 else DASHBOARD
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    problems = lint(dashboard)
    for problem in problems:
        print(f"{path}: {problem}")
    queries = sum(len(p.get("targets") or []) for p in dashboard.get("panels", []))
    if not problems:
        print(f"{path}: dashboard-linter's rules hold for {queries} queries")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
