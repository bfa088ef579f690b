#!/bin/sh
# Fetch the real 3D data training and validation use (see ../shared/data.md): the CAT12 atlases
# and template from the deepmriprep wheel, the MNI152 2009a T1 and tissue maps from the nilearn
# wheel, the brain CT template from the totalsegmentator wheel. Only the package registry is
# reached; nothing here is committed (training/data/ is ignored).
#   sh training/fetch_data.sh [DEST]
set -eu
cd "$(dirname "$0")/.."
dest=${1:-training/data}
python=${PYTHON:-.venv/bin/python}
[ -f "$dest/.complete-2" ] && exit 0
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$python" -m pip download --disable-pip-version-check -q --no-deps -d "$wheels" deepmriprep==0.3.0 nilearn==0.14.1 \
    totalsegmentator==2.18.0
mkdir -p "$dest"
"$python" - "$wheels" "$dest" <<'PY'
import sys, zipfile, pathlib
wheels, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wanted = ("deepmriprep/data/templates/", "nilearn/datasets/data/mni_icbm152_",
          "totalsegmentator/resources/ct_brain_atlas_1mm")
for wheel in wheels.glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(wanted) and name.endswith((".nii.gz", ".csv")):
                (dest / pathlib.Path(name).name).write_bytes(z.read(name))
PY
touch "$dest/.complete-2"
echo "data in $dest: $(ls "$dest" | wc -l) files"
