#!/usr/bin/env python3
"""Checks deploy/kubernetes's manifests without a cluster.

    python tools/deploy/check-manifests.py deploy/kubernetes/*.yaml

Each file must parse as Kubernetes Job objects whose pods run runner with
the arguments the CLI takes; an Indexed Job must give every pod
RUNNER_SHARD_COUNT equal to its `completions` (runner cannot learn the
count from Kubernetes) and run `extract`; every `$(VAR)` in the arguments
must be an environment variable of the container; every volume mount must
name a volume of the pod. Exits 1 naming the file and what is wrong.
"""
import re
import sys

import yaml

# The global options runner's CLI takes (src/cli/args.rs, `Global`), and
# those of `runner extract`.
GLOBAL = {"--runs", "--cache", "--device", "--threads", "--quiet", "-q"}
EXTRACT = {"--out", "--shard", "--all", "--status"}


def check_job(job, where):
    errors = []
    if job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        return [f"{where}: not a batch/v1 Job"]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        errors.append(f"{where}: a Job's pods need restartPolicy Never or OnFailure")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        name = f"{where}: container {c['name']}"
        env = {e["name"]: e for e in c.get("env", [])}
        args = c.get("args", [])
        for a in args:
            for var in re.findall(r"\$\((\w+)\)", a):
                if var not in env:
                    errors.append(f"{name}: argument {a!r} uses $({var}), which env does not set")
        options = [a.split("=")[0] for a in args if a.startswith("-")]
        command = [a for a in args if not a.startswith("-")]
        known = GLOBAL | (EXTRACT if command[:1] == ["extract"] else set())
        unknown = [o for o in options if o not in known]
        if unknown:
            errors.append(f"{name}: options runner does not take: {unknown}")
        if not command or not command[-1].endswith(".toml"):
            errors.append(f"{name}: the last argument must be the spec file, got {command}")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                errors.append(f"{name}: mounts {m['name']!r}, which is not a volume of the pod")
        if spec.get("completionMode") == "Indexed":
            if command[:1] != ["extract"]:
                errors.append(f"{name}: an Indexed Job runs `runner extract` shards")
            count = env.get("RUNNER_SHARD_COUNT", {}).get("value")
            if count != str(spec.get("completions")):
                errors.append(
                    f"{name}: RUNNER_SHARD_COUNT={count} but completions={spec.get('completions')}: "
                    "they must be equal, or shards are skipped or overlap"
                )
    return errors


def main(paths):
    errors = []
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            errors.append(f"{path}: no objects")
        for i, doc in enumerate(docs):
            errors.extend(check_job(doc, f"{path}[{i}] {doc.get('metadata', {}).get('name')}"))
    for e in errors:
        print(e, file=sys.stderr)
    if not errors:
        print(f"{len(paths)} manifest(s) consistent with runner's command line")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
