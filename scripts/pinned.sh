# Sourced by get-data.sh and get-ood.sh: a DVC-tracked folder data/NAME, pinned by data/NAME.dvc.
#   pull NAME               exit 0 (done) if data/NAME is there or `dvc pull` brings it
#   keep_if_pinned NAME TMP TAG
#                           move the freshly made TMP to data/NAME and keep it only if DVC finds
#                           the hash data/NAME.dvc pins; else restore the pin, set the files
#                           aside in data/NAME.unpinned and exit 1 (TAG names the script)

pull() {
  [ -e "data/$1" ] && exit 0
  if dvc pull -q "data/$1.dvc" 2>/dev/null; then
    echo "$2: data/$1 pulled"
    exit 0
  fi
}

keep_if_pinned() {
  local name=$1 tmp=$2 tag=$3
  mv "$tmp" "data/$name"
  dvc commit -f -q "data/$name.dvc"
  if ! git diff --quiet "data/$name.dvc"; then
    git checkout -q "data/$name.dvc"
    mv "data/$name" "data/$name.unpinned"
    echo "$tag: the files differ from the version pinned in data/$name.dvc; kept them in" \
         "data/$name.unpinned for a look" >&2
    exit 1
  fi
  echo "$tag: data/$name matches data/$name.dvc"
}
