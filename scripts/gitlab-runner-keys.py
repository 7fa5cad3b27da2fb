#!/usr/bin/env python3
"""List every config.toml key of gitlab-runner, from the `toml:"..."` tags of its Go structs.

Usage: scripts/gitlab-runner-keys.py GIT_DIR [REV] > config/testdata/gitlab-runner-keys.txt
       scripts/gitlab-runner-keys.py --feature-flags GIT_DIR [REV] > config/src/gitlab-runner-feature-flags.txt

GIT_DIR is a clone (bare or not) of gitlab-runner; REV defaults to HEAD. The walk starts at
`common.Config` and follows every field with a toml tag (embedded structs are flattened, as
BurntSushi/toml does). One line per key: `path<TAB>kind`, where the path joins TOML keys with
dots, `[]` marks an array of tables (`runners[].docker.services[].name`) and kind is one of
string, bool, int, float, duration, datetime, strings (array), map:<kind> (table of free-form
keys), any (free-form value), or table (a struct; its keys follow on their own lines).
config/tests/gitlab_runner_keys.rs checks ferry against the list (docs/configuration.md).
"""

import re
import subprocess
import sys

# Files holding the structs config.toml is decoded into, and their Go package names.
FILES = {
    "common/config.go": "common",
    "common/labels.go": "common",
    "cache/cacheconfig/cacheconfig.go": "cacheconfig",
    "common/config/runner/monitoring.go": "runner",
    "common/config/runner/monitoring/job_queuing_durations.go": "monitoring",
    "referees/referees.go": "referees",
    "referees/metrics.go": "referees",
    "helpers/docker/credentials.go": "docker",
    "common/spec/spec.go": "spec",
}

SCALARS = {
    "string": "string",
    "bool": "bool",
    "int": "int",
    "int32": "int",
    "int64": "int",
    "uint": "int",
    "uint32": "int",
    "uint64": "int",
    "float32": "float",
    "float64": "float",
    "time.Duration": "duration",
    "time.Time": "datetime",
    "any": "any",
    "interface{}": "any",
}

FIELD = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s+([^`\s][^`]*?)\s*`([^`]*)`")
EMBEDDED = re.compile(r"^\s*\*?([A-Za-z_][A-Za-z0-9_.]*)\s*(`[^`]*`)?\s*(//.*)?$")
TOML_TAG = re.compile(r'toml:"([^"]*)"')


def show(git_dir, rev, path):
    return subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{rev}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def parse(git_dir, rev):
    structs = {}  # (pkg, name) -> [(key or None for embedded, type)]
    aliases = {}  # (pkg, name) -> type
    for path, pkg in FILES.items():
        lines = show(git_dir, rev, path).splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            m = re.match(r"^type\s+([A-Za-z_][A-Za-z0-9_]*)\s+struct\s*\{\s*$", line)
            if m:
                fields = []
                i += 1
                depth = 1
                while i < len(lines) and depth > 0:
                    body = lines[i]
                    if re.match(r"^\}", body):
                        depth -= 1
                        break
                    f = FIELD.match(body)
                    if f:
                        tag = TOML_TAG.search(f.group(3))
                        key = tag.group(1).split(",")[0] if tag else None
                        if key != "-" and tag is not None:
                            fields.append((key, f.group(2).strip()))
                    else:
                        e = EMBEDDED.match(body)
                        if e and body.strip() and not body.strip().startswith("//"):
                            tag = TOML_TAG.search(e.group(2) or "")
                            if tag is None or tag.group(1).split(",")[0] == "":
                                fields.append((None, e.group(1)))
                    i += 1
                structs[(pkg, m.group(1))] = fields
            elif re.match(r"^type\s*\(\s*$", line):
                # a block of named types and aliases: `Name Type` or `Name = Type`
                i += 1
                while i < len(lines) and not lines[i].startswith(")"):
                    a = re.match(r"^\s+([A-Za-z_][A-Za-z0-9_]*)\s+(?:=\s*)?([^\s{/]+)\s*(//.*)?$", lines[i])
                    if a:
                        aliases[(pkg, a.group(1))] = a.group(2)
                    i += 1
            else:
                m = re.match(r"^type\s+([A-Za-z_][A-Za-z0-9_]*)\s+(?:=\s*)?([^=\s{][^{]*)$", line)
                if m and not m.group(2).startswith("interface"):
                    aliases[(pkg, m.group(1))] = m.group(2).strip()
            i += 1
    return structs, aliases


def qualify(pkg, name):
    if "." in name and name not in SCALARS:
        p, n = name.split(".", 1)
        return (p, n)
    return (pkg, name)


def kind(pkg, typ, structs, aliases, seen=()):
    """('scalar', kind) | ('struct', (pkg, name)) | ('array', elem) | ('map', elem)."""
    typ = typ.lstrip("*")
    if typ in SCALARS:
        return ("scalar", SCALARS[typ])
    if typ.startswith("[]"):
        return ("array", kind(pkg, typ[2:], structs, aliases, seen))
    if typ.startswith("map["):
        return ("map", kind(pkg, typ[typ.index("]") + 1 :], structs, aliases, seen))
    q = qualify(pkg, typ)
    if q in structs:
        return ("struct", q)
    if q in aliases and q not in seen:
        return kind(q[0], aliases[q], structs, aliases, seen + (q,))
    if q[0] not in set(FILES.values()):
        # a type of a package not read here (Kubernetes' api.Capability, ...): the key is
        # listed, its value kind is not known
        return ("scalar", "any")
    raise SystemExit(f"unknown Go type {typ} (package {pkg})")


def label(k):
    if k[0] == "scalar":
        return k[1]
    if k[0] == "array":
        return "strings" if k[1] == ("scalar", "string") else "array:" + label(k[1])
    if k[0] == "map":
        return "map:" + label(k[1])
    return "table"


def walk(q, prefix, structs, aliases, out, stack=()):
    if q in stack:
        return
    pkg = q[0]
    for key, typ in structs[q]:
        if key is None:  # embedded: its keys belong to this table
            walk(qualify(pkg, typ.lstrip("*")), prefix, structs, aliases, out, stack + (q,))
            continue
        path = f"{prefix}.{key}" if prefix else key
        k = kind(pkg, typ, structs, aliases)
        if k[0] == "struct":
            out.append((path, "table"))
            walk(k[1], path, structs, aliases, out, stack + (q,))
        elif k[0] == "array" and k[1][0] == "struct":
            out.append((path + "[]", "table"))
            walk(k[1][1], path + "[]", structs, aliases, out, stack + (q,))
        else:
            out.append((path, label(k)))


def feature_flags(git_dir, rev, commit):
    """`name<TAB>default` of every flag in helpers/featureflags/flags.go."""
    src = show(git_dir, rev, "helpers/featureflags/flags.go")
    consts = dict(re.findall(r'^\s+([A-Za-z0-9]+)\s+string\s*=\s*"(FF_[A-Z0-9_]+)"', src, re.M))
    body = src[src.index("var flags = []FeatureFlag{") :]
    print(f"# gitlab-runner's feature flags and their defaults, gitlab-runner {commit}")
    print("# (helpers/featureflags/flags.go), made by scripts/gitlab-runner-keys.py --feature-flags.")
    for name, default in re.findall(r"Name:\s*([A-Za-z\"_0-9]+),\s*DefaultValue:\s*(true|false)", body):
        name = name.strip('"')
        print(f"{consts.get(name, name)}\t{default}")


def main():
    if sys.argv[1] == "--feature-flags":
        git_dir = sys.argv[2]
        rev = sys.argv[3] if len(sys.argv) > 3 else "HEAD"
        commit = subprocess.run(
            ["git", "--git-dir", git_dir, "rev-parse", rev], check=True, capture_output=True, text=True
        ).stdout.strip()
        feature_flags(git_dir, rev, commit)
        return
    git_dir = sys.argv[1]
    rev = sys.argv[2] if len(sys.argv) > 2 else "HEAD"
    commit = subprocess.run(
        ["git", "--git-dir", git_dir, "rev-parse", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    structs, aliases = parse(git_dir, rev)
    out = []
    walk(("common", "Config"), "", structs, aliases, out)
    print(f"# Every config.toml key of gitlab-runner {commit},")
    print("# made by scripts/gitlab-runner-keys.py from the toml tags of its Go structs")
    print("# (common/config.go and the structs it embeds). path<TAB>kind; [] = array of tables.")
    for path, k in out:
        print(f"{path}\t{k}")


if __name__ == "__main__":
    main()
