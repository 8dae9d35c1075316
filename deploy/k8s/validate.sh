#!/usr/bin/env bash
# Validate every manifest in deploy/k8s against the Kubernetes 1.37 schemas bundled with the
# PyPI package kubernetes-validate (offline), strictly: an unknown field, a wrong type, or a
# resource without a schema fails. Then checks the schemas cannot express: kustomization.yaml
# lists files that exist and every cluster manifest; the load-test Job is indexed and its
# completions, parallelism and --shard N agree.
# Usage: deploy/k8s/validate.sh   (creates deploy/k8s/.venv with the pinned validator once)
set -euo pipefail
cd "$(dirname "$0")"
VERSION=1.37.0
VENV=.venv
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt
fi
status=0
for f in *.yaml; do
  # kustomization.yaml is kustomize's input, not a Kubernetes resource: checked below.
  [ "$f" = kustomization.yaml ] && continue
  if ! out="$("$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$VERSION" "$f" 2>&1)"; then
    echo "$out"; status=1; continue
  fi
  # A resource whose kind has no schema only warns; here it fails (a typo in kind/apiVersion).
  if echo "$out" | grep -q "^WARN"; then echo "$out"; status=1; continue; fi
  echo "$out" | grep "^INFO" | sed 's/^INFO /ok: /'
done
"$VENV/bin/python" - <<'PY' || status=1
import glob, re, sys, yaml

bad = []
k = yaml.safe_load(open("kustomization.yaml"))
if k.get("kind") != "Kustomization":
    bad.append("kustomization.yaml: kind is not Kustomization")
listed = k.get("resources", [])
for r in listed:
    if not glob.glob(r):
        bad.append(f"kustomization.yaml lists {r}, which does not exist")
# Applied on purpose, not with the cluster: the example Secret and the load test.
apart = {"kustomization.yaml", "secrets.example.yaml", "loadtest-job.yaml"}
for f in sorted(set(glob.glob("*.yaml")) - apart - set(listed)):
    bad.append(f"{f} is not in kustomization.yaml's resources")

for doc in yaml.safe_load_all(open("loadtest-job.yaml")):
    if doc.get("kind") != "Job":
        continue
    spec = doc["spec"]
    if spec.get("completionMode") != "Indexed":
        bad.append("loadtest-job.yaml: completionMode must be Indexed (the index is the shard)")
    args = spec["template"]["spec"]["containers"][0]["args"]
    shard = [re.fullmatch(r"--shard=\$\(JOB_COMPLETION_INDEX\)/(\d+)", a) for a in args]
    shard = [m for m in shard if m]
    if len(shard) != 1:
        bad.append("loadtest-job.yaml: want one --shard=$(JOB_COMPLETION_INDEX)/N argument")
    else:
        n = int(shard[0].group(1))
        if spec.get("completions") != n or spec.get("parallelism") != n:
            bad.append(f"loadtest-job.yaml: completions ({spec.get('completions')}) and "
                       f"parallelism ({spec.get('parallelism')}) must equal the shard count {n}")
for b in bad:
    print("FAIL:", b)
print("ok: kustomization.yaml and the load-test Job's shard count" if not bad else "", end="")
sys.exit(1 if bad else 0)
PY
[ "$status" = 0 ] && echo && echo "deploy/k8s: every manifest valid"
exit "$status"
