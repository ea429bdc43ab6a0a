#!/usr/bin/env python3
"""Compares two query-qmp-schema replies structurally.

For every command and event both have, the argument and return types are
walked side by side (type names are opaque numbers, so they are matched by
position in the walk, not by name) and every difference is printed as one
line: `<path>: <what differs>`. The path starts at the command or event.
Usage: qmp_schema_diff.py REFERENCE.json CANDIDATE.json
"""
import json
import sys


def index(entries):
    return {entry["name"]: entry for entry in entries}


def features(entry):
    return sorted(entry.get("features") or [])


class Differ:
    def __init__(self, reference, candidate):
        self.ref = index(reference)
        self.cand = index(candidate)
        self.seen = set()
        self.diffs = []

    def note(self, path, text):
        self.diffs.append(f"{path}: {text}")

    def compare(self, path, ref_name, cand_name):
        if (ref_name, cand_name) in self.seen:
            return
        self.seen.add((ref_name, cand_name))
        ref, cand = self.ref[ref_name], self.cand[cand_name]
        if ref["meta-type"] != cand["meta-type"]:
            self.note(path, f"is {cand['meta-type']}, reference {ref['meta-type']}")
            return
        kind = ref["meta-type"]
        if features(ref) != features(cand):
            self.note(path, f"features {features(cand)}, reference {features(ref)}")
        if kind == "builtin":
            if ref_name != cand_name:
                self.note(path, f"is {cand_name}, reference {ref_name}")
        elif kind == "enum":
            self.enum(path, ref, cand)
        elif kind == "array":
            self.compare(path + "[]", ref["element-type"], cand["element-type"])
        elif kind == "alternate":
            self.alternate(path, ref, cand)
        elif kind == "object":
            self.object(path, ref, cand)

    def enum(self, path, ref, cand):
        ref_values, cand_values = set(ref["values"]), set(cand["values"])
        if ref_values - cand_values:
            self.note(path, f"lacks values {sorted(ref_values - cand_values)}")
        if cand_values - ref_values:
            self.note(path, f"has extra values {sorted(cand_values - ref_values)}")
        ref_members = {m["name"]: features(m) for m in ref["members"]}
        for member in cand["members"]:
            name = member["name"]
            if name in ref_members and ref_members[name] != features(member):
                self.note(f"{path}.{name}", f"features {features(member)}, reference {ref_members[name]}")

    def alternate(self, path, ref, cand):
        def kinds(entry, table):
            return {table[m["type"]]["meta-type"] if table[m["type"]]["meta-type"] != "builtin" else m["type"]: m["type"]
                    for m in entry["members"]}
        ref_kinds, cand_kinds = kinds(ref, self.ref), kinds(cand, self.cand)
        if set(ref_kinds) != set(cand_kinds):
            self.note(path, f"branches {sorted(cand_kinds)}, reference {sorted(ref_kinds)}")
        for kind in set(ref_kinds) & set(cand_kinds):
            self.compare(f"{path}<{kind}>", ref_kinds[kind], cand_kinds[kind])

    def object(self, path, ref, cand):
        ref_members = {m["name"]: m for m in ref["members"]}
        cand_members = {m["name"]: m for m in cand["members"]}
        for name in ref_members.keys() - cand_members.keys():
            self.note(f"{path}.{name}", "missing")
        for name in cand_members.keys() - ref_members.keys():
            self.note(f"{path}.{name}", "not in reference")
        for name in ref_members.keys() & cand_members.keys():
            r, c = ref_members[name], cand_members[name]
            if ("default" in r) != ("default" in c):
                self.note(f"{path}.{name}", "optional" if "default" in c else "required"
                          + (", reference optional" if "default" in r else ", reference required"))
            if features(r) != features(c):
                self.note(f"{path}.{name}", f"features {features(c)}, reference {features(r)}")
            self.compare(f"{path}.{name}", r["type"], c["type"])
        if ref.get("tag") != cand.get("tag"):
            self.note(path, f"tag {cand.get('tag')}, reference {ref.get('tag')}")
        ref_variants = {v["case"]: v["type"] for v in ref.get("variants", [])}
        cand_variants = {v["case"]: v["type"] for v in cand.get("variants", [])}
        for case in ref_variants.keys() - cand_variants.keys():
            self.note(f"{path}({case})", "missing variant")
        for case in cand_variants.keys() - ref_variants.keys():
            self.note(f"{path}({case})", "variant not in reference")
        for case in ref_variants.keys() & cand_variants.keys():
            self.compare(f"{path}({case})", ref_variants[case], cand_variants[case])

    def run(self):
        for name, ref in sorted(self.ref.items()):
            if ref["meta-type"] not in ("command", "event") or name not in self.cand:
                continue
            cand = self.cand[name]
            if features(ref) != features(cand):
                self.note(name, f"features {features(cand)}, reference {features(ref)}")
            self.compare(f"{name}:arg", ref["arg-type"], cand["arg-type"])
            if ref["meta-type"] == "command":
                self.compare(f"{name}:ret", ref["ret-type"], cand["ret-type"])
        return self.diffs


def main():
    reference = json.load(open(sys.argv[1]))
    candidate = json.load(open(sys.argv[2]))
    for line in sorted(Differ(reference, candidate).run()):
        print(line)


if __name__ == "__main__":
    main()
