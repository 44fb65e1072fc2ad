#!/usr/bin/env bash
# Checks deploy/prometheus/embcache-alerts.yml: promtool check rules, promtool test rules
# on embcache-alerts.test.yml, and that every embcache_* series the rules (and the Grafana
# dashboard, deploy/grafana/embcache-dashboard.json) name is one
# core/metrics.c exports (a stat_table entry, as embcache_<stat> for a gauge or
# embcache_<stat>_total for a counter, a family name written out there, or a histogram
# core/server_admin.c renders with ec_metrics_put_hist), so renaming a
# statistic breaks this test instead of silently blinding an alert.
# The series check needs no promtool; the rest is skipped (exit 77) when promtool is not
# installed (Debian: apt-get install prometheus).
# Usage: check-alerts.sh [SOURCE_DIR]   (default: the checkout this script is in)
set -u

src=${1:-"$(cd "$(dirname "$0")/../.." && pwd)"}
rules="$src/deploy/prometheus/embcache-alerts.yml"
tests="$src/deploy/prometheus/embcache-alerts.test.yml"
metrics_c="$src/core/metrics.c"

# Series names: a stat_table line is {"stat", 'c'|'g', ...}; families written out whole
# are quoted "embcache_..." strings.
known=$(sed -n "s/^ *{\"\([a-z0-9_]*\)\", *'c'.*/embcache_\1_total/p;
                s/^ *{\"\([a-z0-9_]*\)\", *'g'.*/embcache_\1/p" "$metrics_c";
        grep -o '"embcache_[a-z0-9_]*"' "$metrics_c" | tr -d '"';
        sed -n 's/.*ec_metrics_put_hist(k, "\([a-z0-9_]*\)".*/embcache_\1_seconds\
embcache_\1_seconds_bucket\
embcache_\1_seconds_count\
embcache_\1_seconds_sum/p' "$src/core/server_admin.c")
if [ "$(printf '%s\n' "$known" | grep -c .)" -lt 50 ]; then
  echo "check-alerts.sh: found too few series in $metrics_c: has stat_table changed shape?" >&2
  exit 1
fi
dashboard="$src/deploy/grafana/embcache-dashboard.json"
used=$( (grep -v '^ *#' "$rules"; cat "$dashboard") | grep -o 'embcache_[a-z0-9_]*' | sort -u)
bad=0
for name in $used; do
  if ! printf '%s\n' "$known" | grep -qx "$name"; then
    echo "check-alerts.sh: the rules or the dashboard use $name, which core/metrics.c does" \
         "not export" >&2
    bad=1
  fi
done
[ "$bad" -eq 0 ] || exit 1
echo "check-alerts.sh: $(printf '%s\n' "$used" | grep -c .) series, all exported"

if ! command -v promtool >/dev/null 2>&1; then
  echo "check-alerts.sh: promtool not installed (apt-get install prometheus): skipped"
  exit 77
fi

promtool check rules "$rules" || exit $?
promtool test rules "$tests" || exit $?
