#!/usr/bin/env python3
"""scripts/check-meta.py: check a PGXN distribution against the PGXN Meta
Spec 1.0.0 (https://pgxn.org/spec/).

Usage: python3 scripts/check-meta.py idempotency-1.1.0.zip   (make dist)
       python3 scripts/check-meta.py .                        (a source tree)

Of an archive it checks that every member lies under one directory named
<name>-<version>/, and the META.json found there; of a tree, its META.json.
META.json must hold the spec's required keys and no unknown ones (bar
x_/X_ extensions), each value of the spec's type: name a term, versions
semantic versions (SemVer 1.0.0), the licence one the spec names,
meta-spec version 1.0.0, prerequisites by phase and relation.  Every
extension in "provides" must name a file (and a docfile, if any) that the
distribution holds, and where the distribution has <extension>.control,
its default_version must be the extension's version, and the main
extension's the distribution's.

Exits 1 and names each problem found, one a line; prints one line and
exits 0 when there are none.  Only the Python standard library is used.
"""

import json
import os
import re
import sys
import zipfile

SPEC_VERSION = "1.0.0"

REQUIRED = ("name", "version", "abstract", "maintainer", "license",
            "provides", "meta-spec")
OPTIONAL = ("description", "generated_by", "tags", "no_index", "prereqs",
            "release_status", "resources")

LICENSES = {
    "agpl_3", "apache_1_1", "apache_2_0", "artistic_1", "artistic_2", "bsd",
    "freebsd", "gfdl_1_2", "gfdl_1_3", "gpl_1", "gpl_2", "gpl_3",
    "lgpl_2_1", "lgpl_3_0", "mit", "mozilla_1_0", "mozilla_1_1", "openssl",
    "perl_5", "postgresql", "qpl_1_0", "ssleay", "sun", "zlib",
    "open_source", "restricted", "unrestricted", "unknown",
}
PHASES = {"configure", "build", "test", "runtime", "develop"}
RELATIONS = {"requires", "recommends", "suggests", "conflicts"}
RELEASE_STATUSES = {"stable", "testing", "unstable"}

# SemVer 1.0.0: three numbers without leading zeros, then optionally a
# special version of letters, digits and dashes beginning with a letter.
SEMVER = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-?[A-Za-z][0-9A-Za-z-]*)?")
# A version range: "0", a version, or comma-separated operator-version pairs.
RANGE_PART = re.compile(r"(?:(?:==|!=|>=|<=|>|<)\s*)?(\S+)")
CONTROL_VERSION = re.compile(r"^\s*default_version\s*=\s*'([^']*)'", re.M)


class Dist:
    """The files of a distribution, in an archive or a directory."""

    def __init__(self, path):
        self.problems = []
        self.prefix = ""
        if os.path.isdir(path):
            self.root = path
            self.zip = None
            return
        self.root = None
        self.zip = zipfile.ZipFile(path)
        names = [n for n in self.zip.namelist() if n]
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) != 1 or not all("/" in n for n in names):
            self.problems.append(
                "archive: members must lie under one top directory, found %s"
                % ", ".join(sorted(tops)))
        self.prefix = sorted(tops)[0] + "/" if tops else ""
        self.names = set(names)

    def has(self, rel):
        if self.zip is None:
            return os.path.isfile(os.path.join(self.root, rel))
        return self.prefix + rel in self.names

    def read(self, rel):
        if self.zip is None:
            with open(os.path.join(self.root, rel), encoding="utf-8") as f:
                return f.read()
        return self.zip.read(self.prefix + rel).decode("utf-8")


def is_term(s):
    """A term: two or more characters, no slash, backslash, control or space."""
    return (isinstance(s, str) and len(s) >= 2 and
            not re.search(r"[/\\\s\x00-\x1f\x7f]", s))


def is_tag(s):
    """A tag: one to 255 characters, no slash, backslash or control."""
    return (isinstance(s, str) and 0 < len(s) < 256 and
            not re.search(r"[/\\\x00-\x1f\x7f]", s))


def is_semver(s):
    return isinstance(s, str) and SEMVER.fullmatch(s) is not None


def is_range(s):
    if isinstance(s, int) and s == 0:
        return True
    if not isinstance(s, str):
        return False
    if s == "0":
        return True
    for part in s.split(","):
        m = RANGE_PART.fullmatch(part.strip())
        if not m or not (is_semver(m.group(1)) or m.group(1) == "0"):
            return False
    return True


def check_meta(meta, dist, bad):
    """Append to bad each way in which meta breaks the spec."""
    if not isinstance(meta, dict):
        bad.append("META.json: not a JSON object")
        return
    for key in REQUIRED:
        if key not in meta:
            bad.append("%s: required, missing" % key)
    for key in meta:
        if key not in REQUIRED and key not in OPTIONAL and \
                not key.lower().startswith("x_"):
            bad.append("%s: not a key of the spec (custom keys begin x_)" % key)

    if "name" in meta and not is_term(meta["name"]):
        bad.append("name: %r is not a term" % (meta["name"],))
    if "version" in meta and not is_semver(meta["version"]):
        bad.append("version: %r is not a semantic version" % (meta["version"],))
    for key in ("abstract", "description", "generated_by"):
        if key in meta and not (isinstance(meta[key], str) and meta[key]):
            bad.append("%s: must be a non-empty string" % key)

    m = meta.get("maintainer")
    if m is not None and not (
            (isinstance(m, str) and m) or
            (isinstance(m, list) and m and
             all(isinstance(x, str) and x for x in m))):
        bad.append("maintainer: must be a string or a list of strings")

    lic = meta.get("license")
    if lic is not None:
        if isinstance(lic, str):
            names = [lic]
        elif isinstance(lic, list) and lic:
            names = lic
        elif isinstance(lic, dict) and lic:
            names = []
            if not all(isinstance(v, str) for v in lic.values()):
                bad.append("license: an object maps names to URLs")
        else:
            names = [None]
        for n in names:
            if n not in LICENSES:
                bad.append("license: %r is not one the spec names" % (n,))

    spec = meta.get("meta-spec")
    if spec is not None:
        if not isinstance(spec, dict):
            bad.append("meta-spec: must be an object")
        elif spec.get("version") != SPEC_VERSION:
            bad.append("meta-spec: version %r, this checks %s" %
                       (spec.get("version"), SPEC_VERSION))
        elif "url" in spec and not isinstance(spec["url"], str):
            bad.append("meta-spec: url must be a string")

    provides = meta.get("provides")
    if provides is not None:
        if not isinstance(provides, dict) or not provides:
            bad.append("provides: must be an object naming one extension or more")
            provides = {}
        for ext, p in provides.items():
            where = "provides.%s" % ext
            if not is_term(ext):
                bad.append("%s: the name is not a term" % where)
            if not isinstance(p, dict):
                bad.append("%s: must be an object" % where)
                continue
            for key in p:
                if key not in ("file", "version", "abstract", "docfile") and \
                        not key.lower().startswith("x_"):
                    bad.append("%s.%s: not a key of the spec" % (where, key))
            if not isinstance(p.get("file"), str):
                bad.append("%s.file: required, a path" % where)
            elif not dist.has(p["file"]):
                bad.append("%s.file: %s is not in the distribution" %
                           (where, p["file"]))
            if "docfile" in p and not (isinstance(p["docfile"], str) and
                                       dist.has(p["docfile"])):
                bad.append("%s.docfile: %r is not in the distribution" %
                           (where, p["docfile"]))
            if not is_semver(p.get("version")):
                bad.append("%s.version: %r is not a semantic version" %
                           (where, p.get("version")))
            control = ext + ".control"
            if dist.has(control):
                found = CONTROL_VERSION.search(dist.read(control))
                default = found.group(1) if found else None
                if default != p.get("version"):
                    bad.append("%s.version: %r, but %s has default_version %r" %
                               (where, p.get("version"), control, default))
                if ext == meta.get("name") and default != meta.get("version"):
                    bad.append("version: %r, but %s has default_version %r" %
                               (meta.get("version"), control, default))

    prereqs = meta.get("prereqs")
    if prereqs is not None:
        if not isinstance(prereqs, dict):
            bad.append("prereqs: must be an object")
            prereqs = {}
        for phase, rels in prereqs.items():
            if phase not in PHASES:
                bad.append("prereqs.%s: not a phase" % phase)
                continue
            if not isinstance(rels, dict):
                bad.append("prereqs.%s: must be an object" % phase)
                continue
            for rel, deps in rels.items():
                if rel not in RELATIONS:
                    bad.append("prereqs.%s.%s: not a relation" % (phase, rel))
                    continue
                if not isinstance(deps, dict):
                    bad.append("prereqs.%s.%s: must be an object" % (phase, rel))
                    continue
                for dep, rng in deps.items():
                    if not is_range(rng):
                        bad.append("prereqs.%s.%s.%s: %r is not a version range"
                                   % (phase, rel, dep, rng))

    status = meta.get("release_status")
    if status is not None and status not in RELEASE_STATUSES:
        bad.append("release_status: %r is not one of %s" %
                   (status, ", ".join(sorted(RELEASE_STATUSES))))

    tags = meta.get("tags")
    if tags is not None and not (isinstance(tags, list) and tags and
                                 all(is_tag(t) for t in tags)):
        bad.append("tags: must be a list of tags (under 256 characters, "
                   "no slash, backslash or control character)")

    no_index = meta.get("no_index")
    if no_index is not None:
        if not isinstance(no_index, dict) or \
                not set(no_index) <= {"file", "directory"}:
            bad.append("no_index: an object of file and directory lists")

    res = meta.get("resources")
    if res is not None:
        if not isinstance(res, dict) or not all(
                k in ("homepage", "bugtracker", "repository") or
                k.lower().startswith("x_") for k in res):
            bad.append("resources: homepage, bugtracker and repository only")


def main(argv):
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        dist = Dist(argv[1])
    except (OSError, zipfile.BadZipFile) as e:
        print("%s: %s" % (argv[1], e), file=sys.stderr)
        return 1
    bad = dist.problems
    meta = None
    if not dist.has("META.json"):
        bad.append("META.json: not at the top of the distribution")
    else:
        try:
            meta = json.loads(dist.read("META.json"))
        except ValueError as e:
            bad.append("META.json: not valid JSON: %s" % e)
    if meta is not None:
        check_meta(meta, dist, bad)
        if dist.zip is not None and isinstance(meta, dict):
            want = "%s-%s/" % (meta.get("name"), meta.get("version"))
            if dist.prefix != want:
                bad.append("archive: top directory %r, META.json says %r" %
                           (dist.prefix, want))
    for problem in bad:
        print("%s: %s" % (argv[1], problem), file=sys.stderr)
    if bad:
        return 1
    print("%s: META.json valid for PGXN (meta spec %s), %s %s" %
          (argv[1], SPEC_VERSION, meta["name"], meta["version"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
