#!/usr/bin/env bash
# Markdown for a CI job summary or a PR comment: what this commit changes in params.yaml
# and in the committed metrics, against BASE (a branch or commit; default origin/main).
#   bash scripts/ci-report.sh origin/main >> "$GITHUB_STEP_SUMMARY"
# Metrics are git-tracked files (cache: false in dvc.yaml), so no `dvc pull` is needed.
set -euo pipefail
base=${1:-origin/main}
echo "## Params and metrics against \`$base\`"
echo
if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
  echo "No \`$base\` to compare with (a new branch, or a shallow checkout: fetch-depth: 0)."
  exit 0
fi
for what in params metrics; do
  echo "### ${what^}"
  echo
  diff=$(dvc "$what" diff "$base" --md)
  echo "${diff:-No $what changed.}"
  echo
done
