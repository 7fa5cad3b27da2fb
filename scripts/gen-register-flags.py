#!/usr/bin/env python3
"""Generate runner/src/commands/register_flags.rs: every flag of `gitlab-runner register`.

Reads gitlab-runner's source (a git dir; default the mirror this project uses) and walks the
structs as gitlab-runner's golang-cli-helpers does (GetFlagsFromStruct): a field with a `long`
(or `short`) tag is a flag named `<namespace>-...-<long>`; a struct field with a `namespace`
tag is walked with that namespace added; an embedded (anonymous) struct value is walked in the
same namespace; a pointer to a struct is walked only with a `namespace` tag. The `env` tag (case
sensitive, exactly `env`) is the flag's environment variable. The TOML path is built from the
`toml` tags (embedded structs are flattened into their parent, as the TOML encoder does).

Also writes, per TOML table, the order of its keys (gitlab-runner's struct field order), so the
[[runners]] entry ferry writes is laid out as gitlab-runner's encoder lays it out.

Usage: scripts/gen-register-flags.py [GIT_DIR] > runner/src/commands/register_flags.rs
"""

import re
import subprocess
import sys

GIT_DIR = sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror/gitlabhq+gitlab-runner/repo"

# Go package name -> directory, for the packages the runner config structs live in.
PACKAGES = {
    "commands": "commands",
    "common": "common",
    "cacheconfig": "cache/cacheconfig",
    "docker": "helpers/docker",
    "referees": "referees",
    "runner": "common/config/runner",
}


def git(*args):
    return subprocess.run(
        ["git", f"--git-dir={GIT_DIR}", *args], check=True, capture_output=True, text=True
    ).stdout


def files_of(directory):
    out = git("ls-tree", "--name-only", "HEAD", directory + "/")
    return [
        f for f in out.split()
        if f.endswith(".go") and not f.endswith("_test.go") and "mock" not in f
    ]


FIELD = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)?\s*([^`/]*?)\s*(`[^`]*`)?\s*(//.*)?$")
TAG = re.compile(r'(\w+):"((?:[^"\\]|\\.)*)"')


def parse_package(pkg):
    """struct name -> list of (name, type, tags, anonymous); type name -> underlying type."""
    structs, types = {}, {}
    for path in files_of(PACKAGES[pkg]):
        text = git("show", f"HEAD:{path}")
        lines = text.split("\n")
        i = 0
        in_type_block = False
        while i < len(lines):
            line = lines[i]
            m = re.match(r"^(?:type\s+)?(\w+)\s+struct\s*\{\s*$", line)
            if m and (line.startswith("type ") or in_type_block):
                name = m.group(1)
                fields = []
                depth = 1
                i += 1
                while i < len(lines) and depth > 0:
                    ln = lines[i]
                    if re.match(r"^\s*\}", ln) and depth == 1:
                        break
                    depth += ln.count("{") - ln.count("}")
                    stripped = ln.strip()
                    if stripped and not stripped.startswith("//") and depth == 1:
                        fields.append(parse_field(stripped))
                    i += 1
                structs[name] = [f for f in fields if f]
            elif line.startswith("type ("):
                in_type_block = True
            elif in_type_block and line.startswith(")"):
                in_type_block = False
            else:
                m = re.match(r"^(?:type\s+|\t)(\w+)\s+(=\s*)?([\w.\[\]*]+(?:\[[\w.]+\][\w.\[\]*]+)?)\s*$", line)
                if m and (line.startswith("type ") or in_type_block):
                    types[m.group(1)] = m.group(3)
            i += 1
    return structs, types


def parse_field(s):
    tags = {}
    m = re.search(r"`([^`]*)`", s)
    if m:
        tags = dict(TAG.findall(m.group(1)))
        s = s[: m.start()].strip()
    s = re.sub(r"//.*$", "", s).strip()
    parts = s.split()
    if len(parts) == 1:
        typ = parts[0]
        return (typ.lstrip("*").split(".")[-1], typ, tags, True)
    if len(parts) >= 2:
        return (parts[0], " ".join(parts[1:]), tags, False)
    return None


PKGS = {p: parse_package(p) for p in PACKAGES}


def resolve(typ, pkg):
    """(package, bare name) of a named type."""
    t = typ.lstrip("*")
    if "." in t:
        p, n = t.split(".", 1)
        return (p if p in PKGS else None), n
    return pkg, t


# Types from packages outside gitlab-runner that appear behind a flag.
EXTERNAL = {
    "api.ProcMountType": "Str",
    "api.PullPolicy": "Str",
}


def kind_of(typ, pkg):
    ptr = typ.startswith("*")
    t = typ.lstrip("*")
    for _ in range(5):
        if t in ("time.Duration",):
            return ("Duration", ptr)
        if t == "string":
            return ("Str", ptr)
        if t == "bool":
            return ("Bool", ptr)
        if t in ("int", "int64", "int32", "uint", "uint64", "int16"):
            return ("Int", ptr)
        if t in ("float64", "float32"):
            return ("Float", ptr)
        if t == "StringOrArray":
            return ("CommaList", ptr)
        if t == "KubernetesHostAliasesFlag":
            return ("Json", ptr)
        if t.startswith("[]"):
            return ("List", ptr)
        if t == "map[string]bool":
            return ("MapBool", ptr)
        if t == "map[string][]string":
            return ("MapList", ptr)
        if t.startswith("map[string]"):
            return ("Map", ptr)
        p, n = resolve(t, pkg)
        if t in EXTERNAL:
            return (EXTERNAL[t], ptr)
        if p is None or n not in PKGS[p][1]:
            raise SystemExit(f"unknown type {typ} in package {pkg}")
        t = PKGS[p][1][n]
        if t.startswith("="):
            t = t[1:].strip()
        if "." in t and t.split(".")[0] == "spec":
            # spec.PullPolicy and friends are strings
            return ("Str", ptr)
    raise SystemExit(f"cannot resolve {typ}")


flags = []
orders = {}  # toml table path -> [keys]


def toml_name(tags):
    t = tags.get("toml", "")
    name = t.split(",")[0]
    return name


def walk(pkg, struct, ns, toml_path, section):
    fields = PKGS[pkg][0].get(struct)
    if fields is None:
        raise SystemExit(f"struct {pkg}.{struct} not found")
    for name, typ, tags, anon in fields:
        tname = toml_name(tags)
        bare = typ.lstrip("*")
        is_struct = False
        p, n = resolve(bare, pkg)
        if p is not None and n in PKGS[p][0] and not bare.startswith(("[]", "map[")):
            is_struct = True
        if tname and tname != "-" and toml_path is not None:
            orders.setdefault(toml_path, [])
            if tname not in orders[toml_path]:
                orders[toml_path].append(tname)
        if is_struct:
            sub_ns = tags.get("namespace")
            sub_toml = None
            if toml_path is not None:
                if anon and not tname:
                    sub_toml = toml_path
                elif tname and tname != "-":
                    sub_toml = f"{toml_path}.{tname}" if toml_path else tname
            if sub_ns:
                walk(p, n, ns + [sub_ns], sub_toml, section if section else sub_ns)
            elif anon and not typ.startswith("*"):
                walk(p, n, ns, sub_toml, section)
            elif sub_toml is not None and toml_path is not None:
                # no flags inside, but the key order of its table still matters
                collect_order(p, n, sub_toml)
            continue
        names = []
        if tags.get("short"):
            names.append("-".join(ns + [tags["short"]]))
        if tags.get("long"):
            names.append("-".join(ns + [tags["long"]]))
        if not names:
            continue
        kind, ptr = kind_of(typ, pkg)
        flags.append({
            "names": names,
            "env": tags.get("env"),
            "toml": (f"{toml_path}.{tname}" if toml_path else tname) if toml_path is not None and tname and tname != "-" else None,
            "kind": kind,
            "ptr": ptr,
            "omitempty": "omitempty" in tags.get("toml", "") or "omitzero" in tags.get("toml", ""),
            "help": tags.get("description", ""),
            "section": section or "runner",
        })


def collect_order(pkg, struct, toml_path, depth=0):
    if depth > 6:
        return
    for name, typ, tags, anon in PKGS[pkg][0].get(struct, []):
        tname = toml_name(tags)
        bare = typ.lstrip("*")
        p, n = resolve(bare, pkg)
        is_struct = p is not None and n in PKGS[p][0] and not bare.startswith(("[]", "map["))
        if anon and not tname and is_struct:
            collect_order(p, n, toml_path, depth + 1)
            continue
        if tname and tname != "-":
            orders.setdefault(toml_path, [])
            if tname not in orders[toml_path]:
                orders[toml_path].append(tname)
            if is_struct:
                collect_order(p, n, f"{toml_path}.{tname}", depth + 1)


# RegisterCommand: its own flags (no TOML path, except through the embedded RunnerConfig,
# whose keys are relative to the [[runners]] entry, path "").
for name, typ, tags, anon in PKGS["commands"][0]["RegisterCommand"]:
    if name == "RunnerConfig" and anon:
        walk("common", "RunnerConfig", [], "", None)
        continue
    if tags.get("namespace") == "template":
        flags.append({
            "names": ["template-config"], "env": "TEMPLATE_CONFIG_FILE", "toml": None,
            "kind": "Str", "ptr": False, "omitempty": True,
            "help": "Path to the configuration template file", "section": "register",
        })
        continue
    if not (tags.get("long") or tags.get("short")):
        continue
    names = [n for n in (tags.get("short"), tags.get("long")) if n]
    kind, ptr = kind_of(typ, "commands")
    flags.append({
        "names": names, "env": tags.get("env"), "toml": None, "kind": kind, "ptr": ptr,
        "omitempty": True, "help": tags.get("description", ""), "section": "register",
    })

rev = git("rev-parse", "HEAD").strip()


def rs(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


out = []
out.append("// @generated by scripts/gen-register-flags.py from gitlab-runner " + rev + ".")
out.append("// Do not edit: regenerate. Every flag of `gitlab-runner register` (commands/register.go,")
out.append("// common.RunnerConfig and the structs it embeds), as golang-cli-helpers makes them.")
out.append("")
out.append("use super::register_table::{FlagSpec, Kind};")
out.append("")
out.append(f"pub const GITLAB_RUNNER_REVISION: &str = {rs(rev)};")
out.append("")
out.append("pub const FLAGS: &[FlagSpec] = &[")
for f in flags:
    long = f["names"][-1]
    aliases = f["names"][:-1]
    # one-letter names are clap shorts; longer "short" names are aliases
    short = next((a for a in aliases if len(a) == 1), None)
    aliases = [a for a in aliases if len(a) > 1]
    out.append("    FlagSpec {")
    out.append(f"        name: {rs(long)},")
    out.append(f"        short: {('Some(' + repr(short) + ')') if short else 'None'},")
    out.append(f"        aliases: &[{', '.join(rs(a) for a in aliases)}],")
    out.append(f"        env: {('Some(' + rs(f['env']) + ')') if f['env'] else 'None'},")
    out.append(f"        toml: {('Some(' + rs(f['toml']) + ')') if f['toml'] is not None else 'None'},")
    out.append(f"        kind: Kind::{f['kind']},")
    out.append(f"        pointer: {'true' if f['ptr'] else 'false'},")
    out.append(f"        section: {rs(f['section'])},")
    out.append(f"        help: {rs(f['help'])},")
    out.append("    },")
out.append("];")
out.append("")
out.append("/// Key order of each table of a `[[runners]]` entry (\"\" is the entry itself), as")
out.append("/// gitlab-runner's structs declare them.")
out.append("pub const KEY_ORDER: &[(&str, &[&str])] = &[")
for path, keys in orders.items():
    out.append(f"    ({rs(path)}, &[{', '.join(rs(k) for k in keys)}]),")
out.append("];")
print("\n".join(out))
