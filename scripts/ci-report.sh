#!/usr/bin/env bash
# Markdown for a CI job summary or a PR comment: what this commit changes against BASE (a
# branch or commit; default origin/main) in the DVC-tracked data and models (`dvc diff`),
# in params.yaml, and in the committed metrics (accuracy, and images per class and split).
#   bash scripts/ci-report.sh origin/main >> "$GITHUB_STEP_SUMMARY"
# Metrics are git-tracked files (cache: false in dvc.yaml), so no `dvc pull` is needed.
# `dvc diff` names each added, deleted or modified image when the folder listings of both
# commits are in the DVC cache (after `dvc pull` or `dvc fetch`); else the folder alone.
set -euo pipefail
base=${1:-origin/main}
echo "## Params and metrics against \`$base\`"
echo
if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
  echo "No \`$base\` to compare with (a new branch, or a shallow checkout: fetch-depth: 0)."
  exit 0
fi
# A table, or the sentence when it has no rows (DVC prints a bare header, or nothing)
table_or() { if [ "$(grep -c '^| ' <<<"$1")" -gt 1 ]; then echo "$1"; else echo "$2"; fi; echo; }
echo "### Data and models (dvc diff)"
echo
table_or "$(dvc diff --md "$base" HEAD)" "No DVC-tracked data or model changed."
for what in params metrics; do
  echo "### ${what^}"
  echo
  table_or "$(dvc "$what" diff "$base" --md)" "No $what changed."
done
