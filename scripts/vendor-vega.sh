#!/usr/bin/env bash
# Rebuild .dvc/plots/offline.html, the page `dvc plots show` / `dvc plots diff` fill in
# (plots.html_template in .dvc/config). DVC's own page loads vega, vega-lite and vega-embed
# from a CDN, so its charts stay blank offline; this one carries them inline, taken from the
# npm registry at the pinned versions below, with their licences beside it in LICENSES/.
# Needs npm; run it only to change the versions (the result is committed).
set -euo pipefail
VEGA=5.33.1 VEGA_LITE=5.23.0 VEGA_EMBED=6.29.0  # vega-lite 5 is what DVC's templates write
out=.dvc/plots
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "vega@$VEGA" "vega-lite@$VEGA_LITE" "vega-embed@$VEGA_EMBED" >/dev/null)
mkdir -p "$out/LICENSES"
for pkg in "vega-$VEGA" "vega-lite-$VEGA_LITE" "vega-embed-$VEGA_EMBED"; do
  mkdir "$tmp/$pkg"
  tar xzf "$tmp/$pkg.tgz" -C "$tmp/$pkg"
  if [ -f "$tmp/$pkg/package/LICENSE" ]; then
    cp "$tmp/$pkg/package/LICENSE" "$out/LICENSES/${pkg%-*}.txt"
  fi
done
# The vega package declares BSD-3-Clause (package.json) but ships no LICENSE file: vega-lite's
# is the same licence from the same authors (the University of Washington Interactive Data Lab).
if [ ! -f "$tmp/vega-$VEGA/package/LICENSE" ]; then
  { echo "vega $VEGA: \"license\": \"$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["license"])' \
      "$tmp/vega-$VEGA/package/package.json")\" in its package.json; its npm package has no LICENSE file."
    echo "The text below is vega-lite's LICENSE, the same licence from the same authors."
    echo; cat "$tmp/vega-lite-$VEGA_LITE/package/LICENSE"; } > "$out/LICENSES/vega.txt"
fi
python3 - "$tmp" "$out/offline.html" "$VEGA" "$VEGA_LITE" "$VEGA_EMBED" <<'PY'
import sys
from pathlib import Path

tmp, target, vega, vega_lite, vega_embed = Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]
scripts = []
for name, version in (("vega", vega), ("vega-lite", vega_lite), ("vega-embed", vega_embed)):
    js = (tmp / f"{name}-{version}" / "package" / "build" / f"{name}.min.js").read_text(encoding="utf-8")
    assert "</script" not in js and "{plot_divs}" not in js and "{refresh_tag}" not in js, name
    scripts.append(f"<script>/* {name} {version}, BSD-3-Clause, .dvc/plots/LICENSES/{name}.txt */\n{js}\n</script>")
page = f"""<!DOCTYPE html>
<!-- The page DVC fills with plots (plots.html_template in .dvc/config). Unlike DVC's own, it
     needs no network: vega {vega}, vega-lite {vega_lite} and vega-embed {vega_embed} from the npm
     registry are inline below. Built by scripts/vendor-vega.sh; do not edit by hand. -->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{chr(10).join(scripts)}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""
target.write_text(page, encoding="utf-8")
PY
echo "vendor-vega: wrote $out/offline.html (vega $VEGA, vega-lite $VEGA_LITE, vega-embed $VEGA_EMBED)"
